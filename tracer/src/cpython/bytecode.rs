//! Finding probe points in a code object's instructions.
//!
//! A probe point is an instruction whose first byte the interpreter reads exactly when
//! something we care about happens: the function's `RESUME` when it is entered, the
//! instruction after a `CALL` when that call has returned. The bytecode we scan comes from a
//! running process, so it may be specialized: opcodes are mapped back to their base
//! instruction and inline caches skipped, per the version's [`Opcodes`].

use super::layout::Opcodes;

/// One instruction, at the byte offset of its first code unit (an `EXTENDED_ARG` prefix if
/// it has one: that byte is what the interpreter reads first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instr {
    pub offset: usize,
    /// Base (unspecialized) opcode.
    pub op: u8,
    pub arg: u32,
}

/// Decodes instructions, folding `EXTENDED_ARG` prefixes and skipping inline caches.
pub fn instructions(code: &[u8], ops: &Opcodes) -> Vec<Instr> {
    let mut out = Vec::new();
    let (mut unit, mut start, mut ext) = (0, None, 0u32);
    while let Some(&[raw_op, arg]) = code.get(unit * 2..unit * 2 + 2).map(|s| <&[u8; 2]>::try_from(s).expect("2 bytes")) {
        let op = ops.deopt[raw_op as usize];
        let offset = *start.get_or_insert(unit * 2);
        let arg = ext << 8 | u32::from(arg);
        unit += 1;
        if Some(op) == ops.extended_arg {
            ext = arg;
            continue;
        }
        out.push(Instr { offset, op, arg });
        unit += usize::from(ops.caches[op as usize]);
        (start, ext) = (None, 0);
    }
    out
}

/// Byte offset of the `RESUME` that starts every call of the function.
pub fn entry_point(instrs: &[Instr], ops: &Opcodes) -> Option<usize> {
    // RESUME's oparg says where it sits: 0 at function start, non-zero after yield/await.
    instrs.iter().find(|i| Some(i.op) == ops.resume && i.arg & 3 == 0).map(|i| i.offset)
}

/// Byte offset of the instruction that runs right after the call of method `method`
/// (`obj.method(...)`) returns: the first call instruction after the attribute load of that
/// name. Arguments that themselves contain calls would move the point; the call sites we
/// probe (`self.scheduler.schedule()` and the like) pass plain locals.
pub fn after_call(instrs: &[Instr], names: &[String], method: &str, ops: &Opcodes) -> Option<usize> {
    let name_of = |i: &Instr| {
        let index = if Some(i.op) == ops.load_attr {
            i.arg >> ops.load_attr_name_shift
        } else if Some(i.op) == ops.load_method {
            i.arg
        } else {
            return None;
        };
        names.get(index as usize).map(String::as_str)
    };
    let load = instrs.iter().position(|i| name_of(i) == Some(method))?;
    let call = load + 1 + instrs[load + 1..].iter().position(|i| ops.calls.contains(&i.op))?;
    instrs.get(call + 1).map(|i| i.offset)
}
