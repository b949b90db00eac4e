//! Reading a CPython interpreter from outside: per-version layouts, a remote object reader,
//! and bytecode scanning.

pub mod bytecode;
pub mod layout;
pub mod lines;
pub mod reader;
mod tables;

pub use layout::Layout;
pub use reader::{AttrLocation, PyReader, ReadError, TypeAddrs, Value, ValuesAt};
