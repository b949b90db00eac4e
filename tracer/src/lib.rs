//! `tracer`: watch an unmodified, running vLLM engine with eBPF and write what every engine
//! step did.
//!
//! The pipeline, one module per stage, each handing its type to the next:
//! [`discover`] (pid → CPython runtime) → [`resolve`] (qualified names → code objects, engine
//! thread) → [`plan`] (instruction bytes to watch) → [`attach`] (eBPF + hardware watchpoints)
//! → [`decode`] (ring-buffer records → hits) → [`correlate`] (hits → steps) → [`sinks`]
//! (CSV, run.json). [`trace`] runs them; [`cpython`] and [`vllm`] hold per-version knowledge.

pub mod attach;
pub mod capture;
pub mod compare;
pub mod correlate;
pub mod cpython;
pub mod cuda;
pub mod decode;
pub mod discover;
pub mod doctor;
pub mod engines;
pub mod export;
pub mod launch;
pub mod mapped;
pub mod memory;
pub mod perfetto;
pub mod plan;
pub mod probes;
pub mod report;
pub mod resolve;
pub mod shadow;
pub mod sinks;
pub mod status;
pub mod text;
pub mod trace;
pub mod vllm;
