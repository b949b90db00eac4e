//! Decoding CPython objects from a process's memory, by address.
//!
//! Target memory is untrusted and changes under us: every size is capped, every object's
//! type pointer is checked against the type we expect, and a failure is a [`ReadError`]
//! (counted by the caller), never a guess.

use std::io;

use super::{
    layout::{Bytecode, DictKeysSize, LongSize, ManagedDict, ThreadId, ValuesOrder},
    lines::{self, LineRange},
    Layout,
};
use crate::inspect::memory::{ProcessMemory, MAX_READ};

/// Longest string, tuple, list, dict, set or deque we decode; anything bigger is treated as
/// corrupt.
const MAX_ITEMS: u64 = 1 << 20;
/// Deepest Python stack we walk.
const MAX_FRAMES: usize = 1024;
/// Most thread states we follow.
const MAX_THREADS: usize = 4096;
/// Longest base-class chain or MRO we follow.
const MAX_BASES: usize = 64;
/// Longest type name we read (`tp_name` is a C string).
const MAX_TYPE_NAME: usize = 256;
/// Where the kernel tid may sit in glibc's thread descriptor (3.10's calibration scan).
const MAX_PTHREAD_SCAN: usize = 4096;
/// `tp_flags` bits for the builtin kinds whose subclasses share their layout (stable since
/// Python 3.0; not per version).
const TPFLAGS_LONG_SUBCLASS: u64 = 1 << 24;
const TPFLAGS_LIST_SUBCLASS: u64 = 1 << 25;
const TPFLAGS_DICT_SUBCLASS: u64 = 1 << 29;
/// `Py_TPFLAGS_HEAPTYPE`: a class made by a class statement (only those have `__slots__`).
const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
/// `Py_TPFLAGS_TYPE_SUBCLASS`: the object is a class (its type derives from `type`).
const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;
/// `tp_name` of `collections.deque`, whose type object is not exported.
const DEQUE_TYPE_NAME: &str = "collections.deque";

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("remote read at {addr:#x} failed: {source}")]
    Memory { addr: u64, source: io::Error },
    #[error("object at {addr:#x} is not a {expected}")]
    WrongType { addr: u64, expected: &'static str },
    #[error("object at {addr:#x} is corrupt: {what}")]
    Corrupt { addr: u64, what: String },
    #[error("int at {addr:#x} does not fit in 64 bits")]
    TooBig { addr: u64 },
}

pub type Result<T> = std::result::Result<T, ReadError>;

fn corrupt(addr: u64, what: impl Into<String>) -> ReadError {
    ReadError::Corrupt {
        addr,
        what: what.into(),
    }
}

/// Addresses of the builtin type objects and singletons, from the interpreter's dynamic
/// symbols, so each decoded object's `ob_type` can be checked.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypeAddrs {
    pub str: u64,
    pub dict: u64,
    pub tuple: u64,
    pub module: u64,
    pub function: u64,
    pub code: u64,
    pub int: u64,
    pub float: u64,
    pub bool: u64,
    pub list: u64,
    pub set: u64,
    pub frozenset: u64,
    pub bytes: u64,
    pub member_descr: u64,
    /// `type`, the metatype.
    pub type_: u64,
    /// `None`, `True`, `False`: the objects themselves.
    pub none: u64,
    pub true_: u64,
    pub false_: u64,
}

/// What the tracer needs of a code object.
#[derive(Clone, Debug)]
pub struct Code {
    pub addr: u64,
    /// `co_qualname`, or `co_name` on 3.10 (whose code objects have no qualified name).
    pub qualname: String,
    pub names: Vec<String>,
    /// The instructions as they are now (possibly specialized), and where they live.
    pub bytecode: Vec<u8>,
    pub bytecode_addr: u64,
    /// Source lines of the instructions, as `co_lines()` gives them.
    pub lines: Vec<LineRange>,
}

/// A thread known to the interpreter.
#[derive(Clone, Copy, Debug)]
pub struct ThreadState {
    pub addr: u64,
    pub native_thread_id: u64,
}

/// One frame of a thread's Python stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The `_PyInterpreterFrame` (3.10: `PyFrameObject`).
    pub addr: u64,
    /// Its code object (on 3.12+ the entry shim's frames hold other objects: check the type).
    pub code: u64,
}

/// Where an attribute's value pointer lives, so it can be re-read later (e.g. by the eBPF
/// side at a probe hit) without walking the class again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrLocation {
    /// A `__slots__` member: the pointer is at `obj.wrapping_add(offset)` in every instance of the class.
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
    /// `PyDictValues`; `values[]` is [`Layout::values_items`] into it.
    Pointer { at: i64, bias: u64 },
    /// `ma_values` of the dict whose pointer is at `obj + dict_at`.
    DictValues { dict_at: i64 },
}

/// A decoded object graph, for inspection and tests.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An int beyond 64 bits.
    BigInt,
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Set(Vec<Value>),
    Deque(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An instance with attributes: its type's `tp_name` and its attributes in storage order.
    Object {
        type_name: String,
        attrs: Vec<(String, Value)>,
    },
    /// Anything else, or beyond the depth limit: its type's `tp_name`.
    Other {
        type_name: String,
    },
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

/// A dict keys table, as read.
struct Keys {
    nentries: u64,
    entry_size: u64,
    entries: u64,
}

pub struct PyReader<'a, M: ProcessMemory> {
    pub mem: &'a M,
    pub layout: &'static Layout,
    pub types: TypeAddrs,
}

impl<'a, M: ProcessMemory> PyReader<'a, M> {
    pub fn new(mem: &'a M, layout: &'static Layout, types: TypeAddrs) -> Self {
        Self { mem, layout, types }
    }

    fn u64_at(&self, addr: u64) -> Result<u64> {
        self.mem
            .read_u64(addr)
            .map_err(|source| ReadError::Memory { addr, source })
    }

    fn u32_at(&self, addr: u64) -> Result<u32> {
        self.mem
            .read_u32(addr)
            .map_err(|source| ReadError::Memory { addr, source })
    }

    fn u8_at(&self, addr: u64) -> Result<u8> {
        Ok(self.bytes_at(addr, 1)?[0])
    }

    fn bytes_at(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        self.mem
            .read_bytes(addr, len)
            .map_err(|source| ReadError::Memory { addr, source })
    }

    /// `n` pointer-sized words from `addr`, in reads of at most [`MAX_READ`] bytes.
    fn words_at(&self, addr: u64, n: u64) -> Result<Vec<u64>> {
        if n > MAX_ITEMS * 3 {
            return Err(corrupt(addr, format!("{n} words")));
        }
        let mut words = Vec::with_capacity(n as usize);
        let per_read = (MAX_READ / 8) as u64;
        let mut done = 0;
        while done < n {
            let chunk = (n - done).min(per_read);
            let raw = self.bytes_at(addr.wrapping_add(done * 8), chunk as usize * 8)?;
            words.extend(
                raw.chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes"))),
            );
            done += chunk;
        }
        Ok(words)
    }

    pub fn type_of(&self, obj: u64) -> Result<u64> {
        if obj == 0 {
            return Err(corrupt(obj, "NULL object"));
        }
        self.u64_at(obj.wrapping_add(self.layout.object_type))
    }

    /// `obj`'s type, checked to be a class: an instance of `type` or of a metaclass
    /// deriving from it. A pointer into the middle of an object fails here.
    fn class_of(&self, obj: u64) -> Result<u64> {
        let ty = self.type_of(obj)?;
        let mut meta = self.type_of(ty)?;
        for _ in 0..MAX_BASES {
            if meta == self.types.type_ {
                return Ok(ty);
            }
            if meta == 0 {
                break;
            }
            meta = self.u64_at(meta.wrapping_add(self.layout.type_base))?;
        }
        Err(ReadError::WrongType {
            addr: obj,
            expected: "object (its type is not a class)",
        })
    }

    fn type_flags(&self, ty: u64) -> Result<u64> {
        self.u64_at(ty.wrapping_add(self.layout.type_flags))
    }

    fn expect_type(&self, obj: u64, ty: u64, expected: &'static str) -> Result<()> {
        if obj == 0 || self.type_of(obj)? != ty {
            return Err(ReadError::WrongType {
                addr: obj,
                expected,
            });
        }
        Ok(())
    }

    /// `obj` is an instance of `ty` or of a subclass that the fast subclass bit `flag` marks.
    fn expect_kind(&self, obj: u64, ty: u64, flag: u64, expected: &'static str) -> Result<()> {
        let actual = self.type_of(obj)?;
        if actual == ty || self.type_flags(self.class_of(obj)?)? & flag != 0 {
            return Ok(());
        }
        Err(ReadError::WrongType {
            addr: obj,
            expected,
        })
    }

    /// `obj`'s type is `base` or derives from it (through `tp_base`).
    fn expect_subtype(&self, obj: u64, base: u64, expected: &'static str) -> Result<()> {
        let mut ty = self.class_of(obj)?;
        for _ in 0..MAX_BASES {
            if ty == base {
                return Ok(());
            }
            if ty == 0 {
                break;
            }
            ty = self.u64_at(ty.wrapping_add(self.layout.type_base))?;
        }
        Err(ReadError::WrongType {
            addr: obj,
            expected,
        })
    }

    fn var_size(&self, obj: u64) -> Result<u64> {
        let size = self.u64_at(obj.wrapping_add(self.layout.var_size))?;
        if size > MAX_ITEMS {
            return Err(corrupt(obj, format!("size {size}")));
        }
        Ok(size)
    }

    /// A type's `tp_name` (for heap types the bare class name; for builtins e.g.
    /// `collections.deque`).
    pub fn type_name(&self, ty: u64) -> Result<String> {
        let name = self.u64_at(ty.wrapping_add(self.layout.type_name))?;
        // Read up to the NUL without crossing into an unmapped page: stop at the page end.
        let mut out = Vec::new();
        let mut at = name;
        while out.len() < MAX_TYPE_NAME {
            let page_left = (0x1000 - (at & 0xfff)) as usize;
            let chunk = self.bytes_at(at, page_left.min(MAX_TYPE_NAME - out.len()))?;
            if let Some(end) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return String::from_utf8(out).map_err(|_| corrupt(ty, "tp_name not UTF-8"));
            }
            at = at.wrapping_add(chunk.len() as u64);
            out.extend(chunk);
        }
        Err(corrupt(ty, "tp_name too long"))
    }

    /// A `str` object's text (compact strings: every string CPython creates since 3.3 but
    /// the legacy C-API ones).
    pub fn str(&self, obj: u64) -> Result<String> {
        self.str_prefix(obj, MAX_ITEMS).map(|(text, _)| text)
    }

    /// The first `max_chars` characters of a `str` (only they are read from the target),
    /// and its whole length in characters.
    pub fn str_prefix(&self, obj: u64, max_chars: u64) -> Result<(String, u64)> {
        self.expect_type(obj, self.types.str, "str")?;
        let l = self.layout;
        let len = self.u64_at(obj.wrapping_add(l.unicode_length))?;
        if len > MAX_ITEMS {
            return Err(corrupt(obj, format!("str length {len}")));
        }
        let state = self.u32_at(obj.wrapping_add(l.unicode_state))?;
        let (kind, compact, ascii) = (
            (state >> 2) & 7,
            (state >> 5) & 1 == 1,
            (state >> 6) & 1 == 1,
        );
        if !compact {
            return Err(corrupt(obj, "non-compact str"));
        }
        let data = obj
            + if ascii {
                l.unicode_ascii_data
            } else {
                l.unicode_compact_data
            };
        let chars = len.min(max_chars);
        let bytes = self.bytes_at(data, chars as usize * kind as usize)?;
        let bad = || corrupt(obj, "bad characters");
        let text = match kind {
            1 if ascii => String::from_utf8(bytes).map_err(|_| bad()),
            1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            2 => char::decode_utf16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_ne_bytes([c[0], c[1]])),
            )
            .collect::<std::result::Result<String, _>>()
            .map_err(|_| bad()),
            4 => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
                .ok_or_else(bad),
            _ => Err(corrupt(obj, format!("str kind {kind}"))),
        }?;
        Ok((text, len))
    }

    /// An `int` (or a subclass's, e.g. `bool` or an `IntEnum` member) value; ints beyond
    /// 64 bits are [`ReadError::TooBig`].
    pub fn int(&self, obj: u64) -> Result<i64> {
        self.expect_kind(obj, self.types.int, TPFLAGS_LONG_SUBCLASS, "int")?;
        let l = self.layout;
        let (negative, ndigits) = match l.long_size {
            LongSize::ObSize => {
                let size = self.u64_at(obj.wrapping_add(l.var_size))? as i64;
                (size < 0, size.unsigned_abs())
            }
            LongSize::Tag {
                offset,
                non_size_bits,
            } => {
                let tag = self.u64_at(obj.wrapping_add(offset))?;
                let n = tag >> non_size_bits;
                match tag & 3 {
                    0 if n > 0 => (false, n),
                    1 if n == 0 => (false, 0),
                    2 if n > 0 => (true, n),
                    _ => return Err(corrupt(obj, format!("int tag {tag:#x}"))),
                }
            }
        };
        // Three 30-bit digits hold 90 bits; a normalized int with more is beyond i64.
        if ndigits > 3 {
            return Err(if ndigits > MAX_ITEMS {
                corrupt(obj, format!("{ndigits} digits"))
            } else {
                ReadError::TooBig { addr: obj }
            });
        }
        let raw = self.bytes_at(obj.wrapping_add(l.long_digits), ndigits as usize * 4)?;
        let mut magnitude: u128 = 0;
        for (i, c) in raw.chunks_exact(4).enumerate() {
            let digit = u32::from_ne_bytes(c.try_into().expect("4 bytes"));
            if u64::from(digit) >> l.long_shift != 0 {
                return Err(corrupt(obj, format!("int digit {digit:#x}")));
            }
            magnitude |= u128::from(digit) << (l.long_shift * i as u64);
        }
        let value = if negative {
            -i128::try_from(magnitude).map_err(|_| ReadError::TooBig { addr: obj })?
        } else {
            i128::try_from(magnitude).map_err(|_| ReadError::TooBig { addr: obj })?
        };
        i64::try_from(value).map_err(|_| ReadError::TooBig { addr: obj })
    }

    /// A `float` (or subclass) value.
    pub fn float(&self, obj: u64) -> Result<f64> {
        self.expect_subtype(obj, self.types.float, "float")?;
        Ok(f64::from_bits(
            self.u64_at(obj.wrapping_add(self.layout.float_value))?,
        ))
    }

    /// `True` or `False` (the two singletons).
    pub fn bool(&self, obj: u64) -> Result<bool> {
        match obj {
            _ if obj == self.types.true_ && obj != 0 => Ok(true),
            _ if obj == self.types.false_ && obj != 0 => Ok(false),
            _ => Err(ReadError::WrongType {
                addr: obj,
                expected: "bool",
            }),
        }
    }

    /// Whether `obj` is `None`.
    pub fn is_none(&self, obj: u64) -> bool {
        obj != 0 && obj == self.types.none
    }

    /// The items of a `tuple`.
    pub fn tuple(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_type(obj, self.types.tuple, "tuple")?;
        let n = self.var_size(obj)?;
        self.words_at(obj.wrapping_add(self.layout.tuple_items), n)
    }

    /// The items of a `list` (or subclass).
    pub fn list_items(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_kind(obj, self.types.list, TPFLAGS_LIST_SUBCLASS, "list")?;
        let n = self.var_size(obj)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let items = self.u64_at(obj.wrapping_add(self.layout.list_items))?;
        self.words_at(items, n)
    }

    /// The items of a `collections.deque` (or subclass, e.g. vLLM's request queues), left
    /// to right.
    pub fn deque_items(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_deque(obj)?;
        let d = self.layout.deque;
        let n = self.var_size(obj)?;
        let mut block = self.u64_at(obj.wrapping_add(d.leftblock))?;
        let mut index = self.u64_at(obj.wrapping_add(d.leftindex))?;
        let (rightblock, rightindex) = (
            self.u64_at(obj.wrapping_add(d.rightblock))?,
            self.u64_at(obj.wrapping_add(d.rightindex))?,
        );
        if index >= d.block_len {
            return Err(corrupt(obj, format!("deque leftindex {index}")));
        }
        let mut items = Vec::with_capacity(n as usize);
        while (items.len() as u64) < n {
            if block == 0 {
                return Err(corrupt(obj, "deque ends early"));
            }
            let take = (d.block_len - index).min(n - items.len() as u64);
            items.extend(
                self.words_at(
                    block
                        .wrapping_add(d.block_data)
                        .wrapping_add(index.wrapping_mul(8)),
                    take,
                )?,
            );
            if (items.len() as u64) < n {
                block = self.u64_at(block.wrapping_add(d.block_rightlink))?;
                index = 0;
            } else {
                index += take;
            }
        }
        // The walk must end where the deque says its right end is, or it changed under us.
        if n > 0 && (block != rightblock || index - 1 != rightindex) {
            return Err(corrupt(obj, "deque changed while read"));
        }
        Ok(items)
    }

    fn expect_deque(&self, obj: u64) -> Result<()> {
        let mut ty = self.class_of(obj)?;
        for _ in 0..MAX_BASES {
            if ty == 0 {
                break;
            }
            if self.type_name(ty)? == DEQUE_TYPE_NAME {
                return Ok(());
            }
            ty = self.u64_at(ty.wrapping_add(self.layout.type_base))?;
        }
        Err(ReadError::WrongType {
            addr: obj,
            expected: "deque",
        })
    }

    /// The items of a `set` or `frozenset` (or subclass), in table order.
    pub fn set_items(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_subtype(obj, self.types.set, "set")
            .or_else(|_| self.expect_subtype(obj, self.types.frozenset, "set"))?;
        let l = self.layout;
        let used = self.u64_at(obj.wrapping_add(l.set_used))?;
        let mask = self.u64_at(obj.wrapping_add(l.set_mask))?;
        if used > MAX_ITEMS || mask >= MAX_ITEMS * 2 || !(mask + 1).is_power_of_two() {
            return Err(corrupt(obj, format!("set used {used}, mask {mask:#x}")));
        }
        let table = self.u64_at(obj.wrapping_add(l.set_table))?;
        let words_per_entry = l.set_entry_size / 8;
        let words = self.words_at(table, (mask + 1) * words_per_entry)?;
        let hash_word = (l.set_entry_hash / 8) as usize;
        // Deleted entries keep a dummy key with hash -1 (no real hash is -1).
        let items: Vec<u64> = words
            .chunks_exact(words_per_entry as usize)
            .filter(|e| e[0] != 0 && e[hash_word] as i64 != -1)
            .map(|e| e[0])
            .collect();
        if items.len() as u64 != used {
            return Err(corrupt(obj, "set changed while read"));
        }
        Ok(items)
    }

    fn keys(&self, keys: u64) -> Result<Keys> {
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
    fn entries(&self, keys: &Keys) -> Result<Vec<(u64, u64)>> {
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
    fn split_items(&self, keys: u64, values: u64) -> Result<Vec<(u64, u64)>> {
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

    /// A Python function's code object.
    pub fn function_code(&self, func: u64) -> Result<u64> {
        self.expect_type(func, self.types.function, "function")?;
        self.u64_at(func.wrapping_add(self.layout.func_code))
    }

    /// A `bytes` object's contents.
    pub fn bytes(&self, obj: u64) -> Result<Vec<u8>> {
        self.expect_type(obj, self.types.bytes, "bytes")?;
        let n = self.var_size(obj)?;
        self.bytes_at(obj.wrapping_add(self.layout.bytes_data), n as usize)
    }

    pub fn code(&self, addr: u64) -> Result<Code> {
        self.expect_type(addr, self.types.code, "code")?;
        let l = self.layout;
        let (bytecode_addr, bytecode) = match l.code_bytecode {
            Bytecode::Adaptive(offset) => {
                let units = self.var_size(addr)?;
                (
                    addr.wrapping_add(offset),
                    self.bytes_at(addr.wrapping_add(offset), units as usize * 2)?,
                )
            }
            Bytecode::Bytes(field) => {
                let bytes = self.u64_at(addr.wrapping_add(field))?;
                (bytes.wrapping_add(l.bytes_data), self.bytes(bytes)?)
            }
        };
        let names = self
            .tuple(self.u64_at(addr.wrapping_add(l.code_names))?)?
            .into_iter()
            .map(|n| self.str(n))
            .collect::<Result<_>>()?;
        let qualname = self.u64_at(addr.wrapping_add(l.code_qualname.unwrap_or(l.code_name)))?;
        let firstlineno = self.u32_at(addr.wrapping_add(l.code_firstlineno))? as i32;
        let linetable = self.bytes(self.u64_at(addr.wrapping_add(l.code_linetable))?)?;
        Ok(Code {
            addr,
            qualname: self.str(qualname)?,
            names,
            bytecode,
            bytecode_addr,
            lines: lines::lines(l.code_linetable_format, firstlineno, &linetable),
        })
    }

    /// The names of a code object's frame slots (locals first, then cells and free
    /// variables from 3.11; only the plain locals on 3.10).
    pub fn local_names(&self, code: u64) -> Result<Vec<String>> {
        self.expect_type(code, self.types.code, "code")?;
        let l = self.layout;
        let n = u64::from(self.u32_at(code.wrapping_add(l.code_nlocalsplus))?);
        let names = self.tuple(self.u64_at(code.wrapping_add(l.code_localsplusnames))?)?;
        if n > names.len() as u64 {
            return Err(corrupt(code, format!("{n} locals, {} names", names.len())));
        }
        names[..n as usize].iter().map(|&k| self.str(k)).collect()
    }

    /// The slot in frames of `code` where their value stack starts: past the locals (on 3.10
    /// also past cell and free variables, which this does not count: a function with those
    /// gets a slot that holds no stack value).
    pub fn stack_base(&self, code: u64) -> Result<u64> {
        Ok(self.local_names(code)?.len() as u64)
    }

    /// The slot of local variable `name` in frames of `code`: its value pointer is at
    /// `frame + layout.frame_localsplus + 8 * index`.
    pub fn local_index(&self, code: u64, name: &str) -> Result<Option<u64>> {
        Ok(self
            .local_names(code)?
            .iter()
            .position(|n| n == name)
            .map(|i| i as u64))
    }

    /// A frame's local variables, `(name, value)`, those set (non-NULL) only. Cell
    /// variables are their cell objects.
    pub fn frame_locals(&self, frame: u64) -> Result<Vec<(String, u64)>> {
        let l = self.layout;
        let code = self.frame_ref(frame.wrapping_add(l.frame_code))?;
        let names = self.local_names(code)?;
        let values = self.words_at(frame.wrapping_add(l.frame_localsplus), names.len() as u64)?;
        Ok(names
            .into_iter()
            .zip(values.into_iter().map(|v| v & !l.stackref_tag_bits))
            .filter(|&(_, v)| v != 0)
            .collect())
    }

    /// The object a frame's slot at `addr` refers to (`f_executable`, a `localsplus`
    /// entry): a plain pointer, or from 3.14 a `_PyStackRef` whose tag bits are cleared.
    pub fn frame_ref(&self, addr: u64) -> Result<u64> {
        Ok(self.u64_at(addr)? & !self.layout.stackref_tag_bits)
    }

    fn main_interpreter(&self, runtime: u64) -> Result<u64> {
        let interp = self.u64_at(runtime.wrapping_add(self.layout.runtime_interpreters_head))?;
        if interp == 0 {
            return Err(corrupt(runtime, "no interpreter"));
        }
        Ok(interp)
    }

    /// Every thread state of the main interpreter, given `_PyRuntime`'s address.
    pub fn threads(&self, runtime: u64) -> Result<Vec<ThreadState>> {
        let l = self.layout;
        let interp = self.main_interpreter(runtime)?;
        let mut tstate = self.u64_at(interp.wrapping_add(l.interp_threads_head))?;
        let mut states = Vec::new();
        while tstate != 0 && states.len() < MAX_THREADS {
            let id = match l.tstate_thread_id {
                ThreadId::Native(offset) | ThreadId::Pthread(offset) => {
                    self.u64_at(tstate.wrapping_add(offset))?
                }
            };
            states.push((tstate, id));
            tstate = self.u64_at(tstate.wrapping_add(l.tstate_next))?;
        }
        let tid_offset = match l.tstate_thread_id {
            ThreadId::Native(_) => None,
            ThreadId::Pthread(_) => Some(self.pthread_tid_offset(runtime)?),
        };
        states
            .into_iter()
            .map(|(addr, id)| {
                let native_thread_id = match tid_offset {
                    None => id,
                    Some(offset) => u64::from(self.u32_at(id.wrapping_add(offset))?),
                };
                Ok(ThreadState {
                    addr,
                    native_thread_id,
                })
            })
            .collect()
    }

    /// Where glibc keeps the kernel tid in its thread descriptor (the `pthread_t` points at
    /// it): the first 4-byte word of the main thread's descriptor that equals the pid, the
    /// main thread's tid.
    fn pthread_tid_offset(&self, runtime: u64) -> Result<u64> {
        let pid = self
            .mem
            .pid()
            .ok_or_else(|| corrupt(runtime, "thread ids need a live process"))?;
        let main = self.u64_at(runtime.wrapping_add(self.layout.runtime_main_thread))?;
        // Page by page: the descriptor can sit less than the scan's length before the end of
        // its mapping (3 520 bytes here once), and the tid is near its start.
        let mut raw = Vec::with_capacity(MAX_PTHREAD_SCAN);
        while raw.len() < MAX_PTHREAD_SCAN {
            let at = main.wrapping_add(raw.len() as u64);
            let page_left = (0x1000 - (at & 0xfff)) as usize;
            match self.bytes_at(at, page_left.min(MAX_PTHREAD_SCAN - raw.len())) {
                Ok(chunk) => raw.extend_from_slice(&chunk),
                Err(e) if raw.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        raw.chunks_exact(4)
            .position(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")) == pid)
            .map(|i| i as u64 * 4)
            .ok_or_else(|| corrupt(main, "no tid in the main thread's descriptor"))
    }

    /// `sys.modules` of the main interpreter.
    pub fn sys_modules(&self, runtime: u64) -> Result<u64> {
        let interp = self.main_interpreter(runtime)?;
        self.u64_at(interp.wrapping_add(self.layout.interp_modules))
    }

    /// A thread's current frame (0 if it runs no Python code).
    pub fn current_frame(&self, thread: &ThreadState) -> Result<u64> {
        let mut frame = thread.addr;
        for offset in self.layout.tstate_current_frame {
            if frame == 0 {
                return Ok(0);
            }
            frame = self.u64_at(frame.wrapping_add(*offset))?;
        }
        Ok(frame)
    }

    /// A thread's Python stack, innermost first.
    pub fn frames(&self, thread: &ThreadState) -> Result<Vec<Frame>> {
        let l = self.layout;
        let mut frame = self.current_frame(thread)?;
        let mut frames = Vec::new();
        while frame != 0 && frames.len() < MAX_FRAMES {
            frames.push(Frame {
                addr: frame,
                code: self.frame_ref(frame.wrapping_add(l.frame_code))?,
            });
            frame = self.u64_at(frame.wrapping_add(l.frame_previous))?;
        }
        Ok(frames)
    }

    /// Code object addresses on a thread's Python stack, innermost first.
    pub fn stack(&self, thread: &ThreadState) -> Result<Vec<u64>> {
        Ok(self.frames(thread)?.into_iter().map(|f| f.code).collect())
    }

    /// Decodes an object graph down to `depth` levels of containers and instances.
    pub fn value(&self, obj: u64, depth: u32) -> Result<Value> {
        let t = &self.types;
        if self.is_none(obj) {
            return Ok(Value::None);
        }
        if let Ok(b) = self.bool(obj) {
            return Ok(Value::Bool(b));
        }
        let ty = self.class_of(obj)?;
        let many = |items: Vec<u64>| -> Result<Vec<Value>> {
            items
                .into_iter()
                .map(|i| self.value(i, depth - 1))
                .collect()
        };
        let flags = self.type_flags(ty)?;
        if ty == t.str {
            return Ok(Value::Str(self.str(obj)?));
        }
        if ty == t.int || flags & TPFLAGS_LONG_SUBCLASS != 0 {
            return match self.int(obj) {
                Ok(v) => Ok(Value::Int(v)),
                Err(ReadError::TooBig { .. }) => Ok(Value::BigInt),
                Err(e) => Err(e),
            };
        }
        if ty == t.float {
            return Ok(Value::Float(self.float(obj)?));
        }
        let type_name = self.type_name(ty)?;
        if depth == 0 {
            return Ok(Value::Other { type_name });
        }
        if ty == t.tuple {
            return Ok(Value::Tuple(many(self.tuple(obj)?)?));
        }
        if ty == t.list {
            return Ok(Value::List(many(self.list_items(obj)?)?));
        }
        if ty == t.set || ty == t.frozenset {
            return Ok(Value::Set(many(self.set_items(obj)?)?));
        }
        if ty == t.dict {
            return Ok(Value::Dict(
                self.dict_items(obj)?
                    .into_iter()
                    .map(|(k, v)| Ok((self.value(k, depth - 1)?, self.value(v, depth - 1)?)))
                    .collect::<Result<_>>()?,
            ));
        }
        if self.expect_deque(obj).is_ok() {
            return Ok(Value::Deque(many(self.deque_items(obj)?)?));
        }
        let mut attrs = Vec::new();
        let stored = self
            .slots(obj)?
            .into_iter()
            .chain(self.instance_attrs(obj)?);
        for (name, value) in stored {
            attrs.push((name, self.value(value, depth - 1)?));
        }
        if attrs.is_empty() {
            return Ok(Value::Other { type_name });
        }
        Ok(Value::Object { type_name, attrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{cpython::layout, memory::Snapshot};

    const STR_TYPE: u64 = 0x9000;

    /// A compact str object as 3.12 lays it out, at `addr`.
    fn str_object(layout: &Layout, addr: u64, text: &str) -> (u64, Vec<u8>) {
        let ascii = text.is_ascii();
        let units: Vec<u16> = text.encode_utf16().collect();
        let (kind, data): (u32, Vec<u8>) = if ascii {
            (1, text.as_bytes().to_vec())
        } else {
            (2, units.iter().flat_map(|u| u.to_ne_bytes()).collect())
        };
        let header = if ascii {
            layout.unicode_ascii_data
        } else {
            layout.unicode_compact_data
        } as usize;
        let mut bytes = vec![0u8; header + data.len() + 2];
        bytes[layout.object_type as usize..][..8].copy_from_slice(&STR_TYPE.to_ne_bytes());
        bytes[layout.unicode_length as usize..][..8]
            .copy_from_slice(&(units.len() as u64).to_ne_bytes());
        let state = kind << 2 | 1 << 5 | u32::from(ascii) << 6;
        bytes[layout.unicode_state as usize..][..4].copy_from_slice(&state.to_ne_bytes());
        bytes[header..][..data.len()].copy_from_slice(&data);
        (addr, bytes)
    }

    #[test]
    fn decodes_compact_strings_and_checks_their_type() {
        let layout = layout::for_version((3, 12)).unwrap();
        let mem = Snapshot {
            regions: vec![
                str_object(layout, 0x1000, "EngineCore.step"),
                str_object(layout, 0x2000, "réquête"),
            ],
        };
        let reader = PyReader::new(
            &mem,
            layout,
            TypeAddrs {
                str: STR_TYPE,
                ..Default::default()
            },
        );
        assert_eq!(reader.str(0x1000).unwrap(), "EngineCore.step");
        assert_eq!(reader.str(0x2000).unwrap(), "réquête");
        let wrong = PyReader::new(
            &mem,
            layout,
            TypeAddrs {
                str: STR_TYPE + 8,
                ..Default::default()
            },
        );
        assert!(matches!(
            wrong.str(0x1000),
            Err(ReadError::WrongType {
                expected: "str",
                ..
            })
        ));
        assert!(matches!(reader.str(0x5000), Err(ReadError::Memory { .. })));
    }

    /// Memory being built for a test: zeroed regions with words written into them.
    #[derive(Default)]
    struct Mem(Vec<(u64, Vec<u8>)>);

    impl Mem {
        fn region(&mut self, addr: u64, len: usize) -> &mut Self {
            self.0.push((addr, vec![0; len]));
            self
        }

        fn put(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
            let (start, region) = self
                .0
                .iter_mut()
                .find(|(s, r)| *s <= addr && addr + bytes.len() as u64 <= s + r.len() as u64)
                .expect("inside a region");
            let at = (addr - *start) as usize;
            region[at..at + bytes.len()].copy_from_slice(bytes);
            self
        }

        fn word(&mut self, addr: u64, value: u64) -> &mut Self {
            self.put(addr, &value.to_ne_bytes())
        }

        fn snapshot(&self) -> Snapshot {
            Snapshot {
                regions: self.0.clone(),
            }
        }
    }

    const TYPE_TYPE: u64 = 0xa000;
    const INT_TYPE: u64 = 0xa400;
    const DEQUE_TYPE: u64 = 0xa800;
    const SET_TYPE: u64 = 0xac00;

    /// `type`, and classes `int`, `set` and `collections.deque` (by name, as in a real
    /// process where the deque type is not exported).
    fn types(l: &Layout, mem: &mut Mem) -> TypeAddrs {
        mem.region(TYPE_TYPE, 0x1000).region(0xb000, 0x1000);
        mem.put(0xb000, b"collections.deque\0");
        for ty in [TYPE_TYPE, INT_TYPE, DEQUE_TYPE, SET_TYPE] {
            mem.word(ty + l.object_type, TYPE_TYPE);
        }
        mem.word(TYPE_TYPE + l.type_flags, TPFLAGS_TYPE_SUBCLASS)
            .word(INT_TYPE + l.type_flags, TPFLAGS_LONG_SUBCLASS)
            .word(DEQUE_TYPE + l.type_name, 0xb000);
        TypeAddrs {
            int: INT_TYPE,
            set: SET_TYPE,
            type_: TYPE_TYPE,
            ..Default::default()
        }
    }

    /// An int at `addr` with the given sign (-1, 0, 1) and 30-bit digits, low first.
    fn int_object(l: &Layout, mem: &mut Mem, addr: u64, sign: i64, digits: &[u32]) {
        mem.region(addr, 64).word(addr + l.object_type, INT_TYPE);
        match l.long_size {
            LongSize::ObSize => mem.word(addr + l.var_size, (sign * digits.len() as i64) as u64),
            LongSize::Tag {
                offset,
                non_size_bits,
            } => mem.word(
                addr + offset,
                (digits.len() as u64) << non_size_bits | (1 - sign) as u64,
            ),
        };
        for (i, d) in digits.iter().enumerate() {
            mem.put(addr + l.long_digits + 4 * i as u64, &d.to_ne_bytes());
        }
    }

    #[test]
    fn ints_of_both_size_encodings() {
        const MASK: u32 = (1 << 30) - 1;
        for version in [(3, 11), (3, 12)] {
            let l = layout::for_version(version).unwrap();
            let mut mem = Mem::default();
            let types = types(l, &mut mem);
            int_object(l, &mut mem, 0x1000, 0, &[]);
            int_object(l, &mut mem, 0x1100, -1, &[5]);
            int_object(l, &mut mem, 0x1200, 1, &[12345, 0, 4]); // 2**62 + 12345
            int_object(l, &mut mem, 0x1300, -1, &[0, 0, 8]); // -2**63
            int_object(l, &mut mem, 0x1400, 1, &[0, 0, 8]); // 2**63
            int_object(l, &mut mem, 0x1500, 1, &[1, 0, 0, 1]); // 2**90 + 1
            int_object(l, &mut mem, 0x1600, 1, &[MASK + 1]); // a digit out of range
            let snapshot = mem.snapshot();
            let r = PyReader::new(&snapshot, l, types);
            assert_eq!(r.int(0x1000).unwrap(), 0);
            assert_eq!(r.int(0x1100).unwrap(), -5);
            assert_eq!(r.int(0x1200).unwrap(), (1 << 62) + 12345);
            assert_eq!(r.int(0x1300).unwrap(), i64::MIN);
            for too_big in [0x1400, 0x1500] {
                assert!(matches!(r.int(too_big), Err(ReadError::TooBig { .. })));
            }
            assert!(matches!(r.int(0x1600), Err(ReadError::Corrupt { .. })));
        }
        // 3.12's tag: sign 3 does not exist.
        let l = layout::for_version((3, 12)).unwrap();
        let mut mem = Mem::default();
        let types = types(l, &mut mem);
        int_object(l, &mut mem, 0x1000, 1, &[7]);
        let LongSize::Tag { offset, .. } = l.long_size else {
            unreachable!()
        };
        mem.word(0x1000 + offset, 1 << 3 | 3);
        let snapshot = mem.snapshot();
        let r = PyReader::new(&snapshot, l, types);
        assert!(matches!(r.int(0x1000), Err(ReadError::Corrupt { .. })));
    }

    #[test]
    fn deque_across_blocks_and_torn_deques() {
        let l = layout::for_version((3, 12)).unwrap();
        let d = l.deque;
        let block_size = (d.block_rightlink + 8) as usize;
        let build = |rightindex: u64| {
            let mut mem = Mem::default();
            let types = types(l, &mut mem);
            let (deque, left, right) = (0x1000, 0x2000, 0x3000);
            mem.region(deque, 64)
                .region(left, block_size)
                .region(right, block_size);
            mem.word(deque + l.object_type, DEQUE_TYPE)
                .word(deque + l.var_size, 5)
                .word(deque + d.leftblock, left)
                .word(deque + d.rightblock, right)
                .word(deque + d.leftindex, d.block_len - 2)
                .word(deque + d.rightindex, rightindex)
                .word(left + d.block_rightlink, right);
            for (i, item) in [0xe1, 0xe2].into_iter().enumerate() {
                mem.word(left + d.block_data + 8 * (d.block_len - 2 + i as u64), item);
            }
            for (i, item) in [0xe3, 0xe4, 0xe5].into_iter().enumerate() {
                mem.word(right + d.block_data + 8 * i as u64, item);
            }
            (mem.snapshot(), types)
        };
        let (snapshot, types) = build(2);
        let r = PyReader::new(&snapshot, l, types);
        assert_eq!(
            r.deque_items(0x1000).unwrap(),
            [0xe1, 0xe2, 0xe3, 0xe4, 0xe5]
        );
        // The right end moved while we read: refused, not a wrong list.
        let (snapshot, types) = build(3);
        let r = PyReader::new(&snapshot, l, types);
        assert!(matches!(
            r.deque_items(0x1000),
            Err(ReadError::Corrupt { .. })
        ));
    }

    #[test]
    fn sets_skip_deleted_entries_and_refuse_a_wrong_count() {
        let l = layout::for_version((3, 13)).unwrap();
        let build = |used: u64| {
            let mut mem = Mem::default();
            let types = types(l, &mut mem);
            let (set, table) = (0x1000, 0x2000);
            mem.region(set, 256)
                .region(table, 8 * l.set_entry_size as usize);
            mem.word(set + l.object_type, SET_TYPE)
                .word(set + l.set_used, used)
                .word(set + l.set_mask, 7)
                .word(set + l.set_table, table);
            for (slot, key, hash) in [(1, 0xf1, 11u64), (4, 0xdead, u64::MAX), (6, 0xf2, 12)] {
                let entry = table + slot * l.set_entry_size;
                mem.word(entry, key).word(entry + l.set_entry_hash, hash);
            }
            (mem.snapshot(), types)
        };
        let (snapshot, types) = build(2);
        let r = PyReader::new(&snapshot, l, types);
        assert_eq!(r.set_items(0x1000).unwrap(), [0xf1, 0xf2]);
        let (snapshot, types) = build(3);
        let r = PyReader::new(&snapshot, l, types);
        assert!(matches!(
            r.set_items(0x1000),
            Err(ReadError::Corrupt { .. })
        ));
    }
}
