//! The trace folder: its rows and run.json as types ([`rows`], [`run_info`]), their reader
//! ([`load`]), and the safe creation of its files ([`out_dir`]). The contract between
//! [`crate::live`], which writes it, and [`crate::offline`], which reads it (and writes
//! reports and exports beside it); imports only [`crate::text`], never either of them.

pub mod load;
pub mod out_dir;
pub mod rows;
pub mod run_info;
