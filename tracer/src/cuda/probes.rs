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
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        ProgramError, UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    cuda::{
        CudaCounter, CUDA_COUNTERS_MAP, CUDA_COUNT_PROGRAM, CUDA_ENTER_PROGRAM, CUDA_EVENTS_BYTES,
        CUDA_EVENTS_MAP, CUDA_EXIT_PROGRAM,
    },
    EVENTS_MAP,
};

use crate::attach::EBPF_OBJECT;

pub struct CudaProbes {
    /// Holds the programs and their uprobe links; dropping it detaches them all, which
    /// takes an RCU grace period per probe, serialized in the kernel (~90 ms each on our
    /// VM): ~2.4 s for the 26 probes of `--cuda launches`.
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
            program.attach(point, library, scope).map_err(|e| match e {
                ProgramError::SyscallError(e) => format!("{}: {}", e.call, e.io_error),
                other => other.to_string(),
            })?;
        }
        Ok(())
    }

    /// A counter summed over CPUs (0 if it cannot be read).
    pub fn counter(&self, counter: CudaCounter) -> u64 {
        self.counters
            .get(&(counter as u32), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}
