//! `--format features`: one row per step with the regressors of a step-time model next to
//! the measured phase times, the table a simulator's step-time regression is fitted on (the
//! report's own fit, [`crate::offline::report::model`], uses the same columns).
//!
//! Columns: `step`, `pid`, `start_rel_ns`, `kind` (`prefill`: any prompt token in the batch,
//! `decode_only`, `idle`: nothing scheduled, empty: batch not captured), the features of
//! [`FEATURES`] (counts of tokens, requests, KV blocks), `schedule_ns`, `execute_ns`,
//! `update_ns`, `step_ns`, `tracer_ns`, then the CUDA columns of steps.csv (`cuda_*`,
//! `exec_*`) when any step has them. Units as in steps.csv; an empty cell was not observed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{
    offline::report::model::{StepKind, FEATURES},
    schema::rows::StepRow,
};

const PHASES: [&str; 5] = [
    "schedule_ns",
    "execute_ns",
    "update_ns",
    "step_ns",
    "tracer_ns",
];

/// steps.csv columns copied as they are, when any step has a value.
fn is_cuda(column: &str) -> bool {
    column.starts_with(crate::schema::load::CUDA_PREFIX) || column.starts_with("exec_")
}

pub fn write(dir: &Path, out: &Path) -> Result<()> {
    let path = dir.join("steps.csv");
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    let cuda: Vec<usize> = headers
        .iter()
        .enumerate()
        .filter(|&(i, name)| {
            is_cuda(name)
                && records
                    .iter()
                    .any(|r| r.get(i).is_some_and(|v| !v.is_empty()))
        })
        .map(|(i, _)| i)
        .collect();

    let mut writer = csv::Writer::from_writer(crate::schema::out_dir::create_file(out)?);
    let mut header = vec!["step", "pid", "start_rel_ns", "kind"];
    header.extend(FEATURES.iter().map(|f| f.name));
    header.extend(PHASES);
    header.extend(cuda.iter().map(|&i| &headers[i]));
    writer.write_record(&header)?;

    for (line, record) in records.iter().enumerate() {
        let step: StepRow = record.deserialize(Some(&headers)).with_context(|| {
            format!(
                "{}: row {} is not a steps.csv row",
                path.display(),
                line + 1
            )
        })?;
        let kind = match (StepKind::of(&step), step.scheduled_tokens) {
            (Some(kind), _) => kind.name(),
            (None, Some(0)) => "idle",
            (None, _) => "",
        };
        let mut row = vec![
            step.step.to_string(),
            step.pid.to_string(),
            step.start_rel_ns.to_string(),
            kind.to_string(),
        ];
        row.extend(
            FEATURES
                .iter()
                .map(|f| (f.get)(&step).map_or(String::new(), |v| v.to_string())),
        );
        row.extend([
            step.schedule_ns.to_string(),
            step.execute_ns.to_string(),
            step.update_ns.to_string(),
            step.step_ns.to_string(),
            step.tracer_ns.map_or(String::new(), |v| v.to_string()),
        ]);
        row.extend(cuda.iter().map(|&i| record[i].to_string()));
        writer.write_record(&row)?;
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", out.display()))
}
