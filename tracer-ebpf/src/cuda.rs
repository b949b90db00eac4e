//! Uprobes on libcuda's driver API. Which function fired is the attach cookie that
//! userspace chose; these programs only stamp times and push [`CudaCall`]s. A worker's
//! batch marks (a hardware watchpoint) go into the same ring.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, perf_event, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{PerfEventContext, ProbeContext, RetProbeContext},
    EbpfContext,
};
use tracer_common::cuda::{
    CallKey, CudaCall, CudaCounter, BATCH_MARK_COOKIE, CUDA_COUNTER_SLOTS, CUDA_MAX_IN_FLIGHT,
};

// One page here; the CUDA loader sizes it to CUDA_EVENTS_BYTES, so the watch path's
// instance of this object does not pin 4 MiB it never uses.
#[map(name = "CUDA_EVENTS")]
static CUDA_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

#[map(name = "CUDA_STARTS")]
static CUDA_STARTS: HashMap<CallKey, u64> = HashMap::with_max_entries(CUDA_MAX_IN_FLIGHT, 0);

#[map(name = "CUDA_COUNTERS")]
static CUDA_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CUDA_COUNTER_SLOTS, 0);

#[inline(always)]
fn bump(counter: CudaCounter) {
    if let Some(slot) = CUDA_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; a uprobe program runs with migration disabled.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn push(call: CudaCall) {
    match CUDA_EVENTS.reserve::<CudaCall>(0) {
        Some(mut entry) => {
            entry.write(call);
            // No wakeup: userspace drains on a timer.
            entry.submit(BPF_RB_NO_WAKEUP.into());
        }
        None => bump(CudaCounter::RingFull),
    }
}

/// Entry of a counted-only function (kernel and graph launches).
#[uprobe]
pub fn cuda_count(ctx: ProbeContext) -> u32 {
    bump(CudaCounter::Probes);
    // SAFETY: plain helper calls; the context pointer is the kernel's.
    let (now, cookie) = unsafe { (bpf_ktime_get_ns(), bpf_get_attach_cookie(ctx.as_ptr())) };
    push(CudaCall {
        start_ns: now,
        end_ns: now,
        pid_tgid: bpf_get_current_pid_tgid(),
        cookie,
    });
    0
}

/// Entry of a timed function (syncs, device-to-host copies): remember when.
#[uprobe]
pub fn cuda_enter(ctx: ProbeContext) -> u32 {
    bump(CudaCounter::Probes);
    // SAFETY: as in cuda_count.
    let (now, cookie) = unsafe { (bpf_ktime_get_ns(), bpf_get_attach_cookie(ctx.as_ptr())) };
    let key = CallKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        cookie,
    };
    if CUDA_STARTS.insert(key, now, 0).is_err() {
        bump(CudaCounter::StartsFull);
    }
    0
}

/// Return of a timed function: one call from entry to return.
#[uretprobe]
pub fn cuda_exit(ctx: RetProbeContext) -> u32 {
    bump(CudaCounter::Probes);
    // SAFETY: as in cuda_count.
    let (now, cookie) = unsafe { (bpf_ktime_get_ns(), bpf_get_attach_cookie(ctx.as_ptr())) };
    let key = CallKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        cookie,
    };
    // SAFETY: the value is copied out before the entry is removed below.
    let Some(start_ns) = (unsafe { CUDA_STARTS.get(key) }).copied() else {
        bump(CudaCounter::ReturnWithoutEntry);
        return 0;
    };
    let _ = CUDA_STARTS.remove(key);
    push(CudaCall {
        start_ns,
        end_ns: now,
        pid_tgid: key.pid_tgid,
        cookie,
    });
    0
}

/// A worker thread began a batch (the watched `RESUME` was read).
#[perf_event]
pub fn batch_mark(_ctx: PerfEventContext) -> u32 {
    bump(CudaCounter::Probes);
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    push(CudaCall {
        start_ns: now,
        end_ns: now,
        pid_tgid: bpf_get_current_pid_tgid(),
        cookie: BATCH_MARK_COOKIE,
    });
    0
}
