//! `tracer export`: a trace's CSVs rewritten in the shape another tool reads, one module per
//! format. Reads the folder through [`crate::schema`]; [`features`] shares the report's
//! step-time regressors ([`crate::offline::report::model`]).

use std::path::{Path, PathBuf};

use anyhow::Result;

pub mod blis;
pub mod features;
pub mod seed;
mod stream;
pub mod vidur;

/// Output formats of `tracer export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One row per step with the columns of the in-process step logger researchers patch
    /// into vLLM's core.py (times in seconds), so existing notebooks read it unchanged.
    Seed,
    /// One row per step: the batch features a step-time model regresses on (tokens,
    /// requests, context, KV blocks) next to the measured phase ns and CUDA columns.
    Features,
    /// The request stream as an inference-sim (BLIS) TraceV2: blis.csv and its header
    /// blis.yaml, for `blis replay --trace-header blis.yaml --trace-data blis.csv`.
    Blis,
    /// The request stream as Vidur's trace-replay CSV (arrived_at s, prefill and decode
    /// tokens).
    Vidur,
}

impl Format {
    fn file_name(self) -> &'static str {
        match self {
            Format::Seed => "seed.csv",
            Format::Features => "features.csv",
            Format::Blis => "blis.csv",
            Format::Vidur => "vidur.csv",
        }
    }
}

/// Exports every engine directory of trace `dir`; each output goes next to its CSVs (or
/// into `out`, suffixed by the engine directory's name when there are several). Returns
/// the files written.
pub fn export(dir: &Path, format: Format, out: Option<&Path>) -> Result<Vec<PathBuf>> {
    let engines = crate::schema::load::engine_dirs(dir)?;
    let several = engines.len() > 1;
    engines
        .iter()
        .map(|engine| {
            let path = match out {
                None => engine.join(format.file_name()),
                Some(out) if several => {
                    let name = engine.file_name().unwrap_or_default().to_string_lossy();
                    out.join(format!("{name}-{}", format.file_name()))
                }
                Some(out) => out.to_path_buf(),
            };
            match format {
                Format::Seed => seed::write(engine, &path)?,
                Format::Features => features::write(engine, &path)?,
                Format::Blis => {
                    blis::write(engine, &path)?;
                    return Ok(vec![blis::header_path(&path), path]);
                }
                Format::Vidur => vidur::write(engine, &path)?,
            }
            Ok(vec![path])
        })
        .collect::<Result<Vec<_>>>()
        .map(|written| written.concat())
}
