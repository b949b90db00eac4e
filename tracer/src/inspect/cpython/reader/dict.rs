//! Dicts: the keys table (combined or shared) and the values of split tables, in insertion
//! order as each version keeps it.

use super::base::{corrupt, PyReader, Result, MAX_ITEMS, TPFLAGS_DICT_SUBCLASS};
use crate::inspect::{
    cpython::layout::{DictKeysSize, ValuesOrder},
    memory::ProcessMemory,
};

/// A dict keys table, as read.
pub(super) struct Keys {
    pub(super) nentries: u64,
    pub(super) entry_size: u64,
    pub(super) entries: u64,
}

impl<M: ProcessMemory> PyReader<'_, M> {
    pub(super) fn keys(&self, keys: u64) -> Result<Keys> {
        let l = self.layout;
        let nentries = self.u64_at(keys.wrapping_add(l.dictkeys_nentries))?;
        let (slots, index_bytes, kind) = match l.dictkeys_size {
            DictKeysSize::Log2 {
                log2_size,
                log2_index_bytes,
                kind,
            } => {
                let (log2_size, log2_index_bytes, kind) = (
                    self.u8_at(keys.wrapping_add(log2_size))?,
                    self.u8_at(keys.wrapping_add(log2_index_bytes))?,
                    self.u8_at(keys.wrapping_add(kind))?,
                );
                if log2_size > 30 || log2_index_bytes > 33 {
                    return Err(corrupt(keys, format!("dict keys 2^{log2_size}")));
                }
                (1u64 << log2_size, 1u64 << log2_index_bytes, kind)
            }
            DictKeysSize::Size(offset) => {
                let size = self.u64_at(keys.wrapping_add(offset))?;
                if !size.is_power_of_two() || size > 1 << 30 {
                    return Err(corrupt(keys, format!("dict keys size {size}")));
                }
                let width = match size {
                    0..=0xff => 1,
                    0x100..=0xffff => 2,
                    _ => 4,
                };
                (size, size * width, 0)
            }
        };
        let entry_size = *l
            .dict_entry_size_by_kind
            .get(kind as usize)
            .ok_or_else(|| corrupt(keys, format!("dict keys kind {kind}")))?;
        if nentries > slots.min(MAX_ITEMS) {
            return Err(corrupt(
                keys,
                format!("dict keys of {slots} slots, {nentries} entries"),
            ));
        }
        Ok(Keys {
            nentries,
            entry_size,
            entries: keys
                .wrapping_add(l.dictkeys_indices)
                .wrapping_add(index_bytes),
        })
    }

    /// `(key, value)` words of every entry, in entry order (value: a combined table's, else
    /// unused).
    pub(super) fn entries(&self, keys: &Keys) -> Result<Vec<(u64, u64)>> {
        let per = (keys.entry_size / 8) as usize;
        let words = self.words_at(keys.entries, keys.nentries * per as u64)?;
        Ok(words
            .chunks_exact(per)
            .map(|e| (e[per - 2], e[per - 1]))
            .collect())
    }

    /// Indices of a split table's live values, in insertion order.
    fn values_order(&self, values: u64, nentries: u64) -> Result<Vec<u64>> {
        let l = self.layout;
        let order: Vec<u64> = match l.values_order {
            ValuesOrder::KeyOrder => return Ok((0..nentries).collect()),
            ValuesOrder::Prefix => {
                let prefix = u64::from(self.u8_at(values.wrapping_sub(1))?);
                if prefix < 2 {
                    return Err(corrupt(values, format!("values prefix {prefix}")));
                }
                let raw = self.bytes_at(values.wrapping_sub(prefix), prefix as usize)?;
                let size = u64::from(raw[prefix as usize - 2]);
                if size + 2 > prefix {
                    return Err(corrupt(values, format!("values order {size}/{prefix}")));
                }
                (0..size)
                    .map(|i| u64::from(raw[(prefix - 3 - i) as usize]))
                    .collect()
            }
            ValuesOrder::AfterValues { capacity, size } => {
                let capacity = u64::from(self.u8_at(values.wrapping_add(capacity))?);
                let size = u64::from(self.u8_at(values.wrapping_add(size))?);
                if size > capacity {
                    return Err(corrupt(values, format!("values {size}/{capacity}")));
                }
                self.bytes_at(
                    values
                        .wrapping_add(l.values_items)
                        .wrapping_add(capacity * 8),
                    size as usize,
                )?
                .into_iter()
                .map(u64::from)
                .collect()
            }
        };
        if order.iter().any(|&i| i >= nentries) {
            return Err(corrupt(values, "values order beyond the keys"));
        }
        Ok(order)
    }

    /// `(key, value)` pointers of a split table: shared `keys`, values array `values`.
    pub(super) fn split_items(&self, keys: u64, values: u64) -> Result<Vec<(u64, u64)>> {
        let keys = self.keys(keys)?;
        let entries = self.entries(&keys)?;
        let items = self.words_at(values.wrapping_add(self.layout.values_items), keys.nentries)?;
        Ok(self
            .values_order(values, keys.nentries)?
            .into_iter()
            .map(|i| (entries[i as usize].0, items[i as usize]))
            .filter(|&(k, v)| k != 0 && v != 0)
            .collect())
    }

    /// The `(key, value)` pointers of a dict (or subclass), combined or split table, in
    /// insertion order.
    pub fn dict_items(&self, obj: u64) -> Result<Vec<(u64, u64)>> {
        self.expect_kind(obj, self.types.dict, TPFLAGS_DICT_SUBCLASS, "dict")?;
        let l = self.layout;
        let keys = self.u64_at(obj.wrapping_add(l.dict_keys))?;
        let values = self.u64_at(obj.wrapping_add(l.dict_values))?;
        let used = self.u64_at(obj.wrapping_add(l.dict_used))?;
        let items = if values != 0 {
            self.split_items(keys, values)?
        } else {
            let keys = self.keys(keys)?;
            // Deleted entries have no value (3.10 keeps a dummy key there).
            self.entries(&keys)?
                .into_iter()
                .filter(|&(k, v)| k != 0 && v != 0)
                .collect()
        };
        if items.len() as u64 != used {
            return Err(corrupt(obj, "dict changed while read"));
        }
        Ok(items)
    }

    /// The value stored under a string key.
    pub fn dict_get(&self, obj: u64, key: &str) -> Result<Option<u64>> {
        for (k, v) in self.dict_items(obj)? {
            // Keys that are not strings (or are being replaced) cannot be the one we want.
            if self.str(k).is_ok_and(|s| s == key) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}
