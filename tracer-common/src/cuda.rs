//! CUDA driver-API probes: uprobes on libcuda's exported functions in the engine's
//! processes. The kernel side knows no function names: userspace numbers the functions it
//! attaches to and passes that number as the probe's attach cookie, which comes back in
//! every [`CudaCall`].

/// Uprobe at a function's entry that only records the call (kernel launches, graph
/// launches): one [`CudaCall`] with `start_ns == end_ns`.
pub const CUDA_COUNT_PROGRAM: &str = "cuda_count";
/// Uprobe at a function's entry that remembers the entry time, for [`CUDA_EXIT_PROGRAM`].
pub const CUDA_ENTER_PROGRAM: &str = "cuda_enter";
/// Uretprobe that emits one [`CudaCall`] spanning entry to return (syncs, copies).
pub const CUDA_EXIT_PROGRAM: &str = "cuda_exit";
/// Hardware watchpoint program on the first instruction (`RESUME`) of a worker process's
/// per-batch function (`Worker.execute_model`), on the thread that runs it: one [`CudaCall`] with
/// [`BATCH_MARK_COOKIE`] per batch, in the same ring as the thread's CUDA calls, so that
/// userspace can tell which of them came after which batch began.
pub const BATCH_MARK_PROGRAM: &str = "batch_mark";
/// The cookie of a batch mark; CUDA functions are numbered from 0.
pub const BATCH_MARK_COOKIE: u64 = u64::MAX;
/// Ring buffer of [`CudaCall`]s, separate from the watch path's `EVENTS`.
pub const CUDA_EVENTS_MAP: &str = "CUDA_EVENTS";
/// Entry times of timed calls in flight, keyed by [`CallKey`].
pub const CUDA_STARTS_MAP: &str = "CUDA_STARTS";
/// Per-CPU array of [`CudaCounter`] values.
pub const CUDA_COUNTERS_MAP: &str = "CUDA_COUNTERS";
/// The size the CUDA loader gives [`CUDA_EVENTS_MAP`] (the object itself declares one
/// page). 4 MiB: ~130 000 calls, over a second of an eager engine launching 100 000
/// kernels/s; userspace drains it every 2 ms.
pub const CUDA_EVENTS_BYTES: u32 = 1 << 22;
/// Timed calls in flight at once, over all traced threads.
pub const CUDA_MAX_IN_FLIGHT: u32 = 4096;

/// One driver-API call by a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaCall {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at entry.
    pub start_ns: u64,
    /// At return for timed calls; equal to `start_ns` for counted-only calls.
    pub end_ns: u64,
    /// `bpf_get_current_pid_tgid()`: thread id low, process id high.
    pub pid_tgid: u64,
    /// The attach cookie: which function, in userspace's numbering.
    pub cookie: u64,
}

/// Key of [`CUDA_STARTS_MAP`]: one thread can be inside one timed function at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallKey {
    pub pid_tgid: u64,
    pub cookie: u64,
}

/// Slots of [`CUDA_COUNTERS_MAP`] (summed over CPUs by userspace).
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum CudaCounter {
    /// Every run of a CUDA program.
    Probes = 0,
    /// Calls lost because [`CUDA_EVENTS_MAP`] was full.
    RingFull = 1,
    /// Returns whose entry was not seen (the call began before the probe was attached).
    ReturnWithoutEntry = 2,
    /// Entries not remembered because [`CUDA_STARTS_MAP`] was full.
    StartsFull = 3,
}

/// Number of [`CudaCounter`] slots.
pub const CUDA_COUNTER_SLOTS: u32 = 4;

#[cfg(feature = "user")]
// SAFETY: `repr(C)` with only `u64` fields: no padding, any bit pattern valid.
unsafe impl aya::Pod for CudaCall {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for CallKey {}
