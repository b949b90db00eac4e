//! `tracer`: watch an unmodified, running vLLM engine with eBPF and write what every engine
//! step did.
//!
//! Four layers, each importing only from the ones listed before it:
//! [`inspect`] reads a live process (memory, CPython objects, per-version tables);
//! [`schema`] is the trace folder, the contract between the halves; [`live`] is the
//! pipeline that attaches and writes a trace folder; [`offline`] reads trace folders
//! (report, compare, exports); [`tools`] are the diagnostic commands. [`text`] makes target
//! text safe to print, [`clock`] is the probes' clock and [`stderr`] the tracer's own lines,
//! everywhere.

pub mod clock;
pub mod inspect;
pub mod live;
pub mod offline;
pub mod schema;
pub mod stderr;
pub mod text;
pub mod tools;
