//! `--format blis`: the request stream as an inference-sim (BLIS) TraceV2: a YAML header
//! (`<out>.yaml`) and a CSV (`<out>`), for `blis replay --trace-header H --trace-data D`
//! and `blis calibrate`.
//!
//! Followed: inference-sim/inference-sim `sim/workload/tracev2.go` (`TraceHeader`,
//! `traceV2Columns`, `ExportTraceV2`, `LoadTraceV2`, `parseTraceRecord`) and
//! `sim/workload/replay.go` (`LoadTraceV2Requests`) at commit
//! f90a1e3a6787da17c2cd463dab6fb2660b1b1760. The reader decodes the header strictly (an
//! unknown key is an error), reads the CSV by position (the 27 base columns; the optional
//! ones are left out here), integers with `strconv.Atoi`/`ParseInt`, `streaming` with
//! `ParseBool`; times are integer microseconds on one origin. Replay injects each request
//! at `send_time_us` (else `arrival_time_us`) with `server_input_tokens` (else
//! `input_tokens`) prompt tokens and `output_tokens` outputs.
//!
//! Times here are the engine's: arrival is when the request was first seen queued in the
//! engine (API-server time before that is not in the trace), first chunk is its first
//! output token, last chunk its finish, all from the first arrival. The requests already
//! queued when the trace began have no true arrival time: `warm_up_requests` counts them,
//! so `blis calibrate` leaves them out.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};

use super::stream::Stream;

/// BLIS's `traceV2Columns`, in order.
pub const COLUMNS: [&str; 27] = [
    "request_id",
    "client_id",
    "tenant_id",
    "slo_class",
    "session_id",
    "round_index",
    "prefix_group",
    "prefix_length",
    "streaming",
    "input_tokens",
    "output_tokens",
    "text_tokens",
    "image_tokens",
    "audio_tokens",
    "video_tokens",
    "reason_ratio",
    "model",
    "deadline_us",
    "server_input_tokens",
    "arrival_time_us",
    "send_time_us",
    "first_chunk_time_us",
    "last_chunk_time_us",
    "num_chunks",
    "status",
    "error_message",
    "finish_reason",
];

/// vLLM's final `RequestStatus` → BLIS `status` and vLLM's own `finish_reason` (vLLM's
/// `_FINISHED_REASON_MAP` in `vllm/v1/request.py`). Anything else (`UNFINISHED` at the
/// trace's end) is `incomplete`, as BLIS writes requests a run did not finish.
const STATUSES: &[(&str, &str, &str)] = &[
    ("FINISHED_STOPPED", "ok", "stop"),
    ("FINISHED_LENGTH_CAPPED", "ok", "length"),
    ("FINISHED_REPETITION", "ok", "repetition"),
    ("FINISHED_IGNORED", "error", "length"),
    ("FINISHED_ABORTED", "error", "abort"),
    ("FINISHED_ERROR", "error", "error"),
];

/// The header file written beside data file `out`.
pub fn header_path(out: &Path) -> std::path::PathBuf {
    out.with_extension("yaml")
}

/// Writes `dir`'s requests to `out` and the header to [`header_path`]`(out)`.
pub fn write(dir: &Path, out: &Path) -> Result<()> {
    let stream = Stream::read(dir)?;
    let info: serde_json::Value = std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let config = &info["config"];
    let model = config["model"].as_str().unwrap_or_default();

    let header = header_path(out);
    crate::schema::out_dir::write_file(&header, header_yaml(&stream, config).as_bytes())?;

    let mut writer = csv::Writer::from_writer(crate::schema::out_dir::create_file(out)?);
    writer.write_record(COLUMNS)?;
    for (i, r) in stream.requests.iter().enumerate() {
        let prompt = r.prompt_tokens.unwrap_or(0).to_string();
        let arrival = stream.micros(r.queued_ns).to_string();
        let at = |t: Option<u64>| t.map_or(0, |t| stream.micros(t)).to_string();
        let (status, finish_reason) = STATUSES
            .iter()
            .find(|(name, ..)| *name == r.finish_status)
            .map_or(("incomplete", ""), |(_, s, f)| (*s, *f));
        writer.write_record([
            i.to_string().as_str(),
            "",
            "",
            "",
            "",
            "0",
            "",
            "0",
            // Every output token is seen as it is produced.
            "true",
            &prompt,
            &r.output_tokens.to_string(),
            "0",
            "0",
            "0",
            "0",
            "0",
            model,
            "0",
            &prompt,
            &arrival,
            &arrival,
            &at(r.first_token_ns),
            &at(r.finished_ns),
            &r.output_tokens.to_string(),
            status,
            "",
            finish_reason,
        ])?;
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", out.display()))
}

/// The `TraceHeader` YAML: only keys BLIS knows (it decodes strictly), the server block
/// from run.json's `config` where the values have the types BLIS reads.
fn header_yaml(stream: &Stream, config: &serde_json::Value) -> String {
    let mut out = format!(
        "trace_version: 2\ntime_unit: us\nmode: real\nwarm_up_requests: {}\nserver:\n  type: vllm\n",
        stream.at_start
    );
    if let Some(model) = config["model"].as_str() {
        // A JSON string is a YAML double-quoted scalar.
        let _ = writeln!(out, "  model: {}", serde_json::Value::from(model));
    }
    for key in ["max_num_seqs", "block_size", "max_model_len"] {
        if let Some(v) = config[key].as_u64() {
            let _ = writeln!(out, "  {key}: {v}");
        }
    }
    if let Some(v) = config["gpu_memory_utilization"].as_f64() {
        let _ = writeln!(out, "  gpu_memory_utilization: {v}");
    }
    out
}
