//! Diagnostic commands: [`doctor`] (can this machine trace?) and [`probes`] (what would be
//! watched in a process). They use the live pipeline's first stages, and write no trace.

pub mod doctor;
pub mod probes;
