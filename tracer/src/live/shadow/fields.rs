//! The requests' planned fields, read from userspace the way the watch program reads them
//! (`tracer-ebpf/src/snapshot.rs`: the same [`Plan`], the same words out), but for all the
//! listed requests together: one batch of reads per level of the object graph (the object's
//! header, its dict, the dict's keys, the entries, the followed values), each batch a few
//! system calls whatever the queues' lengths.

use tracer_common::capture::{
    storage, Field, Item, Plan, PyOffsets, RequestFacts, FACT_FIELDS, ID_BYTES, REQUEST_FIELDS,
};

use crate::inspect::memory::{Batch, ProcessMemory, ReadId};

/// `Py_TPFLAGS_MANAGED_DICT` (3.11+).
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
/// A key table larger than this is not what the plan describes.
const MAX_ENTRIES: u64 = 1 << 20;
/// Bytes read before a managed-dict object: 3.11's values pointer and the dict word.
const PRE_HEADER: u64 = 32;

/// An object's attribute table (as the watch program's `Table`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Table {
    entries: u64,
    entry_size: u64,
    nentries: u64,
    /// The split values array (`values[0]`), 0 when the values are in the entries.
    values: u64,
}

/// What every instance of the request class shares: its type's words.
#[derive(Clone, Copy, Debug)]
struct Class {
    managed: bool,
    dictoffset: i64,
    basicsize: u64,
    inline_values: bool,
    cached_keys: u64,
}

/// Where one request keeps its attributes, as far as the reads so far tell.
#[derive(Clone, Copy, Debug)]
enum Holder {
    /// Not a request of the class, or unreadable.
    None,
    /// A dict object.
    Dict(u64),
    /// A key table and split values (`values` points at the `PyDictValues`).
    Split { keys: u64, values: u64 },
    /// A key table whose header was read.
    Table(Table),
}

/// The planned fields of requests and of their facts, by position, and the span of a
/// table's entries that holds them all.
struct Planned {
    fields: Vec<(usize, Field)>,
    facts: Vec<(usize, Field)>,
    lo: u64,
    hi: u64,
}

impl Planned {
    fn new(plan: &Plan) -> Option<Self> {
        let planned = |fields: &[Field]| -> Vec<(usize, Field)> {
            fields
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, f)| f.key != 0)
                .collect()
        };
        let (fields, facts) = (planned(&plan.request_fields), planned(&plan.fact_fields));
        let all = || fields.iter().chain(&facts).map(|(_, f)| f.index);
        let (lo, hi) = (all().min()?, all().map(|i| i + 1).max()?);
        Some(Self {
            fields,
            facts,
            lo,
            hi,
        })
    }
}

/// Pointers found in a request's table: its planned fields' and its facts'.
type Pointers = ([Option<u64>; REQUEST_FIELDS], [Option<u64>; FACT_FIELDS]);

/// Fills `items` (objects of a snapshot taken without fields) with the planned fields of
/// those that are `request_class` objects, as the watch program would have; returns the
/// facts of those `known` does not know (by object and id string), as the watch program's
/// [`RequestFacts`] records.
pub fn fill<M: ProcessMemory + ?Sized>(
    mem: &M,
    plan: &Plan,
    items: &mut [&mut Item],
    known: impl Fn(u64, u64) -> bool,
) -> Vec<RequestFacts> {
    let Some(planned) = Planned::new(plan) else {
        return Vec::new();
    };
    let Some(class) = class(mem, &plan.py, plan.request_type) else {
        return Vec::new();
    };
    let mut batch = Batch::default();
    let mut holders = holders(mem, plan, &class, items, &mut batch);
    open_dicts(mem, &plan.py, &mut holders, &mut batch);
    read_tables(mem, &plan.py, &mut holders, &mut batch);
    let pointers = pointers(mem, &planned, &holders, &mut batch);
    // Requests first listed now: their facts are copied too.
    let fresh: Vec<Option<u64>> = items
        .iter()
        .zip(&pointers)
        .map(|(item, (found, _))| {
            let id = *found.get(plan.id_field as usize)?;
            id.filter(|&id| !known(item.object, id))
        })
        .collect();
    follow(mem, plan, items, &pointers, &fresh, &mut batch)
}

/// Reads, level 1: the objects' headers (type; the managed-dict words before it, or the
/// dict pointer), which tell where each request of the class keeps its attributes.
fn holders<M: ProcessMemory + ?Sized>(
    mem: &M,
    plan: &Plan,
    class: &Class,
    items: &[&mut Item],
    batch: &mut Batch,
) -> Vec<Holder> {
    let py = &plan.py;
    let (start, len) = if class.managed {
        (PRE_HEADER, PRE_HEADER + py.object_type + 8)
    } else {
        let end = (py.object_type + 8).max(class.dictoffset.max(0) as u64 + 8);
        (0, end)
    };
    batch.clear();
    let heads: Vec<ReadId> = items
        .iter()
        .map(|item| batch.push(item.object.wrapping_sub(start), len as usize))
        .collect();
    mem.read_batch(batch);
    // Word of a header read at `offset` bytes from the object.
    let word = |id, offset: i64| batch.word(id, ((offset + start as i64) / 8) as usize);
    items
        .iter()
        .zip(&heads)
        .map(|(item, &id)| {
            if word(id, py.object_type as i64) != Some(plan.request_type) {
                return Holder::None;
            }
            let holder = if class.managed {
                word(id, -24)
                    .zip(word(id, -32))
                    .and_then(|(dict, values)| managed_holder(py, class, item.object, dict, values))
            } else if class.dictoffset > 0 {
                word(id, class.dictoffset).map(Holder::Dict)
            } else {
                None
            };
            holder.unwrap_or(Holder::None)
        })
        .collect()
}

/// Reads, level 2: dicts, their keys and values pointers.
fn open_dicts<M: ProcessMemory + ?Sized>(
    mem: &M,
    py: &PyOffsets,
    holders: &mut [Holder],
    batch: &mut Batch,
) {
    batch.clear();
    let dicts: Vec<Option<(ReadId, ReadId)>> = holders
        .iter()
        .map(|h| match *h {
            Holder::Dict(dict) if dict != 0 => Some((
                batch.push(dict + py.dict_keys, 8),
                batch.push(dict + py.dict_values, 8),
            )),
            _ => None,
        })
        .collect();
    mem.read_batch(batch);
    for (holder, reads) in holders.iter_mut().zip(&dicts) {
        if let Some((keys, values)) = reads {
            *holder = match (batch.word(*keys, 0), batch.word(*values, 0)) {
                (Some(keys), Some(values)) => Holder::Split { keys, values },
                _ => Holder::None,
            };
        }
    }
}

/// Reads, level 3: key tables' headers (instances of one class share theirs: read once).
fn read_tables<M: ProcessMemory + ?Sized>(
    mem: &M,
    py: &PyOffsets,
    holders: &mut [Holder],
    batch: &mut Batch,
) {
    batch.clear();
    let mut headers: Vec<(u64, ReadId)> = Vec::new();
    for holder in holders.iter() {
        if let Holder::Split { keys, .. } = *holder {
            if keys != 0 && !headers.iter().any(|(k, _)| *k == keys) {
                headers.push((keys, batch.push(keys, py.keys_indices as usize)));
            }
        }
    }
    mem.read_batch(batch);
    for holder in holders.iter_mut() {
        if let Holder::Split { keys, values } = *holder {
            let header = headers
                .iter()
                .find(|(k, _)| *k == keys)
                .and_then(|(_, id)| batch.bytes(*id));
            *holder = header
                .and_then(|header| table(py, keys, header, values))
                .map_or(Holder::None, Holder::Table);
        }
    }
}

/// Reads, level 4: the planned span of each table's entries (and split values), for the
/// pointers in the planned fields whose entries still hold their names.
fn pointers<M: ProcessMemory + ?Sized>(
    mem: &M,
    planned: &Planned,
    holders: &[Holder],
    batch: &mut Batch,
) -> Vec<Pointers> {
    let Planned { lo, hi, .. } = *planned;
    batch.clear();
    let spans: Vec<Option<(ReadId, Option<ReadId>, Table)>> = holders
        .iter()
        .map(|h| match *h {
            // A request that has not set its later attributes yet (0.33's `num_cached_tokens`,
            // set at scheduling) has fewer entries: the fields it has are still read.
            Holder::Table(t) if lo < t.nentries => {
                let end = hi.min(t.nentries);
                let entries = batch.push(
                    t.entries + lo * t.entry_size,
                    ((end - lo) * t.entry_size) as usize,
                );
                let values = (t.values != 0)
                    .then(|| batch.push(t.values + lo * 8, ((end - lo) * 8) as usize));
                Some((entries, values, t))
            }
            _ => None,
        })
        .collect();
    mem.read_batch(batch);
    spans
        .iter()
        .map(|span| {
            let mut found: Pointers = ([None; REQUEST_FIELDS], [None; FACT_FIELDS]);
            let Some((entries, values, t)) = span else {
                return found;
            };
            let Some(entries) = batch.bytes(*entries) else {
                return found;
            };
            let values = values.and_then(|v| batch.bytes(v));
            if t.values != 0 && values.is_none() {
                return found;
            }
            let value_of = |field| value_in(field, lo, t, entries, values);
            for &(i, field) in &planned.fields {
                found.0[i] = value_of(field);
            }
            for &(i, field) in &planned.facts {
                found.1[i] = value_of(field);
            }
            found
        })
        .collect()
}

/// The value of a planned field in a table's entries read from index `lo` (and its split
/// values), if its entry still holds its name.
fn value_in(
    field: Field,
    lo: u64,
    t: &Table,
    entries: &[u8],
    values: Option<&[u8]>,
) -> Option<u64> {
    let word = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
    };
    // Every entry kind ends in `key, value` (the value unused when split); an entry past
    // the table's end was not read (`get` finds no bytes).
    let key_at = ((field.index - lo + 1) * t.entry_size - 16) as usize;
    if word(entries, key_at) != Some(field.key) {
        return None;
    }
    match values {
        Some(values) => word(values, ((field.index - lo) * 8) as usize),
        None => word(entries, key_at + 8),
    }
    .filter(|&v| v != 0)
}

/// Reads, level 5: followed fields (the 16 bytes after the value's header) into `items`,
/// and the facts of the `fresh` requests (those with an id there).
fn follow<M: ProcessMemory + ?Sized>(
    mem: &M,
    plan: &Plan,
    items: &mut [&mut Item],
    pointers: &[Pointers],
    fresh: &[Option<u64>],
    batch: &mut Batch,
) -> Vec<RequestFacts> {
    let py = &plan.py;
    batch.clear();
    let followed: Vec<[Option<ReadId>; REQUEST_FIELDS]> = pointers
        .iter()
        .map(|(found, _)| {
            std::array::from_fn(|i| {
                let value = found[i]?;
                (plan.request_deref & (1 << i) != 0).then(|| batch.push(value + py.var_size, 16))
            })
        })
        .collect();
    let fact_reads: Vec<Option<FactReads>> = fresh
        .iter()
        .zip(pointers)
        .map(|(id, (_, facts))| {
            let id = (*id)?;
            let fields = std::array::from_fn(|i| Some(batch.push(facts[i]? + py.var_size, 16)));
            Some((fields, batch.push(id, ID_BYTES)))
        })
        .collect();
    mem.read_batch(batch);
    let facts = items
        .iter()
        .zip(fresh)
        .zip(&fact_reads)
        .filter_map(|((item, id), reads)| {
            Some(copied_facts(batch, item.object, (*id)?, reads.as_ref()?))
        })
        .collect();
    for ((item, (found, _)), followed) in items.iter_mut().zip(pointers).zip(&followed) {
        for i in 0..REQUEST_FIELDS {
            let Some(pointer) = found[i] else { continue };
            let words = match followed[i] {
                Some(id) => match (batch.word(id, 0), batch.word(id, 1)) {
                    (Some(a), Some(b)) => [a, b],
                    _ => continue,
                },
                None => [pointer, 0],
            };
            item.fields[i] = words;
            item.missing &= !(1 << i);
        }
    }
    facts
}

/// The reads of a fresh request's facts: each field's value, and its id string.
type FactReads = ([Option<ReadId>; FACT_FIELDS], ReadId);

/// A fresh request's facts as the watch program copies them.
fn copied_facts(
    batch: &Batch,
    object: u64,
    id: u64,
    (fields, id_bytes): &FactReads,
) -> RequestFacts {
    // The queueing stamp is read from the target at once (`stamp_queued`), not copied.
    let mut copied = RequestFacts {
        object,
        id,
        missing: 1 << (FACT_FIELDS + 1),
        fields: [[0; 2]; FACT_FIELDS],
        first_event: [0; 2],
        id_bytes: [0; ID_BYTES],
    };
    for (i, read) in fields.iter().enumerate() {
        match read.and_then(|r| batch.word(r, 0).zip(batch.word(r, 1))) {
            Some((a, b)) => copied.fields[i] = [a, b],
            None => copied.missing |= 1 << i,
        }
    }
    match batch.bytes(*id_bytes) {
        Some(bytes) => copied.id_bytes.copy_from_slice(bytes),
        None => copied.missing |= 1 << FACT_FIELDS,
    }
    copied
}

/// The request class's type words.
fn class<M: ProcessMemory + ?Sized>(mem: &M, py: &PyOffsets, ty: u64) -> Option<Class> {
    let word = |offset: u64| mem.read_u64(ty + offset).ok();
    let flags = word(py.type_flags)?;
    Some(Class {
        managed: py.storage != storage::DICT_OFFSET && flags & TPFLAGS_MANAGED_DICT != 0,
        dictoffset: word(py.type_dictoffset)? as i64,
        basicsize: word(py.type_basicsize)?,
        inline_values: py.type_inline_flag != 0 && flags & py.type_inline_flag != 0,
        cached_keys: word(py.heaptype_cached_keys).unwrap_or(0),
    })
}

/// Where a managed-dict object keeps its attributes, from the words read before it
/// (`dict_word` at obj−24; 3.11's values pointer at obj−32).
fn managed_holder(
    py: &PyOffsets,
    class: &Class,
    object: u64,
    dict_word: u64,
    values_word: u64,
) -> Option<Holder> {
    Some(match py.storage {
        storage::MANAGED_311 if dict_word == 0 => Holder::Split {
            keys: class.cached_keys,
            values: values_word,
        },
        storage::TAGGED_312 if dict_word & 1 != 0 => Holder::Split {
            keys: class.cached_keys,
            values: dict_word + 1,
        },
        // The inline values' `valid` byte is not checked here: the planned keys must still
        // match, and an invalidated array's request has its dict in `dict_word`.
        storage::INLINE_313 if dict_word == 0 && class.inline_values => Holder::Split {
            keys: class.cached_keys,
            values: object + class.basicsize,
        },
        _ if dict_word != 0 => Holder::Dict(dict_word),
        _ => return None,
    })
}

/// A key table from its header bytes (the watch program's `keys_table`).
fn table(py: &PyOffsets, keys: u64, header: &[u8], values: u64) -> Option<Table> {
    let word = |offset: u64| {
        header
            .get(offset as usize..offset as usize + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
    };
    let byte = |offset: u64| header.get(offset as usize).copied().map(u64::from);
    let (index_bytes, entry_size) = if py.old_dict_keys != 0 {
        let size = word(py.keys_index_size)?;
        let width = match size {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            _ => 4,
        };
        (size.checked_mul(width)?, 24)
    } else {
        let log2 = byte(py.keys_index_size)?;
        let kind = byte(py.keys_kind)?;
        (
            1u64.checked_shl(log2 as u32)?,
            if kind == 0 { 24 } else { 16 },
        )
    };
    let nentries = word(py.keys_nentries)?;
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
