//! Diagnostic commands: [`doctor`] (can this machine trace?), [`probes`] (what would be
//! watched in a process), [`status`] (a running trace's progress). They use the live
//! pipeline's first stages, and write no trace.

pub mod doctor;
pub mod probes;
pub mod status;
