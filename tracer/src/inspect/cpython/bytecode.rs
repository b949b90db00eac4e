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
    while let Some(&[raw_op, arg]) = code
        .get(unit * 2..unit * 2 + 2)
        .map(|s| <&[u8; 2]>::try_from(s).expect("2 bytes"))
    {
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

/// Byte offset of the instruction that starts every call of the function: its `RESUME`
/// (3.11+), or its first instruction where there is none (3.10).
pub fn entry_point(instrs: &[Instr], ops: &Opcodes) -> Option<usize> {
    let Some(resume) = ops.resume else {
        return instrs.first().map(|i| i.offset);
    };
    // RESUME's oparg says where it sits: 0 at function start, non-zero after yield/await.
    instrs
        .iter()
        .find(|i| i.op == resume && i.arg & 3 == 0)
        .map(|i| i.offset)
}

/// Byte offset of the instruction that runs right after the call of method `method`
/// (`obj.method(...)`) returns: the call instruction after the attribute load of that name,
/// skipping the calls of methods loaded in between (vLLM 0.33's
/// `self.scheduler.schedule(self._should_throttle_prefills())`). Calls of plain functions or
/// globals inside the arguments would still move the point.
pub fn after_call(
    instrs: &[Instr],
    names: &[String],
    method: &str,
    ops: &Opcodes,
) -> Option<usize> {
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
    let call = call_of(instrs, load, ops)?;
    instrs.get(call + 1).map(|i| i.offset)
}

/// 3.12+ marks a method load by LOAD_ATTR's low oparg bit; before, it is LOAD_METHOD.
fn is_method_load(i: &Instr, ops: &Opcodes) -> bool {
    Some(i.op) == ops.load_method
        || (ops.load_attr_name_shift == 1 && Some(i.op) == ops.load_attr && i.arg & 1 == 1)
}

/// Index of the call instruction of the method loaded at `load`, skipping the calls of
/// methods loaded in between (its arguments).
fn call_of(instrs: &[Instr], load: usize, ops: &Opcodes) -> Option<usize> {
    let mut nested = 0;
    Some(
        load + 1
            + instrs[load + 1..].iter().position(|i| {
                if is_method_load(i, ops) {
                    nested += 1;
                } else if ops.calls.contains(&i.op) {
                    if nested == 0 {
                        return true;
                    }
                    nested -= 1;
                }
                false
            })?,
    )
}

/// The method call that returns last before method `method` is loaded: its name and the byte
/// offset of the instruction after it. For a step no row of the tables fits, this call's
/// return ends the execute phase (it is the row's own execute call in every release with a row:
/// 0.10–0.11 `execute_model_with_error_logging`, 0.33–0.34 `_process_aborts_queue`).
pub fn last_call_before(
    instrs: &[Instr],
    names: &[String],
    method: &str,
    ops: &Opcodes,
) -> Option<(String, usize)> {
    let name_at = |i: &Instr| -> Option<&str> {
        let index = if Some(i.op) == ops.load_attr {
            i.arg >> ops.load_attr_name_shift
        } else if Some(i.op) == ops.load_method {
            i.arg
        } else {
            return None;
        };
        names.get(index as usize).map(String::as_str)
    };
    let target = instrs.iter().position(|i| name_at(i) == Some(method))?;
    (0..target)
        .filter(|&load| is_method_load(&instrs[load], ops))
        .filter_map(|load| Some((call_of(instrs, load, ops)?, load)))
        .filter(|&(call, _)| call < target)
        .max_by_key(|&(call, _)| call)
        .and_then(|(call, load)| {
            Some((
                name_at(&instrs[load])?.to_owned(),
                instrs.get(call + 1)?.offset,
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::cpython::layout;

    /// 3.11's opcode numbers, from the generated table.
    fn ops_3_11() -> &'static Opcodes {
        layout::for_version((3, 11)).expect("3.11 row").opcodes
    }

    /// Some specialized form of `base` (an opcode the table maps back to it).
    fn specialized(ops: &Opcodes, base: u8) -> u8 {
        (0..=255u8)
            .find(|&op| op != base && ops.deopt[op as usize] == base)
            .expect("base has a specialized form")
    }

    /// One instruction and its (zeroed) inline caches.
    fn emit(code: &mut Vec<u8>, ops: &Opcodes, op: u8, arg: u8) {
        code.extend([op, arg]);
        let base = ops.deopt[op as usize];
        code.extend(std::iter::repeat_n(
            0,
            2 * usize::from(ops.caches[base as usize]),
        ));
    }

    const STORE_FAST: u8 = 125;
    const LOAD_FAST: u8 = 124;
    const PRECALL: u8 = 166;

    /// `def step(self): out = self.scheduler.schedule(); self.ex.execute_model(out)` as
    /// 3.11 lays it out, with the given opcodes for the attribute loads and calls.
    fn step_bytecode(
        ops: &Opcodes,
        load_attr: u8,
        load_method: u8,
        call: u8,
        resume: u8,
    ) -> Vec<u8> {
        let mut code = Vec::new();
        emit(&mut code, ops, resume, 0);
        emit(&mut code, ops, LOAD_FAST, 0);
        emit(&mut code, ops, load_attr, 0); // .scheduler
        emit(&mut code, ops, load_method, 1); // .schedule
        emit(&mut code, ops, PRECALL, 0);
        emit(&mut code, ops, call, 0);
        emit(&mut code, ops, STORE_FAST, 1); // ← after schedule()
        emit(&mut code, ops, LOAD_FAST, 0);
        emit(&mut code, ops, load_attr, 2); // .ex
        emit(&mut code, ops, load_method, 3); // .execute_model
        emit(&mut code, ops, LOAD_FAST, 1);
        emit(&mut code, ops, PRECALL, 1);
        emit(&mut code, ops, call, 1);
        // a name index above 255 needs EXTENDED_ARG: the watch must sit on the prefix
        emit(&mut code, ops, ops.extended_arg.unwrap(), 1);
        emit(&mut code, ops, STORE_FAST, 4); // ← after execute_model(), arg 0x104
        code
    }

    fn names() -> Vec<String> {
        ["scheduler", "schedule", "ex", "execute_model"]
            .map(String::from)
            .to_vec()
    }

    /// `out = self.scheduler.schedule(self.ex())` (vLLM 0.33's shape): the watch goes after
    /// the outer call, not after the call of the method loaded for its argument.
    #[test]
    fn skips_method_calls_in_the_arguments() {
        let ops = ops_3_11();
        let (attr, method, call) = (
            ops.load_attr.unwrap(),
            ops.load_method.unwrap(),
            ops.calls[0],
        );
        let mut code = Vec::new();
        emit(&mut code, ops, ops.resume.unwrap(), 0);
        emit(&mut code, ops, LOAD_FAST, 0);
        emit(&mut code, ops, attr, 0); // .scheduler
        emit(&mut code, ops, method, 1); // .schedule
        emit(&mut code, ops, LOAD_FAST, 0);
        emit(&mut code, ops, method, 2); // .ex
        emit(&mut code, ops, PRECALL, 0);
        emit(&mut code, ops, call, 0); // ex()
        emit(&mut code, ops, PRECALL, 1);
        emit(&mut code, ops, call, 1); // schedule(...)
        emit(&mut code, ops, STORE_FAST, 1);
        let instrs = instructions(&code, ops);
        let after = after_call(&instrs, &names(), "schedule", ops).unwrap();
        assert_eq!(Some(&after), instrs.last().map(|i| &i.offset));
    }

    #[test]
    fn finds_entry_and_call_returns_in_plain_bytecode() {
        let ops = ops_3_11();
        let (attr, method, call, resume) = (
            ops.load_attr.unwrap(),
            ops.load_method.unwrap(),
            ops.calls[0],
            ops.resume.unwrap(),
        );
        let instrs = instructions(&step_bytecode(ops, attr, method, call, resume), ops);
        assert_eq!(entry_point(&instrs, ops), Some(0));
        // RESUME 2 + LOAD_FAST 2 + LOAD_ATTR 2+8 + LOAD_METHOD 2+20 + PRECALL 2+2 + CALL 2+8
        assert_eq!(after_call(&instrs, &names(), "schedule", ops), Some(50));
        let after_execute = after_call(&instrs, &names(), "execute_model", ops).unwrap();
        let prefixed = instrs.iter().find(|i| i.offset == after_execute).unwrap();
        assert_eq!(
            (prefixed.op, prefixed.arg),
            (STORE_FAST, 0x104),
            "the watch sits on the EXTENDED_ARG prefix"
        );
        assert_eq!(
            after_call(&instrs, &names(), "update_from_output", ops),
            None
        );
    }

    #[test]
    fn specialized_bytecode_gives_the_same_points() {
        let ops = ops_3_11();
        let plain = step_bytecode(
            ops,
            ops.load_attr.unwrap(),
            ops.load_method.unwrap(),
            ops.calls[0],
            ops.resume.unwrap(),
        );
        let quick = step_bytecode(
            ops,
            specialized(ops, ops.load_attr.unwrap()),
            specialized(ops, ops.load_method.unwrap()),
            specialized(ops, ops.calls[0]),
            specialized(ops, ops.resume.unwrap()),
        );
        assert_ne!(plain, quick);
        let (a, b) = (instructions(&plain, ops), instructions(&quick, ops));
        assert_eq!(a, b);
        for method in ["schedule", "execute_model"] {
            assert_eq!(
                after_call(&a, &names(), method, ops),
                after_call(&b, &names(), method, ops)
            );
        }
    }

    /// With no table row, execute ends where the last method call before the update returns:
    /// `execute_model` in `step_bytecode`, found for `schedule`'s successor too.
    #[test]
    fn last_call_before_a_method() {
        let ops = ops_3_11();
        let code = step_bytecode(
            ops,
            ops.load_attr.unwrap(),
            ops.load_method.unwrap(),
            ops.calls[0],
            ops.resume.unwrap(),
        );
        let instrs = instructions(&code, ops);
        let mut names = names();
        names.push("update_from_output".into());
        // No update call in this bytecode: nothing before a method never loaded.
        assert_eq!(
            last_call_before(&instrs, &names, "update_from_output", ops),
            None
        );
        assert_eq!(
            last_call_before(&instrs, &names, "execute_model", ops),
            Some(("schedule".into(), 50))
        );
        assert_eq!(last_call_before(&instrs, &names, "schedule", ops), None);
    }

    #[test]
    fn resume_after_yield_is_not_the_entry() {
        let ops = ops_3_11();
        let mut code = Vec::new();
        emit(&mut code, ops, ops.resume.unwrap(), 1); // a generator's resumption point
        emit(&mut code, ops, ops.resume.unwrap(), 0);
        assert_eq!(entry_point(&instructions(&code, ops), ops), Some(2));
    }
}
