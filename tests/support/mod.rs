//! Helpers for the integration tests: the workspace's paths and interpreters, the trace
//! folder's files, and waiting for a condition (a line, rows in a file, a process state)
//! with a deadline, never for a fixed time. `procs` starts and kills the processes,
//! `synthetic` writes trace folders whose every number is known, `trace_events` checks
//! Chrome trace JSON; each test file declares `mod support;` and uses its own subset.

#![allow(dead_code)]

pub mod procs;
pub mod synthetic;
pub mod trace_events;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

#[allow(unused_imports)] // tests/fixture.rs starts no process
pub use procs::*;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn tracer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tracer")
}

/// Tests that time things run one at a time: two fixtures spinning on two cores would
/// measure the scheduler, not the tracer.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pyenv interpreter by version, e.g. `pyenv("3.11.7")`; panics if it is not installed,
/// so a machine without the test matrix fails loudly instead of skipping.
pub fn pyenv(version: &str) -> String {
    let home = std::env::var("HOME").unwrap();
    let path = format!("{home}/.pyenv/versions/{version}/bin/python3");
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: the tests need the pyenv interpreters"
    );
    path
}

/// An interpreter that `cargo xtask python <minor>` put into `.pythons/<minor>/bin/<exe>`
/// (e.g. `built_python("3.14", "python3.14")`), or `None` if it is not there: a fresh
/// machine that cannot make it skips these rows (the test passes, and says so on stderr
/// with `SKIPPED`; `cargo xtask test` prints the reason in its summary).
pub fn built_python(minor: &str, exe: &str) -> Option<String> {
    let path = root().join(".pythons").join(minor).join("bin").join(exe);
    if path.exists() {
        Some(path.to_str().unwrap().to_owned())
    } else {
        eprintln!(
            "SKIPPED: {} is not there (`cargo xtask python {minor}` makes it)",
            path.display()
        );
        None
    }
}

/// A row of the fixture's ground-truth CSV.
#[derive(Debug, serde::Deserialize)]
pub struct TruthRow {
    pub step: u64,
    pub start_ns: u64,
    pub after_schedule_ns: u64,
    pub after_execute_ns: u64,
    pub after_update_ns: u64,
}

impl TruthRow {
    /// (schedule, execute, update, step) durations in ns.
    pub fn phases(&self) -> [u64; 4] {
        [
            self.after_schedule_ns - self.start_ns,
            self.after_execute_ns - self.after_schedule_ns,
            self.after_update_ns - self.after_execute_ns,
            self.after_update_ns - self.start_ns,
        ]
    }
}

pub fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Percentile (0–100) of absolute values, nearest rank.
pub fn percentile(values: &mut [i64], p: f64) -> i64 {
    values.sort_by_key(|v| v.abs());
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize - 1;
    values[rank.min(values.len() - 1)].abs()
}

/// Waits until `done` holds, checking every 50 ms; panics naming `what` after `timeout`.
/// Deadlines are generous: on a busy machine a condition only takes longer.
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rows of steps.csv the tracer has flushed so far (it flushes every 500 ms).
pub fn flushed_rows(out: &Path) -> usize {
    std::fs::read_to_string(out.join("steps.csv"))
        .map_or(0, |text| text.lines().count().saturating_sub(1))
}

/// Waits until the tracer has flushed more than `rows` rows of steps.csv: a count of steps,
/// not a time, so a slow or busy machine only takes longer.
pub fn wait_for_rows(out: &Path, rows: usize) {
    wait_until(
        Duration::from_secs(60),
        &format!("more than {rows} rows in steps.csv"),
        || flushed_rows(out) > rows,
    );
}

/// A trace's run.json.
pub fn read_run_json(out: &Path) -> serde_json::Value {
    read_json(&out.join("run.json"))
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
