//! `steps.csv`: one row per engine step.

use std::{fs::File, path::Path};

use crate::correlate::Step;

/// A row of steps.csv. Times are CLOCK_MONOTONIC ns; `start_rel_ns` counts from trace start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepRow {
    pub step: u64,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub start_rel_ns: i64,
    pub schedule_ns: u64,
    pub execute_ns: u64,
    pub update_ns: u64,
    pub step_ns: u64,
}

impl StepRow {
    /// The column names, in field order (a test checks they match the serialized rows).
    pub const HEADER: [&str; 9] = [
        "step",
        "pid",
        "tid",
        "start_ns",
        "start_rel_ns",
        "schedule_ns",
        "execute_ns",
        "update_ns",
        "step_ns",
    ];

    pub fn new(step: &Step, pid: u32, trace_start_ns: u64) -> Self {
        Self {
            step: step.index,
            pid,
            tid: step.tid,
            start_ns: step.start_ns,
            start_rel_ns: step.start_ns as i64 - trace_start_ns as i64,
            schedule_ns: step.schedule_ns(),
            execute_ns: step.execute_ns(),
            update_ns: step.update_ns(),
            step_ns: step.step_ns(),
        }
    }
}

pub struct StepsCsv {
    writer: csv::Writer<File>,
}

impl StepsCsv {
    pub fn create(path: &Path) -> csv::Result<Self> {
        let mut writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_path(path)?;
        // Written now, not with the first row, so a trace without steps still has it.
        writer.write_record(StepRow::HEADER)?;
        Ok(Self { writer })
    }

    pub fn write(&mut self, row: &StepRow) -> csv::Result<()> {
        self.writer.serialize(row)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_header() {
        let dir = std::env::temp_dir().join(format!("tracer-steps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("steps.csv");
        let step = Step {
            index: 3,
            tid: 11,
            start_ns: 1_000,
            schedule_done_ns: 1_040,
            execute_done_ns: 2_040,
            update_done_ns: 2_060,
        };
        let row = StepRow::new(&step, 10, 400);
        let mut csv = StepsCsv::create(&path).unwrap();
        csv.write(&row).unwrap();
        csv.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "step,pid,tid,start_ns,start_rel_ns,schedule_ns,execute_ns,update_ns,step_ns\n3,10,11,1000,600,40,1000,20,1060\n");
        let back: Vec<StepRow> = csv::Reader::from_path(&path)
            .unwrap()
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, [row]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
