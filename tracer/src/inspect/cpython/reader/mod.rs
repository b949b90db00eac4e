//! Decoding CPython objects from a process's memory, by address: [`PyReader`] and what it
//! returns. `base.rs` holds the reader, its errors and raw reads; each other file is one
//! `impl PyReader` block for one subject: type checks (`type_checks.rs`), builtin objects
//! (`objects.rs`), dicts (`dict.rs`), instance attributes (`attrs.rs`), code objects and
//! frames (`code.rs`), interpreter threads and stacks (`threads.rs`), and whole object graphs
//! (`value.rs`). Imports only [`crate::inspect::memory`] and its siblings
//! [`layout`](super::layout) and [`lines`](super::lines).
//!
//! Target memory is untrusted and changes under us: every size is capped, every object's
//! type pointer is checked against the type we expect, and a failure is a [`ReadError`]
//! (counted by the caller), never a guess.

mod attrs;
mod base;
mod code;
mod dict;
mod objects;
mod threads;
mod type_checks;
mod value;

pub use attrs::{AttrLocation, ValuesAt};
pub use base::{PyReader, ReadError, Result, TypeAddrs};
pub use code::Code;
pub use threads::{Frame, ThreadState};
pub use value::Value;
