//! The CUDA programs, loaded once, and their uprobes on each traced process's libcuda.
//!
//! The programs live in the same eBPF object as the watch program but in their own loaded
//! instance, so late attaches (a process that loads libcuda after we started) need nothing
//! from the watch path. In this instance the watch ring is shrunk to one page; in the watch
//! path's instance the CUDA ring keeps the object's one page.

use std::{num::NonZeroU32, path::Path};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
        PerfEvent, ProgramError, UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    cuda::{
        CudaCounter, BATCH_MARK_PROGRAM, CUDA_COUNTERS_MAP, CUDA_COUNT_PROGRAM, CUDA_ENTER_PROGRAM,
        CUDA_EVENTS_BYTES, CUDA_EVENTS_MAP, CUDA_EXIT_PROGRAM,
    },
    EVENTS_MAP,
};

use crate::live::attach::{watch_byte, EBPF_OBJECT};

pub struct CudaProbes {
    /// The uprobes. The kernel detaches them one after the other, each after a grace period
    /// (~100 ms on our VM even when closed from parallel threads: 2.6 s for the 26 probes of
    /// `--cuda launches`; 1.4-1.9 s on the H200 box), so [`Drop`] leaves that wait to a
    /// detached process (see there).
    links: Vec<UProbeLink>,
    /// Holds the programs.
    ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
}

impl CudaProbes {
    pub fn load() -> Result<Self, String> {
        let mut ebpf = EbpfLoader::new()
            // The programs need no CO-RE relocations: skip parsing the kernel's BTF again.
            .btf(None)
            // aya rounds ring sizes up to whole pages.
            .map_max_entries(EVENTS_MAP, 1)
            .map_max_entries(CUDA_EVENTS_MAP, CUDA_EVENTS_BYTES)
            .load(EBPF_OBJECT)
            .map_err(|e| e.to_string())?;
        for name in [CUDA_COUNT_PROGRAM, CUDA_ENTER_PROGRAM, CUDA_EXIT_PROGRAM] {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("{name} missing from the eBPF object"))?
                .try_into()
                .map_err(|e: ProgramError| e.to_string())?;
            program.load().map_err(|e| format!("{name}: {e}"))?;
        }
        let marks: &mut PerfEvent = ebpf
            .program_mut(BATCH_MARK_PROGRAM)
            .ok_or_else(|| format!("{BATCH_MARK_PROGRAM} missing from the eBPF object"))?
            .try_into()
            .map_err(|e: ProgramError| e.to_string())?;
        marks
            .load()
            .map_err(|e| format!("{BATCH_MARK_PROGRAM}: {e}"))?;
        let ring = ebpf
            .take_map(CUDA_EVENTS_MAP)
            .ok_or("CUDA events map missing")?
            .try_into()
            .map_err(|e: aya::maps::MapError| e.to_string())?;
        let counters = ebpf
            .take_map(CUDA_COUNTERS_MAP)
            .ok_or("CUDA counters map missing")?
            .try_into()
            .map_err(|e: aya::maps::MapError| e.to_string())?;
        Ok(Self {
            links: Vec::new(),
            ebpf,
            ring,
            counters,
        })
    }

    /// Probes one function of the libcuda file `library` (a path that reaches it from
    /// here) for process `pid` only: uprobes filter by process, so other processes using
    /// the same library are not slowed down or counted. `cookie` comes back in its calls.
    pub fn attach(
        &mut self,
        pid: u32,
        library: &Path,
        offset: u64,
        cookie: usize,
        timed: bool,
    ) -> Result<(), String> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
        let programs: &[&str] = if timed {
            &[CUDA_ENTER_PROGRAM, CUDA_EXIT_PROGRAM]
        } else {
            &[CUDA_COUNT_PROGRAM]
        };
        for name in programs {
            let program: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .expect("loaded in load()")
                .try_into()
                .expect("a uprobe program");
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(cookie as u64),
            };
            let link = program
                .attach(point, library, scope)
                .and_then(|id| program.take_link(id))
                .map_err(|e| match e {
                    ProgramError::SyscallError(e) => format!("{}: {}", e.call, e.io_error),
                    other => other.to_string(),
                })?;
            self.links.push(link);
        }
        Ok(())
    }

    /// Marks each batch a worker thread begins: a watchpoint on the instruction byte at
    /// `addr` (the `RESUME` of its per-batch function) of thread `tid` only. Detached with
    /// the programs.
    pub fn mark_batches(&mut self, tid: u32, addr: u64) -> Result<(), std::io::Error> {
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(BATCH_MARK_PROGRAM)
            .expect("loaded in load()")
            .try_into()
            .expect("a perf_event program");
        watch_byte(program, tid, addr)
    }

    /// A counter summed over CPUs (0 if it cannot be read).
    pub fn counter(&self, counter: CudaCounter) -> u64 {
        self.counters
            .get(&(counter as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

/// Everything is written when the probes go (the trace's end): a grandchild with stdio on
/// /dev/null (nobody waits for its output) takes over the links, waits until this process
/// has exited, and closes the last references then. This process leaves its references to
/// the kernel's exit, which is quick while the grandchild holds the links: the tracer exits
/// at once, and the probes keep firing in the target (their ring unread) until the kernel
/// has removed them. Without fork, the links are closed here.
impl Drop for CudaProbes {
    fn drop(&mut self) {
        if self.links.is_empty() {
            return;
        }
        // SAFETY: the children call only async-signal-safe functions (fork, open, dup2,
        // pidfd_open, poll, close_range, _exit) before exiting, as a fork of a threaded
        // process must.
        unsafe {
            let tracer = libc::getpid();
            match libc::fork() {
                0 => {
                    if libc::fork() == 0 {
                        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                        for fd in 0..3 {
                            libc::dup2(null, fd);
                        }
                        let exited = libc::syscall(libc::SYS_pidfd_open, tracer, 0) as i32;
                        if exited >= 0 {
                            let mut poll = libc::pollfd {
                                fd: exited,
                                events: libc::POLLIN,
                                revents: 0,
                            };
                            libc::poll(&mut poll, 1, -1);
                        }
                        libc::close_range(3, u32::MAX, 0);
                    }
                    libc::_exit(0);
                }
                child if child > 0 => {
                    libc::waitpid(child, std::ptr::null_mut(), 0);
                    std::mem::forget(std::mem::take(&mut self.links));
                }
                _ => {}
            }
        }
    }
}
