//! Reading a CPython interpreter from outside: per-version struct layouts ([`layout`]), a
//! remote object reader ([`reader`]), bytecode scanning ([`bytecode`]) and line tables
//! ([`lines`]). Imports only [`crate::inspect::memory`].

pub mod bytecode;
pub mod layout;
pub mod lines;
pub mod reader;

pub use layout::Layout;
pub use reader::{AttrLocation, PyReader, ReadError, TypeAddrs, Value, ValuesAt};
