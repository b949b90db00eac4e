//! The trace folder: its rows and run.json as types ([`rows`], [`run_info`]), and their
//! reader ([`load`]). The contract between [`crate::live`], which writes it, and
//! [`crate::offline`], which reads it; it imports neither.

pub mod load;
pub mod rows;
pub mod run_info;
