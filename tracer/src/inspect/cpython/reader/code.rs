//! Code objects (name, instructions, line table) and a frame's local variables.

use super::base::{corrupt, PyReader, Result};
use crate::inspect::{
    cpython::{
        layout::Bytecode,
        lines::{self, LineRange},
    },
    memory::ProcessMemory,
};

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

impl<M: ProcessMemory> PyReader<'_, M> {
    /// A Python function's code object.
    pub fn function_code(&self, func: u64) -> Result<u64> {
        self.expect_type(func, self.types.function, "function")?;
        self.u64_at(func.wrapping_add(self.layout.func_code))
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
}
