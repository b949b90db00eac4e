//! The kernel side: small and dumb. At each hit of a watched bytecode instruction it stamps
//! the time and which watch fired, and pushes that to the ring buffer; at the hits the plan
//! names, it also copies the scheduler state the plan describes (`snapshot`). What the
//! watches and the copied bytes mean is the loader's business.
#![no_std]
#![no_main]

mod cuda;
mod snapshot;

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, perf_event},
    maps::{Array, PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
use tracer_common::{Counter, WatchHit, COUNTER_SLOTS, EVENTS_BYTES, NO_QUEUE_LEN};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "QUEUE_LEN")]
static QUEUE_LEN: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub(crate) fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and a perf_event program does not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn stamp(ctx: &PerfEventContext) -> WatchHit {
    // SAFETY: the kernel passes a valid `bpf_perf_event_data` to perf_event programs.
    let data = unsafe { &*ctx.ctx };
    WatchHit {
        // SAFETY: a plain helper call without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid: bpf_get_current_pid_tgid(),
        watch_addr: data.addr,
        ip: data.regs.rip,
        queue_len: queue_len(),
    }
}

/// The word at the address userspace planned (the batch queue's length), if any.
#[inline(always)]
fn queue_len() -> u64 {
    match QUEUE_LEN.get(0).copied() {
        // SAFETY: a user-memory read through the helper, which fails cleanly on a bad address.
        Some(addr) if addr != 0 => {
            unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(NO_QUEUE_LEN)
        }
        _ => NO_QUEUE_LEN,
    }
}

#[inline(always)]
fn emit(hit: WatchHit) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<WatchHit>(0) else {
        bump(Counter::RingFull);
        return 0;
    };
    entry.write(hit);
    // No wakeup: the loader drains the ring on a timer, so a hit costs no extra irq_work.
    entry.submit(BPF_RB_NO_WAKEUP.into());
    0
}

/// Runs at every access to a watched instruction byte (a hardware data breakpoint).
#[perf_event]
pub fn watch_hit(ctx: PerfEventContext) -> u32 {
    bump(Counter::Hits);
    emit(stamp(&ctx))
}

/// `watch_hit`, plus a snapshot of the scheduler at the watches the process's plan names.
/// A separate program so that phase-only traces load the small one.
#[perf_event]
pub fn watch_snapshot(ctx: PerfEventContext) -> u32 {
    bump(Counter::Hits);
    let hit = stamp(&ctx);
    let tgid = (hit.pid_tgid >> 32) as u32;
    let Some(plan) = snapshot::plan(tgid).filter(|p| p.snapshot_at.contains(&hit.watch_addr))
    else {
        return emit(hit);
    };
    bump(Counter::Snapshots);
    let first = hit.watch_addr == plan.snapshot_at[0];
    let shadow = first && plan.shadow != 0;
    let parts = snapshot::Parts {
        fields: first && !shadow,
        // A shadow copy leaves the scheduled tokens to userspace too (on the `step` path;
        // per batch, the step's `scheduler_output` local is a later batch's by then, and the
        // copy before the batch's update takes them).
        scheduled: hit.watch_addr != plan.snapshot_at[2] && !shadow,
        shadow,
        outputs: hit.watch_addr == plan.snapshot_at[2],
    };
    let record = match snapshot::take(plan, hit, parts).and_then(snapshot::record) {
        Ok(record) => record,
        Err(kind) => {
            bump(Counter::SnapshotFailed);
            bump(kind);
            return emit(hit);
        }
    };
    // A shadow snapshot wakes the loader: its reads must end before the engine thread
    // leaves the execute phase.
    let flags = if shadow {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(record, flags.into()).is_err() {
        // The step's phases still need the hit.
        bump(Counter::SnapshotRingFull);
        return emit(hit);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
