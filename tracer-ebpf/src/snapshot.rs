//! Snapshots of the scheduler at a hit, following the plan userspace wrote for the process.
//!
//! Everything version-specific comes from the [`Plan`]: struct offsets, where attributes live,
//! the interned names to look for. Attributes are found by scanning an object's key table
//! for the name's address (interned strings are unique), so no hashing and no Python
//! knowledge beyond table shapes is needed here. Every loop is a `bpf_loop` callback, so the
//! verifier checks each body once.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_get_smp_processor_id, bpf_loop, bpf_probe_read_user as read_into},
    },
    macros::map,
    maps::{Array, HashMap},
};
use tracer_common::{
    capture::{
        container, snap, storage, Chain, Item, Plan, PyOffsets, ScheduledEntry, Scratch,
        SnapshotHeader, CHAIN_LINKS, ENTRY_WORDS, MAX_DICT_ENTRIES, MAX_QUEUE_ITEMS, MAX_RECORD, MAX_SCHEDULED,
        REQUEST_FIELDS,
    },
    WatchHit,
};

#[map(name = "PLANS")]
static PLANS: HashMap<u32, Plan> = HashMap::with_max_entries(64, 0);

/// One slot per CPU (userspace sets the count at load time).
#[map(name = "SCRATCH")]
static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

const HEADER_BYTES: usize = size_of::<WatchHit>() + size_of::<SnapshotHeader>();
const ITEMS_END: usize = HEADER_BYTES + 2 * MAX_QUEUE_ITEMS * size_of::<Item>();
/// `Py_TPFLAGS_MANAGED_DICT` (3.11+).
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// Words of a deque block before its items (`leftlink`), and items per block (`BLOCKLEN`).
const DEQUE_BLOCK_HEAD: u64 = 1;
const DEQUE_BLOCKLEN: u64 = 64;

#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    // SAFETY: a checked read of user memory; a fault returns an error, never a crash.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_u8(addr: u64) -> Option<u8> {
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_user(addr as *const u8) }.ok()
}

/// Word `word` of the scratch entries, without a bounds check the verifier would see as a
/// call to a panic handler.
///
/// # Safety
/// `word` < `MAX_DICT_ENTRIES * 3` and `area` is a scratch slot.
#[inline(always)]
unsafe fn entry_word(area: *mut Scratch, word: u64) -> u64 {
    // SAFETY: per the contract.
    unsafe { *(*area).entries.as_ptr().add(word as usize & (ENTRY_WORDS - 1)) }
}

#[inline(always)]
fn scratch() -> Option<*mut Scratch> {
    // SAFETY: plain helper call.
    SCRATCH.get_ptr_mut(unsafe { bpf_get_smp_processor_id() })
}

pub fn plan(tgid: u32) -> Option<&'static Plan> {
    // SAFETY: the value is only read while this program runs; userspace replaces plans whole.
    unsafe { PLANS.get(&tgid) }
}

/// Where an object's attributes live: a key table, and the values array when the table is
/// split (shared keys) rather than a combined dict.
struct Table {
    keys: u64,
    values: u64,
}

#[inline(always)]
fn table(py: &PyOffsets, obj: u64) -> Option<Table> {
    let ty = read(obj + py.object_type)?;
    let managed = py.storage != storage::DICT_OFFSET
        && read(ty + py.type_flags)? & TPFLAGS_MANAGED_DICT != 0;
    let cached_keys = || read(ty + py.heaptype_cached_keys);
    let dict = if !managed {
        let offset = read(ty + py.type_dictoffset)? as i64;
        if offset <= 0 {
            return None;
        }
        read(obj + offset as u64)?
    } else {
        let word = read(obj.wrapping_sub(24))?;
        match py.storage {
            storage::MANAGED_311 if word == 0 => {
                let values = read(obj.wrapping_sub(32))?;
                return (values != 0).then_some(Table {
                    keys: cached_keys()?,
                    values: values + py.values_items,
                });
            }
            storage::TAGGED_312 if word & 1 != 0 => {
                return Some(Table {
                    keys: cached_keys()?,
                    values: word + 1 + py.values_items,
                });
            }
            storage::INLINE_313 if word == 0 => {
                if read(ty + py.type_flags)? & py.type_inline_flag == 0 {
                    return None;
                }
                let values = obj + read(ty + py.type_basicsize)?;
                if read_u8(values + py.values_valid)? == 0 {
                    return None;
                }
                return Some(Table {
                    keys: cached_keys()?,
                    values: values + py.values_items,
                });
            }
            _ => word,
        }
    };
    if dict == 0 {
        return None;
    }
    let values = read(dict + py.dict_values)?;
    Some(Table {
        keys: read(dict + py.dict_keys)?,
        values: if values == 0 { 0 } else { values + py.values_items },
    })
}

/// The entries of a key table, read in bulk into the scratch area.
struct Entries {
    count: u64,
    /// Words per entry (2: unicode-keyed, 3: general with the hash first) and the key's word.
    words: u64,
    key_word: u64,
}

#[inline(always)]
fn load_entries(py: &PyOffsets, keys: u64, area: *mut Scratch) -> Option<Entries> {
    let count = read(keys + py.keys_nentries)?;
    let (indices_bytes, words, key_word) = if py.old_dict_keys != 0 {
        let size = read(keys + py.keys_index_size)?;
        let width = if size <= 0xff {
            1
        } else if size <= 0xffff {
            2
        } else {
            4
        };
        (size * width, 3, 1)
    } else {
        let log2 = read_u8(keys + py.keys_index_size)? as u64 & 63;
        let general = read_u8(keys + py.keys_kind)? == 0;
        (1 << log2, if general { 3 } else { 2 }, if general { 1 } else { 0 })
    };
    let count = if count > MAX_DICT_ENTRIES as u64 {
        MAX_DICT_ENTRIES as u64
    } else {
        count
    };
    let mut bytes = (count * words * 8) as u32;
    if bytes > (MAX_DICT_ENTRIES * 3 * 8) as u32 {
        bytes = (MAX_DICT_ENTRIES * 3 * 8) as u32;
    }
    let src = keys + py.keys_indices + indices_bytes;
    // SAFETY: `area` is this CPU's scratch slot and `bytes` is within `entries`.
    let ret = unsafe {
        read_into(
            (*area).entries.as_mut_ptr().cast(),
            bytes,
            src as *const c_void,
        )
    };
    (ret == 0).then_some(Entries {
        count,
        words,
        key_word,
    })
}

/// A search of the loaded entries for up to [`REQUEST_FIELDS`] names.
#[repr(C)]
struct Search {
    words: u64,
    key_word: u64,
    wanted: [u64; REQUEST_FIELDS],
    /// Entry index + 1 of each name found, 0 if not.
    found: [u64; REQUEST_FIELDS],
    remaining: u64,
}

extern "C" fn search_entry(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Search` on the caller's stack that `bpf_loop` passes through.
    let search = unsafe { &mut *(ctx as *mut Search) };
    let Some(area) = scratch() else { return 1 };
    let word = index * search.words + search.key_word;
    if word >= (MAX_DICT_ENTRIES * 3) as u64 {
        return 1;
    }
    // SAFETY: bounded just above.
    let key = unsafe { entry_word(area, word) };
    if key == 0 {
        return 0;
    }
    for i in 0..REQUEST_FIELDS {
        if search.wanted[i] == key && search.found[i] == 0 {
            search.found[i] = index + 1;
            search.remaining -= 1;
        }
    }
    if search.remaining == 0 { 1 } else { 0 }
}

/// Where the values of the names a [`search`] found are.
struct Found {
    /// Entry index + 1 of each name, 0 if not found.
    index: [u64; REQUEST_FIELDS],
    /// The split values array, or 0 when the values are in the entries.
    values: u64,
    words: u64,
    key_word: u64,
}

/// Scans `obj`'s key table for `names` (0 = unused).
#[inline(always)]
fn search(py: &PyOffsets, obj: u64, names: &[u64; REQUEST_FIELDS]) -> Option<Found> {
    let area = scratch()?;
    let table = table(py, obj)?;
    let entries = load_entries(py, table.keys, area)?;
    let mut search = Search {
        words: entries.words,
        key_word: entries.key_word,
        wanted: *names,
        found: [0; REQUEST_FIELDS],
        remaining: names.iter().filter(|&&n| n != 0).count() as u64,
    };
    // SAFETY: the callback and its context follow bpf_loop's contract.
    unsafe {
        bpf_loop(
            entries.count as u32,
            search_entry as *mut c_void,
            (&mut search as *mut Search).cast(),
            0,
        )
    };
    Some(Found {
        index: search.found,
        values: table.values,
        words: entries.words,
        key_word: entries.key_word,
    })
}

/// The value pointer of found name `i` (0 if not found).
#[inline(always)]
fn value(found: &Found, i: usize) -> u64 {
    let Some(index) = found.index.get(i).and_then(|n| n.checked_sub(1)) else {
        return 0;
    };
    if found.values != 0 {
        return read(found.values + 8 * index).unwrap_or(0);
    }
    let word = index * found.words + found.key_word + 1;
    if word >= (MAX_DICT_ENTRIES * 3) as u64 {
        return 0;
    }
    let Some(area) = scratch() else { return 0 };
    // SAFETY: bounded just above; `area` is this CPU's slot.
    unsafe { entry_word(area, word) }
}

/// One attribute of `obj` (0 if absent).
#[inline(always)]
fn attr(py: &PyOffsets, obj: u64, name: u64) -> u64 {
    let mut names = [0; REQUEST_FIELDS];
    names[0] = name;
    search(py, obj, &names).map_or(0, |found| value(&found, 0))
}

/// A chain being followed, one link per `bpf_loop` iteration.
#[repr(C)]
struct Follow {
    tgid: u64,
    current: u64,
    keys: [u64; CHAIN_LINKS],
}

extern "C" fn follow_link(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Follow` on the caller's stack.
    let follow = unsafe { &mut *(ctx as *mut Follow) };
    let Some(plan) = plan(follow.tgid as u32) else {
        follow.current = 0;
        return 1;
    };
    follow.current = attr(
        &plan.py,
        follow.current,
        follow.keys[index as usize & (CHAIN_LINKS - 1)],
    );
    if follow.current == 0 { 1 } else { 0 }
}

/// Follows `links` attribute names from `obj`; the object at the end.
#[inline(always)]
fn follow(tgid: u32, obj: u64, keys: [u64; CHAIN_LINKS], links: u64) -> Option<u64> {
    let mut follow = Follow {
        tgid: tgid as u64,
        current: obj,
        keys,
    };
    let links = if links > CHAIN_LINKS as u64 {
        CHAIN_LINKS as u64
    } else {
        links
    };
    // SAFETY: the callback and its context follow bpf_loop's contract.
    unsafe {
        bpf_loop(
            links as u32,
            follow_link as *mut c_void,
            (&mut follow as *mut Follow).cast(),
            0,
        )
    };
    (follow.current != 0).then_some(follow.current)
}

/// Where the items of a list or deque come from, item by item.
#[repr(C)]
struct Walk {
    tgid: u64,
    kind: u64,
    /// List: `ob_item`. Deque: the current block.
    base: u64,
    /// Deque: the next item's position in the current block.
    position: u64,
    /// Index in the record of the first item of this walk.
    first: u64,
    copied: u64,
}

/// One request's fields being copied, one field per `bpf_loop` iteration.
#[repr(C)]
struct Fields {
    tgid: u64,
    found: Found,
    item: Item,
}

extern "C" fn copy_field(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Fields` on the caller's stack.
    let fields = unsafe { &mut *(ctx as *mut Fields) };
    let Some(plan) = plan(fields.tgid as u32) else {
        return 1;
    };
    let i = index as usize;
    if plan.request_fields.get(i).is_none_or(|&name| name == 0) {
        return 0;
    }
    let value = value(&fields.found, i);
    let copied = if value == 0 {
        None
    } else if plan.request_deref & (1 << i) != 0 {
        // SAFETY: a checked read of user memory.
        unsafe { bpf_probe_read_user((value + plan.py.var_size) as *const [u64; 2]) }.ok()
    } else {
        Some([value, 0])
    };
    match (copied, fields.item.fields.get_mut(i)) {
        (Some(words), Some(slot)) => *slot = words,
        _ => fields.item.missing |= 1 << i,
    }
    0
}

extern "C" fn copy_item(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on the caller's stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let Some(plan) = plan(walk.tgid as u32) else {
        return 1;
    };
    let object = if walk.kind == container::DEQUE {
        if walk.position == DEQUE_BLOCKLEN {
            let Some(next) = read(walk.base + 8 * (DEQUE_BLOCK_HEAD + DEQUE_BLOCKLEN)) else {
                return 1;
            };
            walk.base = next;
            walk.position = 0;
        }
        let object = read(walk.base + 8 * (DEQUE_BLOCK_HEAD + walk.position));
        walk.position += 1;
        object
    } else {
        read(walk.base + 8 * index)
    };
    let Some(object) = object else { return 1 };
    let mut fields = Fields {
        tgid: walk.tgid,
        found: Found {
            index: [0; REQUEST_FIELDS],
            values: 0,
            words: 0,
            key_word: 0,
        },
        item: Item {
            object,
            missing: (1 << REQUEST_FIELDS) - 1,
            fields: [[0; 2]; REQUEST_FIELDS],
        },
    };
    if let Some(found) = search(&plan.py, object, &plan.request_fields) {
        fields.found = found;
        fields.item.missing = 0;
        // SAFETY: the callback and its context follow bpf_loop's contract.
        unsafe {
            bpf_loop(
                REQUEST_FIELDS as u32,
                copy_field as *mut c_void,
                (&mut fields as *mut Fields).cast(),
                0,
            )
        };
    }
    let slot = walk.first + index;
    if slot >= (2 * MAX_QUEUE_ITEMS) as u64 {
        return 1;
    }
    let offset = HEADER_BYTES + slot as usize * size_of::<Item>();
    let Some(area) = scratch() else { return 1 };
    if offset > MAX_RECORD - size_of::<Item>() {
        return 1;
    }
    // SAFETY: `offset` keeps the write inside `record`; unaligned because the record is bytes.
    unsafe {
        ((*area).record.as_mut_ptr().add(offset) as *mut Item).write_unaligned(fields.item);
    }
    walk.copied += 1;
    0
}

/// Copies a queue's requests into the record from item `first` on; returns (copied, length).
#[inline(always)]
fn copy_queue(tgid: u32, plan: &Plan, chain: &Chain, first: u64) -> Option<(u32, u32)> {
    let py = &plan.py;
    let queue = follow(tgid, plan.scheduler, chain.keys, chain.links)?;
    let len = read(queue + py.var_size)?;
    let mut walk = Walk {
        tgid: tgid as u64,
        kind: chain.container,
        base: 0,
        position: 0,
        first,
        copied: 0,
    };
    if chain.container == container::DEQUE {
        walk.base = read(queue + py.deque_leftblock)?;
        walk.position = read(queue + py.deque_leftindex)?;
    } else {
        walk.base = read(queue + py.list_items)?;
    }
    let n = if len > MAX_QUEUE_ITEMS as u64 {
        MAX_QUEUE_ITEMS as u64
    } else {
        len
    };
    // SAFETY: the callback and its context follow bpf_loop's contract.
    unsafe {
        bpf_loop(
            n as u32,
            copy_item as *mut c_void,
            (&mut walk as *mut Walk).cast(),
            0,
        )
    };
    Some((walk.copied as u32, len as u32))
}

/// Copies the entries of the step's `scheduler_output.num_scheduled_tokens`.
#[repr(C)]
struct ScheduledWalk {
    words: u64,
    key_word: u64,
    /// Byte offset in the record of the first entry.
    start: u64,
    copied: u64,
    var_size: u64,
}

extern "C" fn copy_scheduled(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `ScheduledWalk` on the caller's stack.
    let walk = unsafe { &mut *(ctx as *mut ScheduledWalk) };
    let Some(area) = scratch() else { return 1 };
    let word = index * walk.words + walk.key_word;
    if word + 1 >= (MAX_DICT_ENTRIES * 3) as u64 {
        return 1;
    }
    // SAFETY: bounded just above.
    let (key, value) = unsafe {
        (
            entry_word(area, word),
            entry_word(area, word + 1),
        )
    };
    if key == 0 || value == 0 {
        return 0;
    }
    // SAFETY: a checked read of user memory.
    let Ok(words) = (unsafe { bpf_probe_read_user((value + walk.var_size) as *const [u64; 2]) })
    else {
        return 0;
    };
    let offset = walk.start + walk.copied * size_of::<ScheduledEntry>() as u64;
    if offset > (MAX_RECORD - size_of::<ScheduledEntry>()) as u64 {
        return 1;
    }
    // SAFETY: `offset` keeps the write inside `record`.
    unsafe {
        ((*area).record.as_mut_ptr().add(offset as usize) as *mut ScheduledEntry)
            .write_unaligned(ScheduledEntry { key, value: words });
    }
    walk.copied += 1;
    if walk.copied >= MAX_SCHEDULED as u64 { 1 } else { 0 }
}

#[inline(always)]
fn copy_scheduled_tokens(tgid: u32, plan: &Plan, start: u64) -> Option<u32> {
    let py = &plan.py;
    if plan.output_local == u64::MAX || plan.output_scheduled == 0 {
        return None;
    }
    let mut frame = plan.tstate;
    for link in py.tstate_frame {
        if link != 0 {
            frame = read(frame + link)?;
        }
    }
    let output = read(frame + py.frame_localsplus + 8 * plan.output_local)?;
    let mut keys = [0; CHAIN_LINKS];
    keys[0] = plan.output_scheduled;
    let dict = follow(tgid, output, keys, 1)?;
    let keys = read(dict + py.dict_keys)?;
    let area = scratch()?;
    let entries = load_entries(py, keys, area)?;
    let mut walk = ScheduledWalk {
        words: entries.words,
        key_word: entries.key_word,
        start,
        copied: 0,
        var_size: py.var_size,
    };
    // SAFETY: the callback and its context follow bpf_loop's contract.
    unsafe {
        bpf_loop(
            entries.count as u32,
            copy_scheduled as *mut c_void,
            (&mut walk as *mut ScheduledWalk).cast(),
            0,
        )
    };
    Some(walk.copied as u32)
}

/// Builds the record for a snapshot hit in the scratch area; returns its length.
pub fn take(tgid: u32, plan: &Plan, hit: WatchHit) -> Option<usize> {
    let mut header = SnapshotHeader::default();
    if let Some((copied, len)) = copy_queue(tgid, plan, &plan.running, 0) {
        header.flags |= snap::RUNNING;
        header.n_running = copied;
        header.running_len = len;
    } else {
        header.flags |= snap::READ_ERROR;
    }
    if let Some((copied, len)) = copy_queue(tgid, plan, &plan.waiting, header.n_running as u64) {
        header.flags |= snap::WAITING;
        header.n_waiting = copied;
        header.waiting_len = len;
    } else {
        header.flags |= snap::READ_ERROR;
    }
    if plan.kv_free.links != 0 {
        let counter = follow(tgid, plan.scheduler, plan.kv_free.keys, plan.kv_free.links)
            .and_then(|value| {
            // SAFETY: a checked read of user memory.
            unsafe { bpf_probe_read_user((value + plan.py.var_size) as *const [u64; 2]) }.ok()
        });
        match counter {
            Some(words) => {
                header.flags |= snap::KV_FREE;
                header.kv_free = words;
            }
            None => header.flags |= snap::READ_ERROR,
        }
    }
    let items = (header.n_running + header.n_waiting) as usize;
    let start = HEADER_BYTES + items * size_of::<Item>();
    if start > ITEMS_END {
        return None;
    }
    if let Some(copied) = copy_scheduled_tokens(tgid, plan, start as u64) {
        header.flags |= snap::SCHEDULED;
        header.n_scheduled = copied;
    }
    let area = scratch()?;
    // SAFETY: both writes are within `record` (HEADER_BYTES ≤ MAX_RECORD).
    unsafe {
        let record = (*area).record.as_mut_ptr();
        (record as *mut WatchHit).write_unaligned(hit);
        (record.add(size_of::<WatchHit>()) as *mut SnapshotHeader).write_unaligned(header);
    }
    Some(start + header.n_scheduled as usize * size_of::<ScheduledEntry>())
}

/// The record built by [`take`], `len` bytes of it.
pub fn record(len: usize) -> Option<&'static [u8]> {
    let area = scratch()?;
    if len > MAX_RECORD {
        return None;
    }
    // SAFETY: this CPU's slot, bounded by MAX_RECORD; read before anything else runs here.
    let record = unsafe { &(*area).record };
    // SAFETY: `len` ≤ MAX_RECORD, the length of `record`.
    Some(unsafe { core::slice::from_raw_parts(record.as_ptr(), len) })
}
