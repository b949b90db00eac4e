//! Decoding CPython objects from a process's memory, by address.
//!
//! Target memory is untrusted and changes under us: every size is capped, every object's
//! type pointer is checked against the type we expect, and a failure is a [`ReadError`]
//! (counted by the caller), never a guess.

use std::io;

use super::Layout;
use crate::memory::ProcessMemory;

/// Longest string, tuple or dict we decode; anything bigger is treated as corrupt.
const MAX_ITEMS: u64 = 1 << 20;
/// Deepest Python stack we walk.
const MAX_FRAMES: usize = 1024;
/// `Py_TPFLAGS_TYPE_SUBCLASS`: the object is a class (its type derives from `type`).
const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("remote read at {addr:#x} failed: {source}")]
    Memory { addr: u64, source: io::Error },
    #[error("object at {addr:#x} is not a {expected}")]
    WrongType { addr: u64, expected: &'static str },
    #[error("object at {addr:#x} is corrupt: {what}")]
    Corrupt { addr: u64, what: String },
}

pub type Result<T> = std::result::Result<T, ReadError>;

/// Addresses of the builtin type objects, from the interpreter's dynamic symbols, so each
/// decoded object's `ob_type` can be checked.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypeAddrs {
    pub str: u64,
    pub dict: u64,
    pub tuple: u64,
    pub module: u64,
    pub function: u64,
    pub code: u64,
}

/// What the tracer needs of a code object.
#[derive(Clone, Debug)]
pub struct Code {
    pub addr: u64,
    pub qualname: String,
    pub names: Vec<String>,
    /// The instructions as they are now (possibly specialized), and where they live.
    pub bytecode: Vec<u8>,
    pub bytecode_addr: u64,
}

/// A thread known to the interpreter.
#[derive(Clone, Copy, Debug)]
pub struct ThreadState {
    pub addr: u64,
    pub native_thread_id: u64,
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

    fn bytes_at(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        self.mem
            .read_bytes(addr, len)
            .map_err(|source| ReadError::Memory { addr, source })
    }

    fn type_of(&self, obj: u64) -> Result<u64> {
        self.u64_at(obj + self.layout.object_type)
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

    fn var_size(&self, obj: u64) -> Result<u64> {
        let size = self.u64_at(obj + self.layout.var_size)?;
        if size > MAX_ITEMS {
            return Err(ReadError::Corrupt {
                addr: obj,
                what: format!("size {size}"),
            });
        }
        Ok(size)
    }

    /// A `str` object's text (compact strings: every string CPython creates since 3.3 but
    /// the legacy C-API ones).
    pub fn str(&self, obj: u64) -> Result<String> {
        self.expect_type(obj, self.types.str, "str")?;
        let l = self.layout;
        let len = self.u64_at(obj + l.unicode_length)?;
        if len > MAX_ITEMS {
            return Err(ReadError::Corrupt {
                addr: obj,
                what: format!("str length {len}"),
            });
        }
        let state = self
            .mem
            .read_u32(obj + l.unicode_state)
            .map_err(|source| ReadError::Memory { addr: obj, source })?;
        let (kind, compact, ascii) = (
            (state >> 2) & 7,
            (state >> 5) & 1 == 1,
            (state >> 6) & 1 == 1,
        );
        if !compact {
            return Err(ReadError::Corrupt {
                addr: obj,
                what: "non-compact str".into(),
            });
        }
        let data = obj
            + if ascii {
                l.unicode_ascii_data
            } else {
                l.unicode_compact_data
            };
        let bytes = self.bytes_at(data, len as usize * kind as usize)?;
        let corrupt = || ReadError::Corrupt {
            addr: obj,
            what: "bad characters".into(),
        };
        match kind {
            1 if ascii => String::from_utf8(bytes).map_err(|_| corrupt()),
            1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            2 => char::decode_utf16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_ne_bytes([c[0], c[1]])),
            )
            .collect::<std::result::Result<String, _>>()
            .map_err(|_| corrupt()),
            4 => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
                .ok_or_else(corrupt),
            _ => Err(ReadError::Corrupt {
                addr: obj,
                what: format!("str kind {kind}"),
            }),
        }
    }

    /// The items of a `tuple`.
    pub fn tuple(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_type(obj, self.types.tuple, "tuple")?;
        let n = self.var_size(obj)?;
        let raw = self.bytes_at(obj + self.layout.tuple_items, n as usize * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// The `(key, value)` pointers of a dict with a combined table (module, class and
    /// `sys.modules` dicts are; split tables only occur for instance attributes).
    pub fn dict_items(&self, obj: u64) -> Result<Vec<(u64, u64)>> {
        self.expect_type(obj, self.types.dict, "dict")?;
        let l = self.layout;
        if self.u64_at(obj + l.dict_values)? != 0 {
            return Err(ReadError::Corrupt {
                addr: obj,
                what: "split-table dict".into(),
            });
        }
        let keys = self.u64_at(obj + l.dict_keys)?;
        let header = self.bytes_at(keys, l.dictkeys_indices as usize)?;
        let byte = |off: u64| header[off as usize];
        let (log2_size, log2_index_bytes, kind) = (
            byte(l.dictkeys_log2_size),
            byte(l.dictkeys_log2_index_bytes),
            byte(l.dictkeys_kind),
        );
        let nentries = self.u64_at(keys + l.dictkeys_nentries)?;
        if log2_size > 30 || log2_index_bytes > 33 || nentries > (1u64 << log2_size).min(MAX_ITEMS)
        {
            return Err(ReadError::Corrupt {
                addr: obj,
                what: format!("dict keys 2^{log2_size}, {nentries} entries"),
            });
        }
        // DICT_KEYS_GENERAL entries carry a hash: {hash, key, value}; unicode ones {key, value}.
        let entry_words = if kind == 0 { 3 } else { 2 };
        let entries = keys + l.dictkeys_indices + (1u64 << log2_index_bytes);
        let raw = self.bytes_at(entries, (nentries * entry_words * 8) as usize)?;
        let words: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(words
            .chunks_exact(entry_words as usize)
            .map(|e| (e[e.len() - 2], e[e.len() - 1]))
            .filter(|&(key, value)| key != 0 && value != 0)
            .collect())
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

    /// A module's `__dict__`.
    pub fn module_dict(&self, module: u64) -> Result<u64> {
        self.expect_type(module, self.types.module, "module")?;
        self.u64_at(module + self.layout.module_dict)
    }

    /// A class's `__dict__` (its own attributes, not inherited ones).
    pub fn class_dict(&self, class: u64) -> Result<u64> {
        let meta = self.type_of(class)?;
        if self.u64_at(meta + self.layout.type_flags)? & TPFLAGS_TYPE_SUBCLASS == 0 {
            return Err(ReadError::WrongType {
                addr: class,
                expected: "class",
            });
        }
        self.u64_at(class + self.layout.type_dict)
    }

    /// A Python function's code object.
    pub fn function_code(&self, func: u64) -> Result<u64> {
        self.expect_type(func, self.types.function, "function")?;
        self.u64_at(func + self.layout.func_code)
    }

    pub fn code(&self, addr: u64) -> Result<Code> {
        self.expect_type(addr, self.types.code, "code")?;
        let l = self.layout;
        let units = self.var_size(addr)?;
        let bytecode_addr = addr + l.code_code_adaptive;
        let names = self
            .tuple(self.u64_at(addr + l.code_names)?)?
            .into_iter()
            .map(|n| self.str(n))
            .collect::<Result<_>>()?;
        Ok(Code {
            addr,
            qualname: self.str(self.u64_at(addr + l.code_qualname)?)?,
            names,
            bytecode: self.bytes_at(bytecode_addr, units as usize * 2)?,
            bytecode_addr,
        })
    }

    /// Every thread state of the main interpreter, given `_PyRuntime`'s address.
    pub fn threads(&self, runtime: u64) -> Result<Vec<ThreadState>> {
        let l = self.layout;
        let interp = self.u64_at(runtime + l.runtime_interpreters_head)?;
        let mut tstate = self.u64_at(interp + l.interp_threads_head)?;
        let mut threads = Vec::new();
        while tstate != 0 && threads.len() < MAX_FRAMES {
            threads.push(ThreadState {
                addr: tstate,
                native_thread_id: self.u64_at(tstate + l.tstate_native_thread_id)?,
            });
            tstate = self.u64_at(tstate + l.tstate_next)?;
        }
        Ok(threads)
    }

    /// `sys.modules` of the main interpreter.
    pub fn sys_modules(&self, runtime: u64) -> Result<u64> {
        let interp = self.u64_at(runtime + self.layout.runtime_interpreters_head)?;
        self.u64_at(interp + self.layout.interp_modules)
    }

    /// Code object addresses on a thread's Python stack, innermost first.
    pub fn stack(&self, thread: &ThreadState) -> Result<Vec<u64>> {
        let l = self.layout;
        let mut frame = thread.addr;
        for offset in l.tstate_current_frame {
            if frame == 0 {
                return Ok(Vec::new());
            }
            frame = self.u64_at(frame + offset)?;
        }
        let mut codes = Vec::new();
        while frame != 0 && codes.len() < MAX_FRAMES {
            codes.push(self.u64_at(frame + l.frame_code)?);
            frame = self.u64_at(frame + l.frame_previous)?;
        }
        Ok(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cpython::layout, memory::Snapshot};

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
}
