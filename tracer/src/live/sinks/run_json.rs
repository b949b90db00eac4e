//! Writes `run.json` ([`RunInfo`], its contract in [`crate::schema::run_info`]), and finds the
//! columns a trace left empty for it.

use super::OutDir;
use crate::schema::run_info::RunInfo;

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
