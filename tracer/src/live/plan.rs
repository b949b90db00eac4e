//! Stage 3, plan: which instruction bytes to watch, and what each hit will mean.
//!
//! x86-64 has four debug registers per thread, so a plan has at most four watches: the
//! step's entry and the return points of its three phase calls.

use std::fmt;

use crate::{
    inspect::cpython::{bytecode, reader::Code, Layout},
    live::resolve::Resolved,
};

/// Most hardware watchpoints one x86-64 thread can hold.
pub const MAX_WATCHES: usize = 4;

/// What a hit of a watch means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mark {
    /// `step()` was entered (its `RESUME`).
    StepEntry,
    /// `schedule()` returned.
    ScheduleDone,
    /// `execute_model()` returned.
    ExecuteDone,
    /// `update_from_output()` returned: the step's work is done.
    UpdateDone,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mark::StepEntry => "step entry",
            Mark::ScheduleDone => "after schedule",
            Mark::ExecuteDone => "after execute",
            Mark::UpdateDone => "after update",
        })
    }
}

/// One watched instruction byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub addr: u64,
    pub mark: Mark,
    /// Byte offset in the code object's instructions, for `tracer probes` and errors.
    pub offset: usize,
}

#[derive(Clone, Debug)]
pub struct ProbePlan {
    pub tid: u32,
    pub watches: Vec<Watch>,
    /// The step function schedules a batch in one call and updates it in a later one
    /// (`step_with_batch_queue`): steps are correlated per batch.
    pub per_batch: bool,
    /// Address of the batch queue's length (`Py_SIZE` of the deque), read at every hit; 0
    /// when the engine steps per call.
    pub queue_len_addr: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot find {what} in the bytecode of {function} (Python {version}): this vLLM version's step has a shape the tracer does not know yet")]
pub struct PlanError {
    pub what: String,
    pub function: String,
    pub version: String,
}

impl PlanError {
    fn missing(what: String, code: &Code, layout: &Layout) -> Self {
        Self {
            what,
            function: code.qualname.clone(),
            version: format!("{}.{}", layout.version.0, layout.version.1),
        }
    }
}

pub fn plan(resolved: &Resolved, layout: &Layout) -> Result<ProbePlan, PlanError> {
    let ops = layout.opcodes;
    let code = &resolved.step;
    let instrs = bytecode::instructions(&code.bytecode, ops);
    let missing = |what: String| PlanError::missing(what, code, layout);
    let names = resolved.names;
    let mut watches = vec![Watch {
        addr: 0,
        mark: Mark::StepEntry,
        offset: bytecode::entry_point(&instrs, ops)
            .ok_or_else(|| missing("the RESUME instruction".into()))?,
    }];
    for (method, mark) in [
        (names.schedule, Mark::ScheduleDone),
        (names.execute, Mark::ExecuteDone),
        (names.update, Mark::UpdateDone),
    ] {
        let offset = match &resolved.fallback {
            Some(fallback) if mark == Mark::ExecuteDone => Some(fallback.execute_offset),
            _ => bytecode::after_call(&instrs, &code.names, method, ops),
        }
        .ok_or_else(|| missing(format!("the call of {method}()")))?;
        watches.push(Watch {
            addr: 0,
            mark,
            offset,
        });
    }
    for watch in &mut watches {
        watch.addr = code.bytecode_addr + watch.offset as u64;
    }
    debug_assert!(watches.len() <= MAX_WATCHES);
    Ok(ProbePlan {
        tid: resolved.tid,
        watches,
        per_batch: names.per_batch,
        queue_len_addr: match resolved.batch_queue {
            0 => 0,
            deque => deque + layout.var_size,
        },
    })
}

/// The instruction byte a worker's batch marks watch: the `RESUME` of its per-batch entry.
pub fn batch_entry(code: &Code, layout: &Layout) -> Result<u64, PlanError> {
    let instrs = bytecode::instructions(&code.bytecode, layout.opcodes);
    let offset = bytecode::entry_point(&instrs, layout.opcodes)
        .ok_or_else(|| PlanError::missing("the RESUME instruction".into(), code, layout))?;
    Ok(code.bytecode_addr + offset as u64)
}
