//! `tracer`: watch an unmodified, running vLLM engine with eBPF and write what every engine
//! step did.
//!
//! The pipeline, one module per stage, each handing its type to the next:
//! [`discover`] (pid → CPython runtime) → [`resolve`] (qualified names → code objects, engine
//! thread) → [`plan`] (instruction bytes to watch) → [`attach`] (eBPF + hardware watchpoints)
//! → [`decode`] (ring-buffer records → hits) → [`correlate`] (hits → steps) → [`sinks`]
//! (CSV, run.json). [`trace`] runs them; [`cpython`] and [`vllm`] hold per-version knowledge.

pub mod attach;
pub mod correlate;
pub mod cpython;
pub mod decode;
pub mod discover;
pub mod memory;
pub mod plan;
pub mod resolve;
pub mod sinks;
pub mod trace;
pub mod vllm;
