//! Which type an object is: every decoder checks its object's `ob_type` before reading it.

use super::base::{corrupt, PyReader, ReadError, Result, MAX_BASES};
use crate::inspect::memory::ProcessMemory;

/// Longest type name we read (`tp_name` is a C string).
const MAX_TYPE_NAME: usize = 256;

impl<M: ProcessMemory> PyReader<'_, M> {
    pub fn type_of(&self, obj: u64) -> Result<u64> {
        if obj == 0 {
            return Err(corrupt(obj, "NULL object"));
        }
        self.u64_at(obj.wrapping_add(self.layout.object_type))
    }

    /// `obj`'s type, checked to be a class: an instance of `type` or of a metaclass
    /// deriving from it. A pointer into the middle of an object fails here.
    pub(super) fn class_of(&self, obj: u64) -> Result<u64> {
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

    pub(super) fn type_flags(&self, ty: u64) -> Result<u64> {
        self.u64_at(ty.wrapping_add(self.layout.type_flags))
    }

    pub(super) fn expect_type(&self, obj: u64, ty: u64, expected: &'static str) -> Result<()> {
        if obj == 0 || self.type_of(obj)? != ty {
            return Err(ReadError::WrongType {
                addr: obj,
                expected,
            });
        }
        Ok(())
    }

    /// `obj` is an instance of `ty` or of a subclass that the fast subclass bit `flag` marks.
    pub(super) fn expect_kind(
        &self,
        obj: u64,
        ty: u64,
        flag: u64,
        expected: &'static str,
    ) -> Result<()> {
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
    pub(super) fn expect_subtype(&self, obj: u64, base: u64, expected: &'static str) -> Result<()> {
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
}
