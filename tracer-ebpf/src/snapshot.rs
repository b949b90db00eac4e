//! Snapshots of the scheduler at a hit, following the plan userspace wrote for the process.
//!
//! Everything version-specific comes from the [`Plan`]: struct offsets, where attributes
//! live, which objects to start from. An attribute is one O(1) read at the key-table entry
//! the plan names, checked against the interned name's address, so there is no search and
//! no unrolled loop: a queue is one `bpf_loop` over its requests (each callback reads the
//! request's planned entries in one go, then its fields and facts in loops of their own),
//! the scheduled dict another; the verifier checks each callback's straight-line reads
//! once, where unrolled loops would multiply the fields' outcomes into the instructions it
//! must verify (and the seconds the program takes to load). For the same reason the record's
//! build ([`build_record`]) and a request's copy ([`copy_request`]) are global functions,
//! which the verifier checks once each, apart from the paths that call them.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{
            bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_loop,
            bpf_probe_read_user as probe_read_user_raw,
        },
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use tracer_common::{
    capture::{
        container, snap, storage, Field, Item, Plan, PyOffsets, RequestFacts, ScheduledEntry,
        SnapshotHeader, Source, FACTS_BYTES, FACT_FIELDS, MAX_QUEUE_ITEMS, MAX_RECORD,
        MAX_SCHEDULED, MAX_SPAN, NO_LINK, REQUEST_FIELDS, SEEN_ENTRIES,
    },
    Counter, WatchHit,
};

/// The per-CPU work area. Loop state lives here rather than on the stack: values read from
/// a map are unknown to the verifier, so a loop callback converges after one pass instead of
/// being re-verified for every value a stack counter takes.
#[repr(C)]
pub struct Scratch {
    /// The process's plan, copied once per snapshot so callbacks need no hash lookup.
    plan: Plan,
    walk: Walk,
    /// The current request's entries `plan.request_span`, and their split values.
    span_entries: [u8; SPAN_BYTES],
    span_values: [u64; MAX_SPAN],
    /// The facts of the request being listed for the first time.
    facts: RequestFacts,
    /// The scheduled-tokens dict's entries, read in one go.
    scheduled: [u8; SCHEDULED_BYTES],
    record: [u8; MAX_RECORD],
}

/// Bytes of `MAX_SCHEDULED` dict entries of the widest kind (hash, key, value).
const SCHEDULED_BYTES: usize = MAX_SCHEDULED * 24;

/// Item pointers read at once by an objects-only walk: a deque block's worth (written
/// straight into the record, [`snap::COMPACT`]).
const CHUNK: usize = 64;

/// Bytes of `MAX_SPAN` entries of the widest kind (hash, key, value).
const SPAN_BYTES: usize = MAX_SPAN * 24;

#[map(name = "PLANS")]
static PLANS: HashMap<u32, Plan> = HashMap::with_max_entries(64, 0);

#[map(name = "FACTS")]
static FACTS: RingBuf = RingBuf::with_byte_size(FACTS_BYTES, 0);

#[map(name = "SEEN")]
static SEEN: LruHashMap<[u64; 3], u8> = LruHashMap::with_max_entries(SEEN_ENTRIES, 0);

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
/// A key table larger than this is not what the plan describes.
const MAX_ENTRIES: u64 = 1 << 20;

#[inline(always)]
fn read(addr: u64) -> Option<u64> {
    // SAFETY: a checked read of user memory; a fault returns an error, never a crash.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Two adjacent words in one read: a read of user memory costs ~0.2 µs on the dev VM, and
/// a snapshot makes hundreds.
#[inline(always)]
fn read2(addr: u64) -> Option<[u64; 2]> {
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_user(addr as *const [u64; 2]) }.ok()
}

#[inline(always)]
fn read_u8(addr: u64) -> Option<u8> {
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_user(addr as *const u8) }.ok()
}

/// The 16 bytes after an object's header: an `int`'s size word and first digits, a list's
/// length.
#[inline(always)]
fn read_value(py: &PyOffsets, object: u64) -> Option<[u64; 2]> {
    // SAFETY: as in `read`.
    unsafe { bpf_probe_read_user((object + py.var_size) as *const [u64; 2]) }.ok()
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

/// An object's attribute table: its key entries, and the split values array when the keys
/// are shared (0 when the values are in the entries, a combined dict).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Table {
    entries: u64,
    entry_size: u64,
    nentries: u64,
    values: u64,
}

/// Finds where `obj` keeps its attributes, per this CPython's storage mode.
#[inline(always)]
fn table(py: &PyOffsets, obj: u64) -> Option<Table> {
    table_of(py, obj, read(obj + py.object_type)?)
}

/// [`table`] of `obj` whose type `ty` the caller has read.
#[inline(always)]
fn table_of(py: &PyOffsets, obj: u64, ty: u64) -> Option<Table> {
    let managed =
        py.storage != storage::DICT_OFFSET && read(ty + py.type_flags)? & TPFLAGS_MANAGED_DICT != 0;
    let (keys, values) = if !managed {
        let offset = read(ty + py.type_dictoffset)? as i64;
        if offset <= 0 {
            return None;
        }
        dict_table(py, read(obj + offset as u64)?)?
    } else {
        let word = read(obj.wrapping_sub(24))?;
        let cached_keys = || read(ty + py.heaptype_cached_keys);
        match py.storage {
            storage::MANAGED_311 if word == 0 => (cached_keys()?, read(obj.wrapping_sub(32))?),
            storage::TAGGED_312 if word & 1 != 0 => (cached_keys()?, word + 1),
            storage::INLINE_313 if word == 0 => {
                if read(ty + py.type_flags)? & py.type_inline_flag == 0 {
                    return None;
                }
                let values = obj + read(ty + py.type_basicsize)?;
                if read_u8(values + py.values_valid)? == 0 {
                    return None;
                }
                (cached_keys()?, values)
            }
            _ => dict_table(py, word)?,
        }
    };
    keys_table(py, keys, values)
}

/// The entries of key table `keys`, with the split `values` array (0: combined).
#[inline(always)]
fn keys_table(py: &PyOffsets, keys: u64, values: u64) -> Option<Table> {
    if keys == 0 {
        return None;
    }
    let (index_bytes, entry_size) = if py.old_dict_keys != 0 {
        let size = read(keys + py.keys_index_size)?;
        let width = if size <= 0xff {
            1
        } else if size <= 0xffff {
            2
        } else {
            4
        };
        (size * width, 24)
    } else {
        // Both bytes are in one word on every version with this header (3.11+).
        let word = read(keys + (py.keys_index_size & !7))?;
        let byte = |offset: u64| (word >> (8 * (offset & 7))) & 0xff;
        let (log2, kind) = if py.keys_kind & !7 == py.keys_index_size & !7 {
            (byte(py.keys_index_size), byte(py.keys_kind))
        } else {
            (
                read_u8(keys + py.keys_index_size)? as u64,
                read_u8(keys + py.keys_kind)? as u64,
            )
        };
        (1 << (log2 & 63), if kind == 0 { 24 } else { 16 })
    };
    let nentries = read(keys + py.keys_nentries)?;
    if nentries > MAX_ENTRIES {
        return None;
    }
    Some(Table {
        entries: keys + py.keys_indices + index_bytes,
        entry_size,
        nentries,
        values: if values == 0 {
            0
        } else {
            values + py.values_items
        },
    })
}

/// A dict's keys and split values (0 when combined).
#[inline(always)]
fn dict_table(py: &PyOffsets, dict: u64) -> Option<(u64, u64)> {
    if dict == 0 {
        return None;
    }
    if py.dict_values == py.dict_keys + 8 {
        let [keys, values] = read2(dict + py.dict_keys)?;
        return Some((keys, values));
    }
    Some((read(dict + py.dict_keys)?, read(dict + py.dict_values)?))
}

/// The value pointer of `field` in `table`, if the planned entry still holds its name.
#[inline(always)]
fn lookup(table: &Table, field: &Field) -> Option<u64> {
    if field.key == 0 || field.index >= table.nentries {
        return None;
    }
    let entry = table.entries + field.index * table.entry_size;
    // Every entry kind ends in `key, value` (the value unused when split).
    let [key, value] = read2(entry + table.entry_size - 16)?;
    if key != field.key {
        return None;
    }
    let value = if table.values != 0 {
        read(table.values + 8 * field.index)?
    } else {
        value
    };
    (value != 0).then_some(value)
}

/// The object a [`Source`] names, if it has the planned type.
#[inline(always)]
fn source(py: &PyOffsets, source: &Source) -> Option<u64> {
    if source.owner == 0 {
        return None;
    }
    let value = lookup(&table(py, source.owner)?, &source.field)?;
    (read(value + py.object_type)? == source.ty).then_some(value)
}

/// A queue or dict being copied, one request or entry per loop iteration.
#[repr(C)]
struct Walk {
    kind: u64,
    /// List: `ob_item`. Deque: the current block.
    base: u64,
    /// Deque: the next item's position in the current block.
    position: u64,
    /// Byte offset in the record where this walk writes.
    start: u64,
    copied: u64,
    /// The current request's attribute table, or the scheduled dict's entries.
    table: Table,
    /// 1: the current request's planned entries are in the scratch area (`read_span`).
    spanned: u64,
    item: Item,
    /// Objects-only walks: items left to copy.
    left: u64,
}

/// The next item pointer of the walk's list or deque.
#[inline(always)]
fn next_item(walk: &mut Walk, index: u64) -> Option<u64> {
    if walk.kind != container::DEQUE {
        return read(walk.base + 8 * index);
    }
    if walk.position == DEQUE_BLOCKLEN {
        walk.base = read(walk.base + 8 * (DEQUE_BLOCK_HEAD + DEQUE_BLOCKLEN))?;
        walk.position = 0;
    }
    let object = read(walk.base + 8 * (DEQUE_BLOCK_HEAD + walk.position));
    walk.position += 1;
    object
}

/// A `bpf_loop` helper call's signature: index, context (unused: the state is in the scratch
/// area); 0 goes on, 1 stops.
type Callback = extern "C" fn(u64, *mut c_void) -> i64;

/// Calls `callback` for indices 0..n, stopping when it returns 1. Not unrolled: the verifier
/// checks the callback once.
#[inline(always)]
fn repeat(n: u64, callback: Callback) {
    // SAFETY: the callbacks follow bpf_loop's contract and keep their state in the scratch
    // area, not in the (null) context.
    unsafe { bpf_loop(n as u32, callback as *mut c_void, core::ptr::null_mut(), 0) };
}

extern "C" fn queue_step(index: u64, _: *mut c_void) -> i64 {
    // The verifier knows nothing of a global function's result: a callback must return 0 or 1.
    if core::hint::black_box(copy_request(index)) == 0 {
        0
    } else {
        1
    }
}

/// Copies the walk's request `index` (the body of [`queue_step`]): 0 goes on, 1 stops. A
/// global function (build.rs has the linker keep it global): the verifier checks it once,
/// on its own, with nothing known of its argument, instead of in every path of the program
/// that reaches a queue's loop (the snapshot program verified 240 058 instructions, ~330 ms
/// of every attach on the dev VM, before; 43 674 after).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn copy_request(index: u64) -> i64 {
    let Some(area) = scratch() else { return 1 };
    // SAFETY: this CPU's slot; `take` copied the plan in and set up the walk.
    let (plan, walk) = unsafe { (&(*area).plan, &mut (*area).walk) };
    let Some(object) = next_item(walk, index) else {
        return 1;
    };
    walk.item = Item::bare(object);
    if read(object + plan.py.object_type) != Some(plan.request_type) {
        return if write_item(area) { 0 } else { 1 };
    }
    let Some(table) = table_of(&plan.py, object, plan.request_type) else {
        return if write_item(area) { 0 } else { 1 };
    };
    walk.table = table;
    walk.spanned = read_span(area, plan, &table) as u64;
    repeat(REQUEST_FIELDS as u64, field_step);
    describe_new(area);
    if write_item(area) {
        0
    } else {
        1
    }
}

/// Copies field `index` of the walk's request. A loop of its own, not unrolled: the verifier
/// checks one field instead of every combination of the fields' outcomes.
extern "C" fn field_step(index: u64, _: *mut c_void) -> i64 {
    let Some(area) = scratch() else { return 1 };
    // SAFETY: this CPU's slot; `queue_step` set up the walk.
    let (plan, walk) = unsafe { (&(*area).plan, &mut (*area).walk) };
    let field = index as usize;
    if field >= REQUEST_FIELDS {
        return 1;
    }
    let planned = &plan.request_fields[field];
    let table = walk.table;
    let value = if walk.spanned != 0 {
        span_lookup(area, plan, &table, planned)
    } else {
        lookup(&table, planned)
    };
    let copied = value.and_then(|value| {
        if plan.request_deref & (1 << field) != 0 {
            read_value(&plan.py, value)
        } else {
            Some([value, 0])
        }
    });
    if let Some(words) = copied {
        walk.item.fields[field] = words;
        walk.item.missing &= !(1 << field);
    }
    0
}

/// Reads the entries (and split values) of `plan.request_span` of `table` into the scratch
/// area: one read for all of a request's fields instead of one per field.
#[inline(always)]
fn read_span(area: *mut Scratch, plan: &Plan, table: &Table) -> bool {
    let [lo, hi] = plan.request_span;
    if hi <= lo || hi > table.nentries || hi - lo > MAX_SPAN as u64 {
        return false;
    }
    let bytes = (hi - lo) * table.entry_size;
    if bytes > SPAN_BYTES as u64 {
        return false;
    }
    // SAFETY: both reads stay inside this CPU's scratch arrays (sizes checked above); a fault
    // in user memory returns an error.
    unsafe {
        if probe_read_user_raw(
            (*area).span_entries.as_mut_ptr() as *mut c_void,
            bytes as u32,
            (table.entries + lo * table.entry_size) as *const c_void,
        ) != 0
        {
            return false;
        }
        table.values == 0
            || probe_read_user_raw(
                (*area).span_values.as_mut_ptr() as *mut c_void,
                ((hi - lo) * 8) as u32,
                (table.values + lo * 8) as *const c_void,
            ) == 0
    }
}

/// [`lookup`] in the span read by [`read_span`].
#[inline(always)]
fn span_lookup(area: *mut Scratch, plan: &Plan, table: &Table, field: &Field) -> Option<u64> {
    let lo = plan.request_span[0];
    if field.key == 0 || field.index < lo {
        return None;
    }
    let index = core::hint::black_box(field.index - lo);
    if index >= MAX_SPAN as u64 {
        return None;
    }
    // Every entry kind ends in `key, value`.
    let key_at = core::hint::black_box(index * table.entry_size + table.entry_size - 16);
    if key_at > (SPAN_BYTES - 16) as u64 {
        return None;
    }
    // SAFETY: `key_at + 16` ≤ SPAN_BYTES and `index` < MAX_SPAN: inside the scratch arrays.
    let (key, value) = unsafe {
        let entry = (*area).span_entries.as_ptr().add(key_at as usize);
        let key = (entry as *const u64).read_unaligned();
        let value = if table.values != 0 {
            (*area).span_values[index as usize]
        } else {
            (entry.add(8) as *const u64).read_unaligned()
        };
        (key, value)
    };
    (key == field.key && value != 0).then_some(value)
}

/// Emits the [`RequestFacts`] of the walk's request the first time it is listed.
#[inline(always)]
fn describe_new(area: *mut Scratch) {
    // SAFETY: this CPU's slot; `queue_step` set up the walk.
    let (plan, walk, facts) = unsafe { (&(*area).plan, &(*area).walk, &mut (*area).facts) };
    let field = core::hint::black_box(plan.id_field) as usize;
    if field >= REQUEST_FIELDS || walk.item.missing & (1 << field) != 0 {
        return;
    }
    let id = walk.item.fields[field][0];
    let Some(hash) = read(id + plan.py.str_hash) else {
        return;
    };
    let key = [walk.item.object, id, hash];
    // SAFETY: a lookup whose value is not kept.
    if unsafe { SEEN.get(&key) }.is_some() {
        return;
    }
    facts.object = key[0];
    facts.id = key[1];
    facts.missing = 0;
    repeat(FACT_FIELDS as u64, fact_step);
    facts.first_event = [0; 2];
    facts.missing |= 1 << (FACT_FIELDS + 1);
    repeat(1, first_event_step);
    // The helper zeroes what it could not read.
    // SAFETY: a checked read of user memory.
    if unsafe { bpf_probe_read_user_buf(key[1] as *const u8, &mut facts.id_bytes) }.is_err() {
        facts.missing |= 1 << FACT_FIELDS;
    }
    if FACTS
        .output::<RequestFacts>(facts, BPF_RB_NO_WAKEUP.into())
        .is_err()
    {
        crate::bump(Counter::FactsRingFull);
        return;
    }
    let _ = SEEN.insert(&key, &1, 0);
}

/// Copies the walk's request's first event (a loop of one: verified apart, as
/// [`fact_step`], the reads cost the verifier ~0.25 s more inline).
extern "C" fn first_event_step(_: u64, _: *mut c_void) -> i64 {
    let Some(area) = scratch() else { return 1 };
    // SAFETY: this CPU's slot; `describe_new` set up the walk and the facts.
    let (plan, walk, facts) = unsafe { (&(*area).plan, &(*area).walk, &mut (*area).facts) };
    if let Some(event) = first_event(plan, &walk.table) {
        facts.first_event = event;
        facts.missing &= !(1 << (FACT_FIELDS + 1));
    }
    1
}

/// The request's first event ([`tracer_common::capture::QueuedEvent`]): its type object and
/// its timestamp's bits (userspace tells whether it is the queueing one).
#[inline(always)]
fn first_event(plan: &Plan, table: &Table) -> Option<[u64; 2]> {
    let planned = &plan.queued_event;
    let events = lookup(table, &planned.events)?;
    if read(events + plan.py.var_size)? == 0 {
        return None;
    }
    let first = read(read(events + plan.py.list_items)?)?;
    let kind = read(first + planned.kind)?;
    let stamp = read_value(&plan.py, read(first + planned.stamp)?)?;
    Some([kind, stamp[0]])
}

/// Copies fact `index` of the walk's request (a loop of its own, as [`field_step`]).
extern "C" fn fact_step(index: u64, _: *mut c_void) -> i64 {
    let Some(area) = scratch() else { return 1 };
    // SAFETY: this CPU's slot; `describe_new` set up the walk and the facts.
    let (plan, walk, facts) = unsafe { (&(*area).plan, &(*area).walk, &mut (*area).facts) };
    let i = index as usize;
    if i >= FACT_FIELDS {
        return 1;
    }
    match lookup(&walk.table, &plan.fact_fields[i]).and_then(|value| read_value(&plan.py, value)) {
        Some(words) => facts.fields[i] = words,
        None => {
            facts.fields[i] = [0; 2];
            facts.missing |= 1 << i;
        }
    }
    0
}

/// Writes the walk's item at the record's next item slot; `false` when the record is full.
#[inline(always)]
fn write_item(area: *mut Scratch) -> bool {
    // SAFETY: this CPU's slot.
    let walk = unsafe { &mut (*area).walk };
    let offset = walk.start + walk.copied * size_of::<Item>() as u64;
    if offset > (ITEMS_END - size_of::<Item>()) as u64 {
        return false;
    }
    // SAFETY: `offset` keeps the write inside `record`; unaligned because the record is bytes.
    unsafe {
        ((*area).record.as_mut_ptr().add(offset as usize) as *mut Item).write_unaligned(walk.item);
    }
    walk.copied += 1;
    true
}

/// One chunk of an objects-only walk: up to [`CHUNK`] item pointers in one read (the rest of
/// a deque block, or of a list's item array), then their items, addresses only. One helper
/// call per 64 requests instead of one per request.
extern "C" fn chunk_step(_: u64, _: *mut c_void) -> i64 {
    let Some(area) = scratch() else { return 1 };
    // SAFETY: this CPU's slot; `copy_queue` set up the walk.
    let walk = unsafe { &mut (*area).walk };
    if walk.left == 0 {
        return 1;
    }
    let (from, room) = if walk.kind == container::DEQUE {
        if walk.position >= DEQUE_BLOCKLEN {
            let Some(next) = read(walk.base + 8 * (DEQUE_BLOCK_HEAD + DEQUE_BLOCKLEN)) else {
                return 1;
            };
            walk.base = next;
            walk.position = 0;
        }
        (
            walk.base + 8 * (DEQUE_BLOCK_HEAD + walk.position),
            DEQUE_BLOCKLEN - walk.position,
        )
    } else {
        (walk.base + 8 * walk.position, CHUNK as u64)
    };
    let n = core::hint::black_box(if walk.left < room { walk.left } else { room });
    if n == 0 || n > CHUNK as u64 {
        return 1;
    }
    let offset = core::hint::black_box(walk.start + 8 * walk.copied);
    if offset > (MAX_RECORD - 8 * CHUNK) as u64 {
        return 1;
    }
    // SAFETY: at most CHUNK words from `offset`, which leaves room for them in this CPU's
    // record; a fault in user memory returns an error.
    if unsafe {
        probe_read_user_raw(
            (*area).record.as_mut_ptr().add(offset as usize) as *mut c_void,
            (n * 8) as u32,
            from as *const c_void,
        )
    } != 0
    {
        return 1;
    }
    walk.position += n;
    walk.left -= n;
    walk.copied += n;
    0
}

/// Copies a queue's requests into the record from byte `start` on (`objects_only`: their
/// addresses, no fields); returns (copied, length).
#[inline(always)]
fn copy_queue(
    area: *mut Scratch,
    queue: &Source,
    start: u64,
    objects_only: bool,
) -> Option<(u32, u32)> {
    // SAFETY: this CPU's slot.
    let (py, walk) = unsafe { (&(*area).plan.py, &mut (*area).walk) };
    let queue_object = source(py, queue)?;
    let len = read(queue_object + py.var_size)?;
    walk.kind = queue.container;
    walk.start = start;
    walk.copied = 0;
    walk.position = 0;
    if queue.container == container::DEQUE {
        walk.base = read(queue_object + py.deque_leftblock)?;
        walk.position = read(queue_object + py.deque_leftindex)?;
    } else {
        walk.base = read(queue_object + py.list_items)?;
    }
    let n = if len > MAX_QUEUE_ITEMS as u64 {
        MAX_QUEUE_ITEMS as u64
    } else {
        len
    };
    if objects_only {
        walk.left = n;
        repeat(n / CHUNK as u64 + 2, chunk_step);
    } else {
        repeat(n, queue_step);
    }
    // SAFETY: this CPU's slot; the loop has returned.
    Some((unsafe { (*area).walk.copied } as u32, len as u32))
}

/// Copies one entry of the step's `scheduler_output.num_scheduled_tokens` (a combined dict:
/// its entries hold key and value).
extern "C" fn scheduled_step(index: u64, _: *mut c_void) -> i64 {
    let Some(area) = scratch() else { return 1 };
    // SAFETY: this CPU's slot; `copy_scheduled_tokens` set up the walk and read the entries.
    let (plan, walk) = unsafe { (&(*area).plan, &mut (*area).walk) };
    // Every entry kind ends in `key, value`.
    let at = core::hint::black_box(index * walk.table.entry_size + walk.table.entry_size - 16);
    if at > (SCHEDULED_BYTES - 16) as u64 {
        return 1;
    }
    // SAFETY: `at + 16` ≤ SCHEDULED_BYTES: inside the scratch array.
    let (key, value) = unsafe {
        let entry = (*area).scheduled.as_ptr().add(at as usize);
        (
            (entry as *const u64).read_unaligned(),
            (entry.add(8) as *const u64).read_unaligned(),
        )
    };
    // A deleted entry has no value.
    if key == 0 || value == 0 {
        return 0;
    }
    // A small int (a decode step's 1) is told by its address; others are read.
    let [lo, hi] = plan.small_ints;
    let words = if lo <= value && value < hi {
        [0; 2]
    } else {
        match read_value(&plan.py, value) {
            Some(words) => words,
            None => return 0,
        }
    };
    let offset = walk.start + walk.copied * size_of::<ScheduledEntry>() as u64;
    if offset > (MAX_RECORD - size_of::<ScheduledEntry>()) as u64 {
        return 1;
    }
    // SAFETY: `offset` keeps the write inside `record`.
    unsafe {
        ((*area).record.as_mut_ptr().add(offset as usize) as *mut ScheduledEntry).write_unaligned(
            ScheduledEntry {
                key,
                object: value,
                value: words,
            },
        );
    }
    walk.copied += 1;
    0
}

/// Copies the step's scheduled tokens into the record from byte `start` on, where the plan
/// has the `scheduler_output` local (`output_local` set); returns the entries copied.
#[inline(always)]
fn copy_scheduled_tokens(area: *mut Scratch, start: u64) -> Option<u32> {
    // SAFETY: this CPU's slot.
    let (plan, walk) = unsafe { (&(*area).plan, &mut (*area).walk) };
    let py = &plan.py;
    let output = read(step_frame(plan)? + py.frame_localsplus + 8 * plan.output_local)?
        & !py.stackref_tag_bits;
    let dict = lookup(&table(py, output)?, &plan.output_scheduled)?;
    if read(dict + py.object_type)? != plan.dict_type {
        return None;
    }
    let (keys, values) = dict_table(py, dict)?;
    if values != 0 {
        return None;
    }
    walk.table = keys_table(py, keys, 0)?;
    walk.start = start;
    walk.copied = 0;
    let n = if walk.table.nentries > MAX_SCHEDULED as u64 {
        MAX_SCHEDULED as u64
    } else {
        walk.table.nentries
    };
    // All the entries in one read (the loop then reads user memory only for ints that are
    // not small: a prefill chunk's).
    let bytes = core::hint::black_box(n * walk.table.entry_size);
    if bytes == 0 || bytes > SCHEDULED_BYTES as u64 {
        return (bytes == 0).then_some(0);
    }
    // SAFETY: at most SCHEDULED_BYTES into this CPU's scratch array; a fault returns an error.
    if unsafe {
        probe_read_user_raw(
            (*area).scheduled.as_mut_ptr() as *mut c_void,
            bytes as u32,
            walk.table.entries as *const c_void,
        )
    } != 0
    {
        return None;
    }
    repeat(n, scheduled_step);
    // SAFETY: this CPU's slot; the loop has returned.
    Some(unsafe { (*area).walk.copied } as u32)
}

/// vLLM's stamp of the step's outputs ([`tracer_common::capture::OutputsStamp`]), as `f64`
/// bits: the first value of the dict on the step frame's stack, if it is an outputs object.
#[inline(always)]
fn outputs_stamp(plan: &Plan) -> Option<u64> {
    let (py, at) = (&plan.py, &plan.outputs);
    if at.slot == u64::MAX {
        return None;
    }
    let dict = read(step_frame(plan)? + py.frame_localsplus + 8 * at.slot)? & !py.stackref_tag_bits;
    if read(dict + py.object_type)? != plan.dict_type {
        return None;
    }
    let (keys, values) = dict_table(py, dict)?;
    if values != 0 {
        return None;
    }
    let table = keys_table(py, keys, 0)?;
    if table.nentries == 0 {
        return None;
    }
    // Every entry kind ends in `key, value`.
    let outputs = read(table.entries + table.entry_size - 8)?;
    if outputs == 0 || read(outputs + py.object_type)? != at.class {
        return None;
    }
    Some(read_value(py, read(outputs + at.member)?)?[0])
}

/// The engine thread's current frame: the step function's, at its watches.
#[inline(always)]
fn step_frame(plan: &Plan) -> Option<u64> {
    let mut frame = plan.tstate;
    for link in plan.py.tstate_frame {
        if link != NO_LINK {
            frame = read(frame + link)?;
        }
    }
    Some(frame)
}

/// What a snapshot copies.
#[derive(Clone, Copy)]
pub struct Parts {
    /// The queues' requests with their fields, else which requests each queue holds.
    pub fields: bool,
    /// The step's scheduled tokens.
    pub scheduled: bool,
    /// The step's frame, for userspace to read the rest ([`snap::SHADOW`]).
    pub shadow: bool,
    /// vLLM's stamp of the outputs `update_from_output()` just returned.
    pub outputs: bool,
}

impl Parts {
    fn to_bits(self) -> u64 {
        self.fields as u64
            | (self.scheduled as u64) << 1
            | (self.shadow as u64) << 2
            | (self.outputs as u64) << 3
    }

    fn from_bits(bits: u64) -> Self {
        Self {
            fields: bits & 1 != 0,
            scheduled: bits & 2 != 0,
            shadow: bits & 4 != 0,
            outputs: bits & 8 != 0,
        }
    }
}

/// Builds the record for a snapshot hit in the scratch area; returns its length, or the
/// [`Counter`] of why it could not (parts it could not read are flagged or left out instead).
pub fn take(plan: &Plan, hit: WatchHit, parts: Parts) -> Result<usize, Counter> {
    let area = scratch().ok_or(Counter::NoScratch)?;
    // SAFETY: this CPU's slot, a perf_event program does not nest on one CPU; the hit goes
    // first in the record (HEADER_BYTES ≤ MAX_RECORD).
    unsafe {
        (*area).plan = *plan;
        ((*area).record.as_mut_ptr() as *mut WatchHit).write_unaligned(hit);
    }
    // The verifier knows nothing of a global function's result.
    match core::hint::black_box(build_record(parts.to_bits())) {
        len @ 0.. => Ok(len as usize),
        code if code == -(Counter::NoScratch as i64) => Err(Counter::NoScratch),
        _ => Err(Counter::OverBound),
    }
}

/// The body of [`take`], after its plan and hit are in the scratch area: the header and
/// the parts ([`Parts::to_bits`]) after the hit; returns the record's length, or minus the
/// [`Counter`] of why not. Global (see build.rs), as [`copy_request`]: verified once, with
/// every combination of parts at once, instead of once per combination the program's paths
/// reach it with (the snapshot program verified 43 674 instructions before, 12 334 after).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn build_record(parts: u64) -> i64 {
    let Parts {
        fields,
        scheduled,
        shadow,
        outputs,
    } = Parts::from_bits(parts);
    let Some(area) = scratch() else {
        return -(Counter::NoScratch as i64);
    };
    // SAFETY: this CPU's slot; `take` copied the plan in.
    let plan = unsafe { &(*area).plan };
    let mut header = SnapshotHeader::default();
    if !fields {
        header.flags |= snap::COMPACT;
    }
    if shadow {
        header.flags |= snap::SHADOW;
        header.frame = step_frame(plan).unwrap_or(0);
    }
    let start = copy_queues(area, &mut header);
    if start > ITEMS_END {
        return -(Counter::OverBound as i64);
    }
    if scheduled && plan.output_local != u64::MAX {
        match copy_scheduled_tokens(area, start as u64) {
            Some(copied) => {
                header.flags |= snap::SCHEDULED;
                header.n_scheduled = copied;
            }
            None => crate::bump(Counter::ScheduledUnreadable),
        }
    }
    if outputs {
        if let Some(stamp) = outputs_stamp(plan) {
            header.flags |= snap::OUTPUTS;
            header.outputs_stamp = stamp;
        }
    }
    // SAFETY: `take` wrote the hit at the record's start; the header follows it (both within
    // HEADER_BYTES ≤ MAX_RECORD).
    unsafe {
        let record = (*area).record.as_mut_ptr();
        let hit_ns = (record as *const WatchHit).read_unaligned().ktime_ns;
        header.copy_ns = bpf_ktime_get_ns().saturating_sub(hit_ns);
        (record.add(size_of::<WatchHit>()) as *mut SnapshotHeader).write_unaligned(header);
    }
    (start + header.n_scheduled as usize * size_of::<ScheduledEntry>()) as i64
}

/// Copies the running and waiting queues after the record's header, and reads the KV free
/// count, into `header`; returns where the items end.
#[inline(always)]
fn copy_queues(area: *mut Scratch, header: &mut SnapshotHeader) -> usize {
    // SAFETY: this CPU's slot; `take` copied the plan in.
    let plan = unsafe { &(*area).plan };
    let objects_only = header.flags & snap::COMPACT != 0;
    // Which requests each queue holds, as their addresses: 8 bytes an item, not an Item.
    let item_bytes = if objects_only { 8 } else { size_of::<Item>() };
    match copy_queue(area, &plan.running, HEADER_BYTES as u64, objects_only) {
        Some((copied, len)) => {
            header.flags |= snap::RUNNING;
            header.n_running = copied;
            header.running_len = len;
        }
        None => read_error(header, Counter::RunningUnreadable),
    }
    let waiting_start = HEADER_BYTES + header.n_running as usize * item_bytes;
    match copy_queue(area, &plan.waiting, waiting_start as u64, objects_only) {
        Some((copied, len)) => {
            header.flags |= snap::WAITING;
            header.n_waiting = copied;
            header.waiting_len = len;
        }
        None => read_error(header, Counter::WaitingUnreadable),
    }
    if plan.kv_free.owner != 0 {
        match source(&plan.py, &plan.kv_free).and_then(|count| read_value(&plan.py, count)) {
            Some(words) => {
                header.flags |= snap::KV_FREE;
                header.kv_free = words;
            }
            None => read_error(header, Counter::KvFreeUnreadable),
        }
    }
    HEADER_BYTES + (header.n_running + header.n_waiting) as usize * item_bytes
}

/// Flags a part of the snapshot that could not be read, and counts it by `kind`.
#[inline(always)]
fn read_error(header: &mut SnapshotHeader, kind: Counter) {
    header.flags |= snap::READ_ERROR;
    crate::bump(kind);
}

/// The record built by [`take`], `len` bytes of it.
pub fn record(len: usize) -> Result<&'static [u8], Counter> {
    let area = scratch().ok_or(Counter::NoScratch)?;
    if len > MAX_RECORD {
        return Err(Counter::OverBound);
    }
    // SAFETY: this CPU's slot, bounded by MAX_RECORD; read before anything else runs here.
    let record = unsafe { &(*area).record };
    // SAFETY: `len` ≤ MAX_RECORD, the length of `record`.
    Ok(unsafe { core::slice::from_raw_parts(record.as_ptr(), len) })
}
