//! Instance attributes: where an instance keeps them (`__slots__`, split values, its own
//! dict) per version, and locations the kernel side re-reads without walking the class.

use super::base::{
    corrupt, PyReader, ReadError, Result, MAX_BASES, TPFLAGS_DICT_SUBCLASS, TPFLAGS_HEAPTYPE,
    TPFLAGS_TYPE_SUBCLASS,
};
use crate::inspect::{cpython::layout::ManagedDict, memory::ProcessMemory};

/// Where an attribute's value pointer lives, so it can be re-read later (e.g. by the eBPF
/// side at a probe hit) without walking the class again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrLocation {
    /// A `__slots__` member: the pointer is at `obj.wrapping_add(offset)` in every instance
    /// of the class.
    Slot { offset: u64 },
    /// Shared-key (split) storage: `values[index]` of the array found as `values` says.
    /// The index holds for every instance of the class while the class's cached keys hold
    /// the name.
    Values { values: ValuesAt, index: u64 },
    /// The instance's own combined dict, whose pointer is at `obj + dict_at`: entry
    /// `entry_index` of its keys' `dk_entries` (the value is the entry's last word), valid
    /// while that entry's key is still `key` (an interned str).
    DictEntry {
        dict_at: i64,
        entry_index: u64,
        key: u64,
    },
}

/// Where an instance's split values array (`PyDictValues.values`) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValuesAt {
    /// Inline in the object: `values[0]` is at `obj.wrapping_add(offset)` (3.13+).
    Inline { offset: u64 },
    /// The word at `obj + at` plus `bias` (3.11: 0; 3.12, whose word is tagged: 1) is the
    /// `PyDictValues`; `values[]` is [`values_items`] into it.
    ///
    /// [`values_items`]: crate::inspect::cpython::layout::Layout::values_items
    Pointer { at: i64, bias: u64 },
    /// `ma_values` of the dict whose pointer is at `obj + dict_at`.
    DictValues { dict_at: i64 },
}

/// An instance's attribute storage, other than slots.
enum Storage {
    None,
    /// A split values array and the shared keys naming it.
    Values {
        at: ValuesAt,
        array: u64,
        keys: u64,
    },
    /// A dict object (combined or split) whose pointer is at `obj + at`.
    Dict {
        at: i64,
        dict: u64,
    },
}

impl<M: ProcessMemory> PyReader<'_, M> {
    /// Where an instance keeps its attributes (not counting slots).
    fn storage(&self, obj: u64) -> Result<Storage> {
        let l = self.layout;
        let ty = self.class_of(obj)?;
        let flags = self.type_flags(ty)?;
        let cached_keys = || self.u64_at(ty.wrapping_add(l.heaptype_cached_keys));
        let dict_at = |at: i64| -> Result<Storage> {
            let dict = self.u64_at(obj.wrapping_add_signed(at))?;
            Ok(if dict == 0 {
                Storage::None
            } else {
                Storage::Dict { at, dict }
            })
        };
        if l.tpflags_managed_dict != 0 && flags & l.tpflags_managed_dict != 0 {
            return match l.instance_dict {
                ManagedDict::None => Ok(Storage::None),
                ManagedDict::Separate { dict, values } => {
                    let array = self.u64_at(obj.wrapping_add_signed(values))?;
                    if array != 0 {
                        return Ok(Storage::Values {
                            at: ValuesAt::Pointer {
                                at: values,
                                bias: 0,
                            },
                            array,
                            keys: cached_keys()?,
                        });
                    }
                    dict_at(dict)
                }
                ManagedDict::Tagged {
                    dict_or_values,
                    values_bias,
                } => {
                    let word = self.u64_at(obj.wrapping_add_signed(dict_or_values))?;
                    if word & 1 == 1 {
                        return Ok(Storage::Values {
                            at: ValuesAt::Pointer {
                                at: dict_or_values,
                                bias: values_bias,
                            },
                            array: word.wrapping_add(values_bias),
                            keys: cached_keys()?,
                        });
                    }
                    dict_at(dict_or_values)
                }
                ManagedDict::Inline { dict, flag, valid } => {
                    if flags & flag != 0 {
                        let basicsize = self.u64_at(ty.wrapping_add(l.type_basicsize))?;
                        let array = obj.wrapping_add(basicsize);
                        if self.u8_at(array.wrapping_add(valid))? != 0 {
                            return Ok(Storage::Values {
                                at: ValuesAt::Inline {
                                    offset: basicsize.wrapping_add(l.values_items),
                                },
                                array,
                                keys: cached_keys()?,
                            });
                        }
                    }
                    dict_at(dict)
                }
            };
        }
        let dictoffset = self.u64_at(ty.wrapping_add(l.type_dictoffset))? as i64;
        match dictoffset {
            0 => Ok(Storage::None),
            offset if offset > 0 => dict_at(offset),
            _ => Err(corrupt(obj, "instance dict of a variable-size object")),
        }
    }

    /// The `__slots__` member named `name` of `obj`'s class, as its offset in the object.
    fn slot_offset(&self, obj: u64, name: &str) -> Result<Option<u64>> {
        self.class_slot_offset(self.type_of(obj)?, name)
    }

    /// The `__slots__` member named `name` of instances of `ty`, as its offset in them: the
    /// first class in the MRO that defines `name` must define it as a member.
    pub fn class_slot_offset(&self, ty: u64, name: &str) -> Result<Option<u64>> {
        let l = self.layout;
        for class in self.slotted_classes(ty)? {
            let dict = self.u64_at(class.wrapping_add(l.type_dict))?;
            let Some(found) = self.dict_get(dict, name)? else {
                continue;
            };
            if self.type_of(found)? != self.types.member_descr {
                return Ok(None);
            }
            return self.member_offset(found);
        }
        Ok(None)
    }

    /// The classes of `ty`'s MRO that can define `__slots__`: heap types (static builtin
    /// types keep their dict elsewhere from 3.12, and none has object slots).
    fn slotted_classes(&self, ty: u64) -> Result<Vec<u64>> {
        let l = self.layout;
        let mut out = Vec::new();
        let mro = self.u64_at(ty.wrapping_add(l.type_mro))?;
        for class in self.tuple(mro)?.into_iter().take(MAX_BASES) {
            if self.type_flags(class)? & TPFLAGS_HEAPTYPE != 0
                && self.u64_at(class.wrapping_add(l.type_dict))? != 0
            {
                out.push(class);
            }
        }
        Ok(out)
    }

    /// The object offset a member descriptor reads, if it is an object member (as
    /// `__slots__` entries are).
    fn member_offset(&self, descr: u64) -> Result<Option<u64>> {
        let l = self.layout;
        let member = self.u64_at(descr.wrapping_add(l.memberdescr_member))?;
        if u64::from(self.u32_at(member.wrapping_add(l.memberdef_type))?) != l.member_object_ex {
            return Ok(None);
        }
        Ok(Some(self.u64_at(member.wrapping_add(l.memberdef_offset))?))
    }

    /// An instance's `__slots__` values that are set, `(name, value)`, base classes last.
    pub fn slots(&self, obj: u64) -> Result<Vec<(String, u64)>> {
        let l = self.layout;
        let mut out = Vec::new();
        for class in self.slotted_classes(self.type_of(obj)?)? {
            let dict = self.u64_at(class.wrapping_add(l.type_dict))?;
            for (key, descr) in self.dict_items(dict)? {
                if self.type_of(descr)? != self.types.member_descr {
                    continue;
                }
                if let Some(offset) = self.member_offset(descr)? {
                    let value = self.u64_at(obj.wrapping_add(offset))?;
                    if value != 0 {
                        out.push((self.str(key)?, value));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Where the value of attribute `name` of instance `obj` lives: a slot, its class's
    /// split values, or its own dict. `None` if the instance has no such attribute (class
    /// attributes, properties and methods are not instance storage).
    pub fn attr_location(&self, obj: u64, name: &str) -> Result<Option<AttrLocation>> {
        if let Some(offset) = self.slot_offset(obj, name)? {
            return Ok(Some(AttrLocation::Slot { offset }));
        }
        let l = self.layout;
        let split = |keys: u64, values: ValuesAt, array: u64| -> Result<Option<AttrLocation>> {
            let keys = self.keys(keys)?;
            let entries = self.entries(&keys)?;
            for (index, &(key, _)) in entries.iter().enumerate() {
                if key != 0 && self.str(key).is_ok_and(|k| k == name) {
                    let set = self.u64_at(
                        array
                            .wrapping_add(l.values_items)
                            .wrapping_add((index as u64).wrapping_mul(8)),
                    )? != 0;
                    return Ok(set.then_some(AttrLocation::Values {
                        values,
                        index: index as u64,
                    }));
                }
            }
            Ok(None)
        };
        match self.storage(obj)? {
            Storage::None => Ok(None),
            Storage::Values { at, array, keys } => split(keys, at, array),
            Storage::Dict { at, dict } => {
                self.expect_kind(dict, self.types.dict, TPFLAGS_DICT_SUBCLASS, "dict")?;
                let keys = self.u64_at(dict.wrapping_add(l.dict_keys))?;
                let values = self.u64_at(dict.wrapping_add(l.dict_values))?;
                if values != 0 {
                    return split(keys, ValuesAt::DictValues { dict_at: at }, values);
                }
                let keys = self.keys(keys)?;
                for (index, (key, value)) in self.entries(&keys)?.into_iter().enumerate() {
                    if key != 0 && value != 0 && self.str(key).is_ok_and(|k| k == name) {
                        return Ok(Some(AttrLocation::DictEntry {
                            dict_at: at,
                            entry_index: index as u64,
                            key,
                        }));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Reads the value pointer at a location found by [`Self::attr_location`]; `None` if
    /// it no longer holds (the slot or value is empty, the entry's key changed).
    pub fn read_location(&self, obj: u64, location: &AttrLocation) -> Result<Option<u64>> {
        let l = self.layout;
        let value = match *location {
            AttrLocation::Slot { offset } => self.u64_at(obj.wrapping_add(offset))?,
            AttrLocation::Values { values, index } => {
                let array = match values {
                    ValuesAt::Inline { offset } => {
                        let array = obj.wrapping_add(offset).wrapping_sub(l.values_items);
                        if let ManagedDict::Inline { valid, .. } = l.instance_dict {
                            if self.u8_at(array.wrapping_add(valid))? == 0 {
                                return Ok(None);
                            }
                        }
                        array
                    }
                    ValuesAt::Pointer { at, bias } => {
                        let word = self.u64_at(obj.wrapping_add_signed(at))?;
                        // A tagged word without its tag is a dict pointer now.
                        if word == 0 || bias != 0 && word & 1 == 0 {
                            return Ok(None);
                        }
                        word.wrapping_add(bias)
                    }
                    ValuesAt::DictValues { dict_at } => {
                        let dict = self.u64_at(obj.wrapping_add_signed(dict_at))?;
                        self.u64_at(dict.wrapping_add(l.dict_values))?
                    }
                };
                if array == 0 {
                    return Ok(None);
                }
                self.u64_at(
                    array
                        .wrapping_add(l.values_items)
                        .wrapping_add(index.wrapping_mul(8)),
                )?
            }
            AttrLocation::DictEntry {
                dict_at,
                entry_index,
                key,
            } => {
                let dict = self.u64_at(obj.wrapping_add_signed(dict_at))?;
                let keys = self.keys(self.u64_at(dict.wrapping_add(l.dict_keys))?)?;
                if entry_index >= keys.nentries {
                    return Ok(None);
                }
                let entry = keys
                    .entries
                    .wrapping_add(entry_index.wrapping_mul(keys.entry_size));
                if self.u64_at(entry.wrapping_add(keys.entry_size).wrapping_sub(16))? != key {
                    return Ok(None);
                }
                self.u64_at(entry.wrapping_add(keys.entry_size).wrapping_sub(8))?
            }
        };
        Ok((value != 0).then_some(value))
    }

    /// The entry of attribute `name` in the key table `obj` keeps its attributes in (its
    /// class's shared keys, or its own dict's keys): `(interned name, entry index)`. Instances
    /// that insert their attributes in the same order share the index, which is what lets the
    /// kernel side read any instance's attribute in O(1), checking the entry's key.
    pub fn attr_entry(&self, obj: u64, name: &str) -> Result<Option<(u64, u64)>> {
        let keys = match self.storage(obj)? {
            Storage::None => return Ok(None),
            Storage::Values { keys, .. } => keys,
            Storage::Dict { dict, .. } => {
                self.expect_kind(dict, self.types.dict, TPFLAGS_DICT_SUBCLASS, "dict")?;
                self.u64_at(dict.wrapping_add(self.layout.dict_keys))?
            }
        };
        self.key_entry(keys, name)
    }

    /// [`Self::attr_entry`] for instances of `class` without one at hand: the entry in the
    /// class's cached (shared) keys, which the first instance's attributes filled in
    /// insertion order (and which a combined instance dict starts with, in the same order).
    pub fn class_attr_entry(&self, class: u64, name: &str) -> Result<Option<(u64, u64)>> {
        let keys = self.u64_at(class.wrapping_add(self.layout.heaptype_cached_keys))?;
        if keys == 0 {
            return Ok(None);
        }
        self.key_entry(keys, name)
    }

    fn key_entry(&self, keys: u64, name: &str) -> Result<Option<(u64, u64)>> {
        let keys = self.keys(keys)?;
        Ok(self
            .entries(&keys)?
            .into_iter()
            .enumerate()
            .find(|&(_, (key, _))| key != 0 && self.str(key).is_ok_and(|k| k == name))
            .map(|(index, (key, _))| (key, index as u64)))
    }

    /// The value of attribute `name` of instance `obj` (slots, split values, its dict).
    pub fn attr(&self, obj: u64, name: &str) -> Result<Option<u64>> {
        match self.attr_location(obj, name)? {
            Some(location) => self.read_location(obj, &location),
            None => Ok(None),
        }
    }

    /// An instance's attributes in its dict or values (not slots), `(name, value)` in
    /// insertion order.
    pub fn instance_attrs(&self, obj: u64) -> Result<Vec<(String, u64)>> {
        let items = match self.storage(obj)? {
            Storage::None => Vec::new(),
            Storage::Values { array, keys, .. } => self.split_items(keys, array)?,
            Storage::Dict { dict, .. } => self.dict_items(dict)?,
        };
        items
            .into_iter()
            .map(|(k, v)| Ok((self.str(k)?, v)))
            .collect()
    }

    /// A module's `__dict__`.
    pub fn module_dict(&self, module: u64) -> Result<u64> {
        self.expect_type(module, self.types.module, "module")?;
        self.u64_at(module.wrapping_add(self.layout.module_dict))
    }

    /// A class's `__dict__` (its own attributes, not inherited ones).
    pub fn class_dict(&self, class: u64) -> Result<u64> {
        let meta = self.type_of(class)?;
        if self.type_flags(meta)? & TPFLAGS_TYPE_SUBCLASS == 0 {
            return Err(ReadError::WrongType {
                addr: class,
                expected: "class",
            });
        }
        self.u64_at(class.wrapping_add(self.layout.type_dict))
    }
}
