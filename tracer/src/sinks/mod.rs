//! Stage 7, sinks: the files a trace writes. Rows stream out as steps complete; nothing is
//! held in memory beyond the running totals of the summary.

pub mod csv_sink;
pub mod rows;
pub mod run_json;
mod steps_csv;

use std::{os::fd::AsRawFd as _, path::Path};

use anyhow::Context as _;
use rows::{EventRow, QueueRow, RequestRow};
pub use run_json::RunInfo;
pub use steps_csv::{StepRow, StepsCsv};

use self::csv_sink::CsvSink;
use crate::correlate::requests::StepOutput;

/// The CSV files of a trace, created (with headers) before the first step.
pub struct Outputs {
    /// The output directory, flock'ed: a second tracer pointed at it (two tracers, both on
    /// the default `-o out`) would truncate the files this one is writing.
    _lock: std::fs::File,
    pub steps: StepsCsv,
    pub requests: CsvSink<RequestRow>,
    pub events: CsvSink<EventRow>,
    pub queues: CsvSink<QueueRow>,
}

impl Outputs {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        fn create<R: csv_sink::Row>(dir: &Path, name: &str) -> anyhow::Result<CsvSink<R>> {
            let path = dir.join(name);
            CsvSink::create(&path).with_context(|| format!("creating {}", path.display()))
        }
        let lock =
            std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "{} is in use by another tracer (give this one its own -o DIR): {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            _lock: lock,
            steps: create(dir, "steps.csv")?,
            requests: create(dir, "requests.csv")?,
            events: create(dir, "events.csv")?,
            queues: create(dir, "queues.csv")?,
        })
    }

    /// The events, queue rows and finished requests of one step.
    pub fn write_step_details(&mut self, out: &StepOutput) -> csv::Result<()> {
        out.events
            .iter()
            .try_for_each(|row| self.events.write(row))?;
        out.queues
            .iter()
            .try_for_each(|row| self.queues.write(row))?;
        out.finished
            .iter()
            .try_for_each(|row| self.requests.write(row))
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.steps.flush()?;
        self.requests.flush()?;
        self.events.flush()?;
        self.queues.flush()
    }
}

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
