//! Stage 4, attach: load the eBPF object and put a hardware watchpoint on each planned
//! instruction byte of the engine thread, with the watch program attached to it.
//!
//! Watchpoints trap only the watched thread and only on the watched byte; the target is
//! never stopped and its memory never written. Dropping [`Watchpoints`] detaches everything.

use std::time::Instant;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        perf_event::{
            BreakpointConfig, PerfBreakpointLength, PerfBreakpointType, PerfEventConfig,
            PerfEventScope, SamplePolicy,
        },
        PerfEvent, ProgramError,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    capture::{Plan, FACTS_MAP, PLANS_MAP, SCRATCH_MAP},
    Counter, COUNTERS_MAP, EVENTS_MAP, QUEUE_LEN_MAP, WATCH_PROGRAM, WATCH_SNAPSHOT_PROGRAM,
};

use crate::live::plan::ProbePlan;

/// The eBPF object (every program and map); the CUDA probes load their own instance of it.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("loading the eBPF programs failed: {0}{hint}", hint = load_hint(.0))]
    Load(String),
    #[error("watching {what} on thread {tid} failed: {source}{hint}", hint = watch_hint(source))]
    Watch {
        what: String,
        tid: u32,
        source: std::io::Error,
    },
}

fn load_hint(message: &str) -> &'static str {
    if message.contains("Operation not permitted") || message.contains("Permission denied") {
        "\n  hint: the tracer needs root (or CAP_BPF + CAP_PERFMON): run it with sudo"
    } else if message.contains("bpf_loop") || message.contains("unknown func") {
        "\n  hint: the scheduler snapshots need Linux 5.17+ (bpf_loop): trace with --phases-only"
    } else {
        ""
    }
}

fn watch_hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSPC) => "\n  hint: all 4 debug registers of that thread are taken (a debugger or another tracer?)",
        Some(libc::EACCES | libc::EPERM) => "\n  hint: run as root, or lower /proc/sys/kernel/perf_event_paranoid",
        Some(libc::ESRCH) => "\n  hint: the thread exited",
        _ => "",
    }
}

/// Loaded and attached probes; detached on drop.
pub struct Watchpoints {
    // Holds the program and its perf-event links alive.
    _ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    /// [`tracer_common::capture::RequestFacts`] records.
    pub facts: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    /// The snapshot plans, by pid: a plan made better after attaching is put back here.
    plans: HashMap<MapData, u32, Plan>,
    /// How long loading and attaching took.
    pub attach_time: std::time::Duration,
}

impl Watchpoints {
    /// A counter summed over CPUs (0 if it cannot be read).
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters
            .get(&(counter as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Gives the kernel side process `pid`'s new snapshot plan, for its next hits.
    pub fn set_plan(&mut self, pid: u32, plan: &Plan) -> Result<(), AttachError> {
        self.plans
            .insert(pid, plan, 0)
            .map_err(|e| AttachError::Load(e.to_string()))
    }
}

/// Loads the programs, gives the kernel side the snapshot plan of process `pid` (if any),
/// and puts the watchpoints in. The ring of hits and snapshots holds `ring_bytes`.
pub fn attach(
    plan: &ProbePlan,
    snapshot: Option<(u32, &Plan)>,
    ring_bytes: u32,
) -> Result<Watchpoints, AttachError> {
    let started = Instant::now();
    let load = |e: &dyn std::fmt::Display| AttachError::Load(e.to_string());
    // The snapshot work area has one slot per possible CPU.
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| load(&e))? as u32;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(SCRATCH_MAP, cpus)
        .map_max_entries(EVENTS_MAP, ring_bytes)
        .load(EBPF_OBJECT)
        .map_err(|e| load(&e))?;
    let mut plans: HashMap<_, u32, Plan> = HashMap::try_from(
        ebpf.take_map(PLANS_MAP)
            .ok_or_else(|| load(&"plans map missing"))?,
    )
    .map_err(|e| load(&e))?;
    if let Some((pid, snapshot)) = snapshot {
        plans.insert(pid, snapshot, 0).map_err(|e| load(&e))?;
    }
    let mut queue_len: Array<_, u64> = Array::try_from(
        ebpf.map_mut(QUEUE_LEN_MAP)
            .ok_or_else(|| load(&"queue length map missing"))?,
    )
    .map_err(|e| load(&e))?;
    queue_len
        .set(0, plan.queue_len_addr, 0)
        .map_err(|e| load(&e))?;
    let name = if snapshot.is_some() {
        WATCH_SNAPSHOT_PROGRAM
    } else {
        WATCH_PROGRAM
    };
    let program: &mut PerfEvent = ebpf
        .program_mut(name)
        .ok_or_else(|| load(&"watch program missing from the eBPF object"))?
        .try_into()
        .map_err(|e: ProgramError| load(&e))?;
    program.load().map_err(|e| load(&e))?;
    watch_each(program, plan)?;
    let events = RingBuf::try_from(
        ebpf.take_map(EVENTS_MAP)
            .ok_or_else(|| load(&"events map missing"))?,
    )
    .map_err(|e| load(&e))?;
    let facts = RingBuf::try_from(
        ebpf.take_map(FACTS_MAP)
            .ok_or_else(|| load(&"facts map missing"))?,
    )
    .map_err(|e| load(&e))?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map(COUNTERS_MAP)
            .ok_or_else(|| load(&"counters map missing"))?,
    )
    .map_err(|e| load(&e))?;
    Ok(Watchpoints {
        _ebpf: ebpf,
        events,
        facts,
        counters,
        plans,
        attach_time: started.elapsed(),
    })
}

/// Puts a watchpoint with `program` on each of the plan's instruction bytes, on the engine
/// thread only.
fn watch_each(program: &mut PerfEvent, plan: &ProbePlan) -> Result<(), AttachError> {
    for watch in &plan.watches {
        watch_byte(program, plan.tid, watch.addr).map_err(|source| AttachError::Watch {
            what: format!("{} ({:#x})", watch.mark, watch.addr),
            tid: plan.tid,
            source,
        })?;
    }
    Ok(())
}

/// Runs `program` at each access of thread `tid` to the byte at `addr` (an instruction's
/// opcode), for as long as the program is loaded.
pub(crate) fn watch_byte(program: &mut PerfEvent, tid: u32, addr: u64) -> std::io::Result<()> {
    let config = PerfEventConfig::Breakpoint(BreakpointConfig::Data {
        // x86 has no read-only data watch; writes (rare rewrites of the byte) are filtered later.
        r#type: PerfBreakpointType::ReadWrite,
        address: addr,
        // One byte, the opcode: a wider watch also traps on the oparg read (2 hits a call on 3.12).
        length: PerfBreakpointLength::Len1,
    });
    let scope = PerfEventScope::OneProcess {
        pid: tid,
        cpu: None,
    };
    program
        .attach(config, scope, SamplePolicy::Period(1), false)
        .map(drop)
        .map_err(|e| match e {
            ProgramError::SyscallError(e) => e.io_error,
            other => std::io::Error::other(other.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verifier's refusal on a kernel without `bpf_loop` (5.16: "unknown func
    /// bpf_loop#181"), and a refusal for want of privileges, each say what to do.
    #[test]
    fn load_errors_say_what_to_do() {
        let message = |e: &str| AttachError::Load(e.into()).to_string();
        assert!(message(
            "Verifier output: 2266: (85) call bpf_loop#181\nunknown func bpf_loop#181"
        )
        .contains("--phases-only"));
        assert!(
            message("bpf(BPF_PROG_LOAD): Operation not permitted (os error 1)").contains("sudo")
        );
        assert!(!message("map create: Invalid argument").contains("hint"));
    }

    /// The kernel verifies the snapshot program at every attach, in time that grows with the
    /// instructions it must walk: 240 058 of them (~330 ms on the dev VM) when the request
    /// copy and the record's build were verified inside every path that reaches them, 12 334
    /// since they are global functions (tracer-ebpf/build.rs). Needs root and BPF.
    #[test]
    fn snapshot_program_verification_stays_small() {
        let cpus = aya::util::nr_cpus().expect("possible CPUs") as u32;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(SCRATCH_MAP, cpus)
            .load(EBPF_OBJECT)
            .expect("the eBPF object loads (root and BPF needed)");
        let program: &mut PerfEvent = ebpf
            .program_mut(WATCH_SNAPSHOT_PROGRAM)
            .expect("snapshot program")
            .try_into()
            .expect("a perf_event program");
        program.load().expect("the snapshot program verifies");
        let verified = program
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (5.16+)");
        assert!(
            verified <= 50_000,
            "the verifier walked {verified} instructions of the snapshot program (12 334 at \
             the last change): something it checks once per path grew"
        );
    }
}
