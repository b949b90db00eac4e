//! `run.json`: what was traced, how, and everything that was lost or filtered on the way.

use serde::Serialize;

use super::{OutDir, Totals};
use crate::live::{
    correlate::{requests::RequestCounts, CorrelateCounts},
    decode::DecodeCounts,
    snapshot::Budgets,
};

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub tracer_version: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub exe: String,
    pub cmdline: String,
    pub python_version: String,
    pub vllm_version: Option<String>,
    /// The engine's settings read from the target (`null`: not readable in this release).
    pub config: serde_json::Map<String, serde_json::Value>,
    pub python_binary: String,
    /// How hits that execute a watched instruction are told from ones that rewrite it.
    pub rewrite_filter: String,
    pub engine_shape: &'static str,
    /// Why the release is outside the tables (not measured, or no row fits its step), if it
    /// is; the trace goes on by the nearest row.
    pub unknown_release: Option<String>,
    /// The call whose return ends the execute phase.
    pub execute_ends_at: String,
    /// Why batch, request and queue columns are off, when snapshots were asked for but could
    /// not be planned.
    pub snapshots_off: Option<String>,
    /// `file:column` of every column that no row filled although this trace was to fill it.
    pub empty_columns: Vec<String>,
    pub step_function: String,
    pub probes: Vec<ProbeInfo>,
    /// CLOCK_MONOTONIC ns when the probes went in and when the trace ended.
    pub trace_start_ns: u64,
    pub trace_end_ns: u64,
    pub attach_ms: f64,
    pub end_reason: String,
    pub totals: Totals,
    pub counters: Counters,
    /// The scheduler's budgets read from the target (absent when snapshots were off).
    pub scheduler: Option<Budgets>,
    pub cuda: crate::live::cuda::CudaReport,
}

#[derive(Debug, Serialize)]
pub struct ProbeInfo {
    pub mark: String,
    pub bytecode_offset: usize,
    pub address: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Counters {
    /// Runs of the eBPF program.
    pub probe_hits: u64,
    /// Hits lost because the ring buffer was full.
    pub ring_buffer_drops: u64,
    pub decode: DecodeCounts,
    pub correlate: CorrelateCounts,
    pub requests: RequestCounts,
    /// Requests whose id and arrival were neither copied by the kernel side nor readable
    /// from the target (written as `request@<address>`).
    pub request_reads: u64,
    /// Kernel-side request facts lost because their ring buffer was full.
    pub facts_dropped: u64,
    /// Snapshot hits, and those whose record could not be built.
    pub snapshots: u64,
    pub snapshots_failed: u64,
    /// Snapshots lost because the ring buffer was full (their hits were kept).
    pub snapshots_dropped: u64,
    /// Shadow copies (`--snapshots`), absent with `--phases-only`.
    pub shadow: Option<crate::live::shadow::ShadowCounts>,
}

/// `file:column` for each column of steps.csv and requests.csv that is empty in every row of
/// a file that has rows, among the columns `wanted` accepts.
pub fn empty_columns(dir: &std::path::Path, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for file in ["steps.csv", "requests.csv"] {
        let Ok(mut reader) = csv::Reader::from_path(dir.join(file)) else {
            continue;
        };
        let Ok(header) = reader.headers().cloned() else {
            continue;
        };
        let mut filled = vec![false; header.len()];
        let mut rows = 0u64;
        for record in reader.records().map_while(Result::ok) {
            rows += 1;
            for (seen, cell) in filled.iter_mut().zip(record.iter()) {
                *seen |= !cell.is_empty();
            }
        }
        if rows == 0 {
            continue;
        }
        out.extend(
            header
                .iter()
                .zip(&filled)
                .filter(|(column, seen)| !**seen && wanted(column))
                .map(|(column, _)| format!("{file}:{column}")),
        );
    }
    out
}

impl RunInfo {
    /// Writes `dir/run.json`.
    pub fn write(&self, dir: &OutDir) -> anyhow::Result<()> {
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        dir.write("run.json", &text)
    }
}
