//! The live pipeline, a module per stage, each handing its type to the next: [`discover`]
//! (pid → CPython runtime) → [`resolve`] (qualified names → code objects, engine thread) →
//! [`plan`] (instruction bytes to watch) → [`attach`] (eBPF + hardware watchpoints) →
//! [`decode`] (ring-buffer records → hits) → [`shadow`] (copies finished off the engine
//! thread) → [`correlate`] (hits → steps, requests) → [`sinks`] (the trace folder).
//! [`snapshot`] plans and reads the scheduler copies, [`cuda`] folds CUDA calls into steps,
//! [`session`] runs it all, [`status`] keeps the operator informed on stderr; [`engines`]
//! and [`launch`] find or start the engine; [`record`] keeps a trace's raw records for tests
//! that replay them.
//! Imports [`crate::inspect`], [`crate::schema`], and [`crate::offline`]'s writers at the end.

pub mod attach;
pub mod correlate;
pub mod cuda;
pub mod decode;
pub mod discover;
pub mod engines;
pub mod launch;
pub mod plan;
pub mod record;
#[cfg(test)]
mod replay;
pub mod resolve;
pub mod session;
pub mod shadow;
pub mod sinks;
pub mod snapshot;
pub mod status;
