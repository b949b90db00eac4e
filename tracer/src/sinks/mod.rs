//! Stage 7, sinks: the files a trace writes. Rows stream out as steps complete; nothing is
//! held in memory beyond the running totals of the summary.

pub mod run_json;
mod steps_csv;

pub use run_json::RunInfo;
pub use steps_csv::{StepRow, StepsCsv};

/// Running totals for the end-of-trace summary line.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Totals {
    pub steps: u64,
    pub schedule_ns: u64,
    pub execute_ns: u64,
    pub update_ns: u64,
    pub step_ns: u64,
}

impl Totals {
    pub fn add(&mut self, row: &StepRow) {
        self.steps += 1;
        self.schedule_ns += row.schedule_ns;
        self.execute_ns += row.execute_ns;
        self.update_ns += row.update_ns;
        self.step_ns += row.step_ns;
    }

    /// E.g. `2000 steps, mean 1.08 ms: schedule 2.1 %, execute 95.5 %, update 2.4 %`.
    pub fn summary(&self) -> String {
        if self.steps == 0 || self.step_ns == 0 {
            return "0 steps".into();
        }
        let share = |ns: u64| 100.0 * ns as f64 / self.step_ns as f64;
        format!(
            "{} steps, mean {:.3} ms: schedule {:.1} %, execute {:.1} %, update {:.1} %",
            self.steps,
            self.step_ns as f64 / self.steps as f64 / 1e6,
            share(self.schedule_ns),
            share(self.execute_ns),
            share(self.update_ns)
        )
    }
}
