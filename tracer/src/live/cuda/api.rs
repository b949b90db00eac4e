//! The driver-API functions probed, by name as libcuda exports them. This table is the one
//! place that knows them; a function's index here is its probe's attach cookie.
//!
//! `_ptsz` / `_ptds` are the per-thread-default-stream entry points (what code built with
//! `--default-stream per-thread` calls); `_v2` are the 64-bit-pointer versions every
//! current CUDA runtime uses. A name a driver does not export is skipped.

use serde::Serialize;

/// What a call means for a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A kernel launch (counted).
    Launch,
    /// A CUDA graph launch (counted).
    GraphLaunch,
    /// The host waits for the GPU (timed, entry to return).
    Sync,
    /// A device-to-host copy (timed: a copy to pageable memory returns only when done).
    CopyDtoH,
}

impl Class {
    /// Timed classes get an entry and a return probe; the others an entry probe only.
    pub fn timed(self) -> bool {
        matches!(self, Class::Sync | Class::CopyDtoH)
    }
}

pub struct ApiFn {
    pub name: &'static str,
    pub class: Class,
}

const fn f(name: &'static str, class: Class) -> ApiFn {
    ApiFn { name, class }
}

pub static DRIVER_API: &[ApiFn] = &[
    f("cuLaunchKernel", Class::Launch),
    f("cuLaunchKernel_ptsz", Class::Launch),
    // cuBLAS(Lt) and CUDA 12+ runtimes launch through the Ex form.
    f("cuLaunchKernelEx", Class::Launch),
    f("cuLaunchKernelEx_ptsz", Class::Launch),
    f("cuGraphLaunch", Class::GraphLaunch),
    f("cuGraphLaunch_ptsz", Class::GraphLaunch),
    f("cuStreamSynchronize", Class::Sync),
    f("cuStreamSynchronize_ptsz", Class::Sync),
    f("cuEventSynchronize", Class::Sync),
    f("cuCtxSynchronize", Class::Sync),
    // Legacy 32-bit-pointer versions, kept for old binaries.
    f("cuMemcpyDtoH", Class::CopyDtoH),
    f("cuMemcpyDtoHAsync", Class::CopyDtoH),
    f("cuMemcpyDtoH_v2", Class::CopyDtoH),
    f("cuMemcpyDtoH_v2_ptds", Class::CopyDtoH),
    f("cuMemcpyDtoHAsync_v2", Class::CopyDtoH),
    f("cuMemcpyDtoHAsync_v2_ptsz", Class::CopyDtoH),
];

/// The function an attach cookie names, if any.
pub fn by_cookie(cookie: u64) -> Option<&'static ApiFn> {
    usize::try_from(cookie).ok().and_then(|i| DRIVER_API.get(i))
}
