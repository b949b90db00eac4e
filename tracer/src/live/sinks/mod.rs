//! Stage 7, sinks: the files a trace writes. Rows stream out as steps complete; nothing is
//! held in memory beyond the running totals of the summary. The types written, and the
//! directory they go into ([`OutDir`]), are [`crate::schema`]'s; this only writes them.

pub mod csv_sink;
pub mod run_json;
mod steps_csv;

pub use steps_csv::{StepRow, StepsCsv};

use self::csv_sink::CsvSink;
pub use crate::schema::out_dir::{self, OutDir};
use crate::{
    live::correlate::requests::StepOutput,
    schema::rows::{EventRow, QueueRow, RankRow, RequestRow},
};

/// Every file a trace writes into its directory: checked by [`OutDir::check_names`] before
/// a trace starts.
pub const TRACE_FILES: &[&str] = &[
    "steps.csv",
    "requests.csv",
    "events.csv",
    "queues.csv",
    "ranks.csv",
    "run.json",
    "trace.json",
    "seed.csv",
];

/// The CSV files of a trace, created (with headers) before the first step.
pub struct Outputs {
    /// The output directory, flock'ed: a second tracer pointed at it (two tracers, both on
    /// the default `-o out`) would truncate the files this one is writing.
    _lock: std::fs::File,
    pub steps: StepsCsv,
    pub requests: CsvSink<RequestRow>,
    pub events: CsvSink<EventRow>,
    pub queues: CsvSink<QueueRow>,
    pub ranks: CsvSink<RankRow>,
}

impl Outputs {
    pub fn create(dir: &OutDir) -> anyhow::Result<Self> {
        let lock = dir.lock()?;
        Ok(Self {
            _lock: lock,
            steps: CsvSink::create(dir, "steps.csv")?,
            requests: CsvSink::create(dir, "requests.csv")?,
            events: CsvSink::create(dir, "events.csv")?,
            queues: CsvSink::create(dir, "queues.csv")?,
            ranks: CsvSink::create(dir, "ranks.csv")?,
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
        self.queues.flush()?;
        self.ranks.flush()
    }
}
