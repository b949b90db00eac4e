//! A test aid, not a feature: with `TRACER_RECORD=<path>` in its environment, a trace with
//! snapshots writes every raw record it reads from the rings to `<path>` and what rebuilds its
//! decoder, typing and request lifecycles to `<path>.json`, so that decode → correlate →
//! requests can be replayed from real bytes without root or a target (`live::replay`,
//! tests/fixtures/captured/). Nothing the trace writes or says changes.
//!
//! `<path>` holds entries of one tag byte, a little-endian `u32` length and that many bytes:
//! [`tag::EVENTS`] and [`tag::FACTS`] a ring's record as read; [`tag::PLAN`] the step index
//! after whose fold the snapshot plan changed (`u64::MAX`: from the start), then the
//! [`Plan`]'s bytes; [`tag::DRAIN`] the end of a drain (empty); [`tag::END`] the trace's
//! end stamp.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracer_common::capture::Plan;

use crate::live::{
    discover::EvalCode, engines::Engine, plan::ProbePlan, snapshot::SnapshotPlan, status::say,
};

/// The environment variable that names the file to record to.
pub const ENV: &str = "TRACER_RECORD";

/// What an entry of the records file holds.
pub mod tag {
    pub const EVENTS: u8 = b'E';
    pub const FACTS: u8 = b'F';
    pub const PLAN: u8 = b'P';
    pub const DRAIN: u8 = b'D';
    pub const END: u8 = b'X';
}

/// The sidecar: what the replay needs besides the records.
#[derive(Debug, Serialize, Deserialize)]
pub struct Setup {
    /// CPython (major, minor): its layout row types the snapshots.
    pub python: (u8, u8),
    pub pid: u32,
    pub tid: u32,
    pub trace_start_ns: u64,
    pub idle_at_start: bool,
    pub per_batch: bool,
    /// The watches: address, mark (as run.json names it), bytecode offset.
    pub watches: Vec<(u64, String, usize)>,
    /// Where the interpreter executes instructions (`None`: not known, every hit counts).
    pub eval_code: Option<(Vec<(u64, u64)>, bool)>,
    /// The `str` type object: the request ids the facts copy are `str`s.
    pub str_type: u64,
    /// `RequestStatus` members by address.
    pub statuses: BTreeMap<u64, String>,
    /// max_num_seqs, max_num_batched_tokens, block_size, kv_blocks_total.
    pub budgets: [Option<u32>; 4],
}

impl Setup {
    fn of(
        engine: &Engine,
        plan: &ProbePlan,
        snapshots: &SnapshotPlan,
        trace_start_ns: u64,
    ) -> Self {
        let python = &engine.target.python;
        let budgets = snapshots.budgets;
        Self {
            python: python.layout.version,
            pid: engine.target.pid,
            tid: plan.tid,
            trace_start_ns,
            idle_at_start: snapshots.idle_at_start,
            per_batch: plan.per_batch,
            watches: (plan.watches.iter())
                .map(|w| (w.addr, w.mark.to_string(), w.offset))
                .collect(),
            eval_code: match &python.eval_code {
                EvalCode::Functions { ranges, tail_call } => Some((
                    ranges.iter().map(|r| (r.start, r.end)).collect(),
                    *tail_call,
                )),
                EvalCode::Unknown(_) => None,
            },
            str_type: python.types.str,
            statuses: snapshots.typing().statuses.clone().into_iter().collect(),
            budgets: [
                budgets.max_num_seqs,
                budgets.max_num_batched_tokens,
                budgets.block_size,
                budgets.kv_blocks_total,
            ],
        }
    }

    /// The sidecar of the records file `records`.
    pub fn path(records: &Path) -> PathBuf {
        let mut name = records.as_os_str().to_owned();
        name.push(".json");
        name.into()
    }
}

/// Appends the records a trace reads to the file [`ENV`] names.
pub struct Recorder {
    out: Option<BufWriter<File>>,
    /// The plan last written, to write only changes.
    plan: Option<Plan>,
}

impl Recorder {
    /// A recorder when [`ENV`] is set and the trace has snapshots; writes the sidecar and the
    /// plan the trace starts with.
    pub fn from_env(
        engine: &Engine,
        plan: &ProbePlan,
        snapshots: Option<&SnapshotPlan>,
        trace_start_ns: u64,
    ) -> Option<Self> {
        let path = PathBuf::from(std::env::var_os(ENV)?);
        let snapshots = snapshots?;
        let setup = Setup::of(engine, plan, snapshots, trace_start_ns);
        let opened = serde_json::to_vec_pretty(&setup)
            .map_err(io::Error::other)
            .and_then(|json| fresh_file(&Setup::path(&path))?.write_all(&json))
            .and_then(|()| fresh_file(&path));
        let mut recorder = Self {
            out: None,
            plan: None,
        };
        match opened {
            Ok(file) => recorder.out = Some(BufWriter::new(file)),
            Err(e) => say(&format!("tracer: warning: not recording to {ENV}: {e}")),
        }
        recorder.plan(u64::MAX, &snapshots.plan);
        Some(recorder)
    }

    /// One entry; the first write error ends the recording (said once).
    pub fn write(&mut self, tag: u8, bytes: &[u8]) {
        let Some(out) = &mut self.out else {
            return;
        };
        let written = out
            .write_all(&[tag])
            .and_then(|()| out.write_all(&(bytes.len() as u32).to_le_bytes()))
            .and_then(|()| out.write_all(bytes));
        if let Err(e) = written {
            say(&format!("tracer: warning: recording stopped: {e}"));
            self.out = None;
        }
    }

    /// The snapshot plan after the fold of step `after_step`, if it changed.
    pub fn plan(&mut self, after_step: u64, plan: &Plan) {
        if self.plan.as_ref() == Some(plan) {
            return;
        }
        self.plan = Some(*plan);
        // SAFETY: viewing a repr(C) plain-old-data struct as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((plan as *const Plan).cast::<u8>(), size_of::<Plan>())
        };
        let mut entry = after_step.to_le_bytes().to_vec();
        entry.extend_from_slice(bytes);
        self.write(tag::PLAN, &entry);
    }

    /// The trace's end stamp; flushes the file.
    pub fn end(&mut self, trace_end_ns: u64) {
        self.write(tag::END, &trace_end_ns.to_le_bytes());
        if let Some(Err(e)) = self.out.as_mut().map(|out| out.flush()) {
            say(&format!("tracer: warning: recording stopped: {e}"));
        }
    }
}

/// A new file at `path`: the tracer runs as root, so it neither replaces what is there nor
/// follows a link someone planted.
fn fresh_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
}
