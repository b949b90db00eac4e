//! The per-step columns of the in-process logger (DESIGN §5): what researchers wrote from a
//! patched `EngineCore.step` with pandas. Batch columns come from steps.csv and queues.csv,
//! settings from run.json's `config`, and what only the benchmark client knows
//! (`temperature`, `arrival_rate`, `distribution`, `dataset`) from `--label`s.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::schema::{
    load::read_all,
    rows::{Queue, QueueRow, StepRow},
};

/// One step as the in-process logger wrote it. Names and order are that logger's.
#[derive(Debug, Serialize)]
pub struct SeedRow {
    /// `scheduler_output.num_scheduled_tokens` as pandas writes a dict cell:
    /// `{'request-id': tokens, ...}` in running-list order.
    pub num_scheduled_tokens: String,
    pub num_total_scheduled_tokens: Option<u32>,
    /// Requests scheduled for the first time in this step.
    pub scheduled_new_reqs: Option<u32>,
    pub execute_time: f64,
    pub scheduler_time: f64,
    pub update_time: f64,
    pub model: String,
    pub block_size: String,
    pub gpu_memory_utilization: String,
    pub num_gpu_blocks: String,
    pub enable_prefix_caching: String,
    pub max_num_sequences: String,
    pub max_model_len: String,
    pub temperature: String,
    pub arrival_rate: String,
    pub distribution: String,
    pub dataset: String,
}

/// A run.json value as pandas prints the Python value (`True`, `0.9`, `''` for None).
fn python_cell(value: Option<&serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::Bool(true)) => "True".into(),
        Some(serde_json::Value::Bool(false)) => "False".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A Python dict literal of request id → tokens (ids escaped as `repr` would).
fn python_dict(entries: &[(String, u32)]) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|(id, tokens)| {
            format!(
                "'{}': {tokens}",
                id.replace('\\', "\\\\").replace('\'', "\\'")
            )
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Writes engine directory `dir`'s steps as the logger's rows to `out`.
pub fn write(dir: &Path, out: &Path) -> Result<()> {
    let steps: Vec<StepRow> = read_all(&dir.join("steps.csv"))?;
    let queues_path = dir.join("queues.csv");
    let queues: Vec<QueueRow> = if queues_path.exists() {
        read_all(&queues_path)?
    } else {
        Vec::new()
    };
    let mut scheduled: BTreeMap<u64, Vec<(String, u32)>> = BTreeMap::new();
    for q in queues {
        if q.queue == Queue::Running && q.scheduled_tokens > 0 {
            scheduled
                .entry(q.step)
                .or_default()
                .push((q.request_id, q.scheduled_tokens));
        }
    }
    let info_path = dir.join("run.json");
    let info: serde_json::Value = match std::fs::read_to_string(&info_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", info_path.display()))?,
        Err(_) => serde_json::Value::Null,
    };
    let config = |key: &str| python_cell(info["config"].get(key));
    let label = |key: &str| python_cell(info["labels"].get(key));

    let mut writer = csv::Writer::from_writer(crate::schema::out_dir::create_file(out)?);
    for step in &steps {
        writer.serialize(SeedRow {
            num_scheduled_tokens: python_dict(scheduled.get(&step.step).map_or(&[], Vec::as_slice)),
            num_total_scheduled_tokens: step.scheduled_tokens,
            scheduled_new_reqs: step.new_requests,
            execute_time: seconds(step.execute_ns),
            scheduler_time: seconds(step.schedule_ns),
            update_time: seconds(step.update_ns),
            model: config("model"),
            block_size: config("block_size"),
            gpu_memory_utilization: config("gpu_memory_utilization"),
            num_gpu_blocks: config("num_gpu_blocks"),
            enable_prefix_caching: config("enable_prefix_caching"),
            max_num_sequences: config("max_num_seqs"),
            max_model_len: config("max_model_len"),
            temperature: label("temperature"),
            arrival_rate: label("arrival_rate"),
            distribution: label("distribution"),
            dataset: label("dataset"),
        })?;
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_as_python_wrote_them() {
        assert_eq!(python_dict(&[]), "{}");
        assert_eq!(
            python_dict(&[("a'b".into(), 3), ("c".into(), 1)]),
            r"{'a\'b': 3, 'c': 1}"
        );
        assert_eq!(python_cell(Some(&serde_json::json!(true))), "True");
        assert_eq!(python_cell(Some(&serde_json::json!(0.9))), "0.9");
        assert_eq!(python_cell(Some(&serde_json::Value::Null)), "");
    }
}
