//! The reader itself: its errors, the builtin types' addresses it checks against, raw reads
//! of target memory, and the limits every decoder shares.

use std::io;

use crate::inspect::{
    cpython::layout::Layout,
    memory::{ProcessMemory, MAX_READ},
};

/// Longest string, tuple, list, dict, set or deque we decode; anything bigger is treated as
/// corrupt.
pub(super) const MAX_ITEMS: u64 = 1 << 20;
/// Longest base-class chain or MRO we follow.
pub(super) const MAX_BASES: usize = 64;
/// `tp_flags` bits for the builtin kinds whose subclasses share their layout (stable since
/// Python 3.0; not per version).
pub(super) const TPFLAGS_LONG_SUBCLASS: u64 = 1 << 24;
pub(super) const TPFLAGS_LIST_SUBCLASS: u64 = 1 << 25;
pub(super) const TPFLAGS_DICT_SUBCLASS: u64 = 1 << 29;
/// `Py_TPFLAGS_HEAPTYPE`: a class made by a class statement (only those have `__slots__`).
pub(super) const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
/// `Py_TPFLAGS_TYPE_SUBCLASS`: the object is a class (its type derives from `type`).
pub(super) const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

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

pub(super) fn corrupt(addr: u64, what: impl Into<String>) -> ReadError {
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

pub struct PyReader<'a, M: ProcessMemory> {
    pub mem: &'a M,
    pub layout: &'static Layout,
    pub types: TypeAddrs,
}

impl<'a, M: ProcessMemory> PyReader<'a, M> {
    pub fn new(mem: &'a M, layout: &'static Layout, types: TypeAddrs) -> Self {
        Self { mem, layout, types }
    }

    pub(super) fn u64_at(&self, addr: u64) -> Result<u64> {
        self.mem
            .read_u64(addr)
            .map_err(|source| ReadError::Memory { addr, source })
    }

    pub(super) fn u32_at(&self, addr: u64) -> Result<u32> {
        self.mem
            .read_u32(addr)
            .map_err(|source| ReadError::Memory { addr, source })
    }

    pub(super) fn u8_at(&self, addr: u64) -> Result<u8> {
        Ok(self.bytes_at(addr, 1)?[0])
    }

    pub(super) fn bytes_at(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        self.mem
            .read_bytes(addr, len)
            .map_err(|source| ReadError::Memory { addr, source })
    }

    /// `n` pointer-sized words from `addr`, in reads of at most [`MAX_READ`] bytes.
    pub(super) fn words_at(&self, addr: u64, n: u64) -> Result<Vec<u64>> {
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
}
