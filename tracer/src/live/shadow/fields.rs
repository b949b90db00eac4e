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
    let py = &plan.py;
    let planned = |fields: &[Field]| -> Vec<(usize, Field)> {
        fields
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, f)| f.key != 0)
            .collect()
    };
    let (planned, facts_planned) = (planned(&plan.request_fields), planned(&plan.fact_fields));
    let all = || planned.iter().chain(&facts_planned).map(|(_, f)| f.index);
    let (Some(lo), Some(hi)) = (all().min(), all().map(|i| i + 1).max()) else {
        return Vec::new();
    };
    let Some(class) = class(mem, py, plan.request_type) else {
        return Vec::new();
    };
    let mut batch = Batch::default();

    // 1. The object's header (type; the managed-dict words before it, or its dict pointer).
    let (start, len) = if class.managed {
        (PRE_HEADER, PRE_HEADER + py.object_type + 8)
    } else {
        let end = (py.object_type + 8).max(class.dictoffset.max(0) as u64 + 8);
        (0, end)
    };
    let heads: Vec<ReadId> = items
        .iter()
        .map(|item| batch.push(item.object.wrapping_sub(start), len as usize))
        .collect();
    mem.read_batch(&mut batch);
    // Word of a header read at `offset` bytes from the object.
    let word =
        |batch: &Batch, id, offset: i64| batch.word(id, ((offset + start as i64) / 8) as usize);
    let mut holders: Vec<Holder> = items
        .iter()
        .zip(&heads)
        .map(|(item, &id)| {
            if word(&batch, id, py.object_type as i64) != Some(plan.request_type) {
                return Holder::None;
            }
            let holder = if class.managed {
                word(&batch, id, -24)
                    .zip(word(&batch, id, -32))
                    .and_then(|(dict, values)| {
                        managed_holder(py, &class, item.object, dict, values)
                    })
            } else if class.dictoffset > 0 {
                word(&batch, id, class.dictoffset).map(Holder::Dict)
            } else {
                None
            };
            holder.unwrap_or(Holder::None)
        })
        .collect();

    // 2. Dicts: their keys and values pointers.
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
    mem.read_batch(&mut batch);
    for (holder, reads) in holders.iter_mut().zip(&dicts) {
        if let Some((keys, values)) = reads {
            *holder = match (batch.word(*keys, 0), batch.word(*values, 0)) {
                (Some(keys), Some(values)) => Holder::Split { keys, values },
                _ => Holder::None,
            };
        }
    }

    // 3. Key tables' headers (instances of one class share theirs: read once).
    batch.clear();
    let mut headers: Vec<(u64, ReadId)> = Vec::new();
    for holder in &holders {
        if let Holder::Split { keys, .. } = *holder {
            if keys != 0 && !headers.iter().any(|(k, _)| *k == keys) {
                headers.push((keys, batch.push(keys, py.keys_indices as usize)));
            }
        }
    }
    mem.read_batch(&mut batch);
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

    // 4. The planned span of each table's entries (and split values).
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
    mem.read_batch(&mut batch);
    let mut pointers = vec![[None; REQUEST_FIELDS]; items.len()];
    let mut fact_pointers = vec![[None; FACT_FIELDS]; items.len()];
    for ((span, found), facts) in spans.iter().zip(&mut pointers).zip(&mut fact_pointers) {
        let Some((entries, values, t)) = span else {
            continue;
        };
        let Some(entries) = batch.bytes(*entries) else {
            continue;
        };
        let values = values.and_then(|v| batch.bytes(v));
        if t.values != 0 && values.is_none() {
            continue;
        }
        // The value of a planned field, if its entry still holds its name.
        let value_of = |field: Field| {
            let word = |bytes: &[u8], at: usize| {
                bytes
                    .get(at..at + 8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
            };
            // Every entry kind ends in `key, value` (the value unused when split); an entry
            // past the table's end was not read (`get` finds no bytes).
            let key_at = ((field.index - lo + 1) * t.entry_size - 16) as usize;
            if word(entries, key_at) != Some(field.key) {
                return None;
            }
            match values {
                Some(values) => word(values, ((field.index - lo) * 8) as usize),
                None => word(entries, key_at + 8),
            }
            .filter(|&v| v != 0)
        };
        for &(i, field) in &planned {
            found[i] = value_of(field);
        }
        for &(i, field) in &facts_planned {
            facts[i] = value_of(field);
        }
    }
    // Requests first listed now: their facts are copied too.
    let fresh: Vec<Option<u64>> = items
        .iter()
        .zip(&pointers)
        .map(|(item, found)| {
            let id = *found.get(plan.id_field as usize)?;
            id.filter(|&id| !known(item.object, id))
        })
        .collect();

    // 5. Followed fields: the 16 bytes after the value's header; new requests' facts.
    batch.clear();
    let followed: Vec<[Option<ReadId>; REQUEST_FIELDS]> = pointers
        .iter()
        .map(|found| {
            std::array::from_fn(|i| {
                let value = found[i]?;
                (plan.request_deref & (1 << i) != 0).then(|| batch.push(value + py.var_size, 16))
            })
        })
        .collect();
    let fact_reads: Vec<Option<([Option<ReadId>; FACT_FIELDS], ReadId)>> = fresh
        .iter()
        .zip(&fact_pointers)
        .map(|(id, facts)| {
            let id = (*id)?;
            let fields = std::array::from_fn(|i| Some(batch.push(facts[i]? + py.var_size, 16)));
            Some((fields, batch.push(id, ID_BYTES)))
        })
        .collect();
    mem.read_batch(&mut batch);
    let mut facts = Vec::new();
    for ((item, id), reads) in items.iter().zip(&fresh).zip(&fact_reads) {
        let (Some(id), Some((fields, id_bytes))) = (id, reads) else {
            continue;
        };
        let mut copied = RequestFacts {
            object: item.object,
            id: *id,
            missing: 0,
            fields: [[0; 2]; FACT_FIELDS],
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
        facts.push(copied);
    }
    for ((item, found), followed) in items.iter_mut().zip(&pointers).zip(&followed) {
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
