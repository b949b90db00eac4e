//! `--format vidur`: the request stream as Vidur's trace-replay request generator reads it.
//!
//! Followed: microsoft/vidur `vidur/request_generator/trace_replay_request_generator.py` and
//! `data/processed_traces/splitwise_conv.csv` at commit
//! 7d47513363ec447a741ac5e47241580b47724fbf. The generator reads the file with
//! `pandas.read_csv`, takes the columns by name, casts the token counts to int and clips
//! them to at least 1, keeps `num_prefill_tokens + num_decode_tokens <= max_tokens` by
//! shortening the prompt, and scales `arrived_at` (seconds) by `time_scale_factor`.
//!
//! `num_prefill_tokens` is the whole prompt (Vidur models no prefix cache), and
//! `num_decode_tokens` the tokens the request produced while traced (all of them for a
//! request that finished; what it had when the trace ended otherwise).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::stream::Stream;

/// One row of Vidur's request trace; names and order as in its processed traces.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct VidurRow {
    /// Seconds since the first request's arrival.
    pub arrived_at: f64,
    pub num_prefill_tokens: u32,
    pub num_decode_tokens: u32,
}

pub fn write(dir: &Path, out: &Path) -> Result<()> {
    let stream = Stream::read(dir)?;
    let mut writer = csv::Writer::from_writer(crate::schema::out_dir::create_file(out)?);
    for r in &stream.requests {
        writer.serialize(VidurRow {
            arrived_at: r.queued_ns.saturating_sub(stream.origin_ns) as f64 / 1e9,
            num_prefill_tokens: r.prompt_tokens.unwrap_or(0),
            num_decode_tokens: r.output_tokens,
        })?;
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", out.display()))
}
