//! Commands that read a finished trace folder: [`report`], [`compare`], [`perfetto`] and the
//! simulator [`export`]s. They see the folder only through [`crate::schema`], never the live
//! pipeline.

pub mod compare;
pub mod export;
pub mod perfetto;
pub mod report;
