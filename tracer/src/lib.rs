//! `tracer`: watch an unmodified, running vLLM engine with eBPF and write what every engine
//! step did.
//!
//! Layers, each importing only from the ones before it (`cargo xtask modules` checks):
//! [`inspect`] reads a live process (memory, CPython objects, per-version tables) and
//! [`schema`] is the trace folder (the contract between the halves); [`offline`] reads trace
//! folders (report, compare, exports); [`live`] is the pipeline that attaches and writes a
//! trace folder; [`tools`] are the diagnostic commands. Below them all: [`text`] makes target
//! text safe to print, [`clock`] is the probes' clock.

pub mod clock;
pub mod inspect;
pub mod live;
pub mod offline;
pub mod schema;
#[cfg(test)]
mod test_rng;
pub mod text;
pub mod tools;
