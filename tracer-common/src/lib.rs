//! Types shared by the eBPF programs (`tracer-ebpf`) and the loader (`tracer`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into maps and the
//! ring buffer, the user side reads the same bytes back (`parse`, built with the `user` feature).
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod capture;
pub mod cuda;
#[cfg(feature = "user")]
pub mod parse;

/// Name of the eBPF program that runs at every hit of a watched bytecode instruction.
pub const WATCH_PROGRAM: &str = "watch_hit";
/// The same, also taking scheduler snapshots (see [`capture`]).
pub const WATCH_SNAPSHOT_PROGRAM: &str = "watch_snapshot";
/// Name of the ring buffer map that carries [`WatchHit`] records to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the one-slot array holding the address of the engine's batch-queue length
/// (`Py_SIZE` of its `batch_queue` deque), 0 when it has none.
pub const QUEUE_LEN_MAP: &str = "QUEUE_LEN";
/// [`WatchHit::queue_len`] when no batch queue is watched, or its length could not be read.
pub const NO_QUEUE_LEN: u64 = u64::MAX;
/// Name of the per-CPU array of [`Counter`] values.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Ring buffer size: 32 MiB holds ~1M bare hits, or ~250 snapshots of full 512-request
/// queues; the loader drains it every 2 ms.
pub const EVENTS_BYTES: u32 = 1 << 25;

/// One read of a watched instruction byte by a traced thread.
///
/// The eBPF side only stamps the time and says which watch fired; userspace knows what each
/// watched address means.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchHit {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, the clock of Python's `time.monotonic_ns()`.
    pub ktime_ns: u64,
    /// `bpf_get_current_pid_tgid()`: thread id in the low half, process id in the high half.
    pub pid_tgid: u64,
    /// The watched address (the breakpoint's `bp_addr`), identifying the probe point.
    pub watch_addr: u64,
    /// User instruction pointer at the trap, to tell the interpreter's dispatch reads from
    /// one-time rewrites of the instruction (quickening).
    pub ip: u64,
    /// Length of the engine's batch queue at the hit ([`NO_QUEUE_LEN`] without one): after
    /// a batch is popped, how many stay in flight, which tells the loader whether the batch
    /// popped is one it saw scheduled (the trace may start with batches in flight).
    pub queue_len: u64,
}

/// Slots of the per-CPU counter array (summed over CPUs by userspace).
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Every run of the watch program.
    Hits = 0,
    /// Hits lost because the ring buffer was full.
    RingFull = 1,
    /// Snapshot hits (hits of a watch the plan marks for a snapshot).
    Snapshots = 2,
    /// Snapshots that could not be built (their hit went in alone): the sum of
    /// [`Counter::NoScratch`] and [`Counter::OverBound`].
    SnapshotFailed = 3,
    /// Snapshots that did not fit in the ring buffer (their hit went in alone).
    SnapshotRingFull = 4,
    /// [`capture::RequestFacts`] lost because their ring buffer was full.
    FactsRingFull = 5,
    /// Snapshots that failed because this CPU has no scratch slot (more CPUs than the
    /// loader sized the array for).
    NoScratch = 6,
    /// Snapshots that failed because their record would run past its bound (items past the
    /// queues' room, or past [`capture::MAX_RECORD`]).
    OverBound = 7,
    /// Snapshots sent with [`capture::snap::READ_ERROR`] because the running queue could
    /// not be read (its chain freed, resized, or not what the plan says).
    RunningUnreadable = 8,
    /// The same for the waiting queue.
    WaitingUnreadable = 9,
    /// The same for the KV block pool's free count.
    KvFreeUnreadable = 10,
    /// Snapshots that were to copy the step's scheduled tokens and could not read them (no
    /// `scheduler_output` in the step's frame yet, or not the dict the plan says); they go
    /// out without [`capture::snap::SCHEDULED`].
    ScheduledUnreadable = 11,
}

/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = 12;

#[cfg(feature = "user")]
// SAFETY: `WatchHit` is `repr(C)` with only `u64` fields: no padding, any bit pattern valid.
unsafe impl aya::Pod for WatchHit {}
