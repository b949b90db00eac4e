//! CUDA driver-API probes, folded into engine steps: how many kernels and graphs each
//! step launched, how long the host sat blocked in syncs and device-to-host copies, and
//! so how the execute phase splits into launch-side host time and waiting for the GPU.
//!
//! Uprobes on libcuda's exported functions ([`api::DRIVER_API`]) in every process of the
//! engine (the traced pid and its descendants) that maps libcuda, found in their memory
//! maps and re-checked every [`SCAN_EVERY`] for processes that load it later. Calls are
//! attributed to steps by time ([`fold`]), and a worker's under an engine that steps per
//! batch by its batch marks: a watchpoint on the entry of its per-batch function
//! ([`crate::inspect::vllm::WORKER_BATCH_ENTRY`]) on its main thread, whose hits share the
//! CUDA ring.
//!
//! With tensor parallelism (TP > 1) vLLM runs the model in worker processes, children of the
//! EngineCore, and the engine thread waits in `execute_model` while they work: their calls
//! land in the step by time like the engine's own. Each call keeps its process, so every
//! step also gets one [`RankStats`] per worker (ranks.csv), named by the worker's title
//! (`VLLM::Worker_TP1` → `TP1`), and the step's slowest rank: the one that began its last
//! wait last. The ranks of a TP group meet in all-reduces on the GPU, so a rank late on the
//! host makes every other rank wait for it: they show the longer GPU wait, it shows the
//! latest start of its wait.

mod api;
mod fold;
mod libcuda;
mod probes;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

pub use api::{Class, DRIVER_API};
pub use fold::HORIZON_NS;
use serde::Serialize;
use tracer_common::cuda::{CudaCall, CudaCounter, BATCH_MARK_COOKIE};

use self::{
    fold::{BatchMark, Call, Folder, ProcessCalls, Window},
    libcuda::Offsets,
    probes::CudaProbes,
};
pub use crate::schema::run_info::Level;
use crate::{
    clock::monotonic_ns,
    live::{
        correlate::Step,
        discover, engines, plan,
        resolve::{self, ResolveError},
    },
    schema::run_info::{CallTotals, CudaReport, ProcessReport},
};

/// Why a worker's batches are not marked yet: it has not imported its per-batch function
/// (tried again at each scan).
const NOT_YET_IMPORTED: &str = "the worker's per-batch function is not imported yet";

/// How often the engine's processes are re-checked for a newly loaded libcuda.
pub const SCAN_EVERY: Duration = Duration::from_millis(200);

impl Level {
    fn probes(self, class: Class) -> bool {
        match self {
            Level::Off => false,
            Level::Sync => class != Class::Launch,
            Level::Launches => true,
        }
    }
}

/// A step's CUDA columns in steps.csv; `None` where the level does not probe it, or the
/// step began before any CUDA probe was in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CudaStepStats {
    pub launches: Option<u64>,
    pub graph_launches: Option<u64>,
    pub syncs: Option<u64>,
    /// Host time inside sync calls, summed over calls (and processes).
    pub sync_ns: Option<u64>,
    pub d2h_copies: Option<u64>,
    /// Host time inside device-to-host copy calls, summed.
    pub d2h_ns: Option<u64>,
    /// Execute-phase time not blocked on the GPU: Python, scheduling the launches, etc.
    pub exec_launch_host_ns: Option<u64>,
    /// Execute-phase time during which a traced thread was blocked in a sync or a copy.
    pub exec_gpu_wait_ns: Option<u64>,
    /// With two or more worker ranks waiting in the step: the rank that began its last wait
    /// last ([`RankStats::wait_start_ns`]), and how much later than the first rank.
    pub slowest_rank: Option<String>,
    pub rank_skew_ns: Option<u64>,
}

/// One worker process's share of a step (a row of ranks.csv).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RankStats {
    pub pid: u32,
    /// From the process title (`TP1`), else `pid<N>`.
    pub rank: String,
    /// `None` at `--cuda sync` (kernel launches not probed).
    pub launches: Option<u64>,
    pub graph_launches: u64,
    pub syncs: u64,
    pub sync_ns: u64,
    pub d2h_copies: u64,
    pub d2h_ns: u64,
    /// Time within the step's execute stretches during which it was blocked in a sync or
    /// a copy.
    pub gpu_wait_ns: u64,
    /// Entry and return of its last sync or copy in the step: where it had launched its
    /// share and started waiting for the GPU, and where that wait ended. `None` without one.
    pub wait_start_ns: Option<u64>,
    pub wait_end_ns: Option<u64>,
}

impl RankStats {
    fn new(rank: String, level: Level, share: &ProcessCalls) -> Self {
        let t = share.totals;
        Self {
            pid: share.pid,
            rank,
            launches: (level == Level::Launches).then_some(t.launches),
            graph_launches: t.graph_launches,
            syncs: t.syncs,
            sync_ns: t.sync_ns,
            d2h_copies: t.d2h_copies,
            d2h_ns: t.d2h_ns,
            gpu_wait_ns: share.blocked_ns,
            wait_start_ns: share.last_wait.map(|(start, _)| start),
            wait_end_ns: share.last_wait.map(|(_, end)| end),
        }
    }
}

/// The rank that began its last wait last, and by how much after the first: `None` with
/// fewer than two ranks waiting.
fn slowest(ranks: &[RankStats]) -> Option<(&str, u64)> {
    let waits = || ranks.iter().filter_map(|r| Some((r.wait_start_ns?, r)));
    if waits().count() < 2 {
        return None;
    }
    let (first, _) = waits().min_by_key(|(start, _)| *start)?;
    // The first of equal starts, in rank order.
    let (last, rank) = waits().fold(
        None,
        |best: Option<(u64, &RankStats)>, (start, r)| match best {
            Some((b, _)) if b >= start => best,
            _ => Some((start, r)),
        },
    )?;
    Some((&rank.rank, last - first))
}

impl CudaReport {
    pub fn summary(&self) -> String {
        let mut slowest: Vec<String> = self
            .processes
            .iter()
            .filter(|p| p.slowest_steps > 0)
            .map(|p| {
                let rank = p.rank.as_deref().unwrap_or_default();
                format!("{rank} in {} of {} steps", p.slowest_steps, p.rank_steps)
            })
            .collect();
        if !slowest.is_empty() {
            slowest[0].insert_str(0, "; slowest rank: ");
        }
        let probed = self.processes.iter().filter(|p| p.error.is_none()).count();
        let marked = self
            .processes
            .iter()
            .filter(|p| p.error.is_none() && p.batch_marks.is_some())
            .filter(|p| p.batch_marks_error.is_none())
            .count();
        let marked = match marked {
            0 => String::new(),
            n => format!(
                " ({n} with batch marks, {} matched)",
                self.batch_marks_matched
            ),
        };
        format!(
            "CUDA ({:?}): {probed} {} probed{marked}; in steps {} kernel launches, {} graph \
             launches, {} syncs; outside steps {} calls{}",
            self.level,
            if probed == 1 { "process" } else { "processes" },
            self.in_steps.launches,
            self.in_steps.graph_launches,
            self.in_steps.syncs,
            self.outside_steps.launches
                + self.outside_steps.graph_launches
                + self.outside_steps.syncs
                + self.outside_steps.d2h_copies,
            slowest.join(", "),
        )
    }
}

/// Whether a worker process (not the engine's own) was probed without marks of its batches.
fn has_unmarked_workers(processes: &[ProcessReport]) -> bool {
    processes.iter().any(|p| {
        p.rank.is_some()
            && p.error.is_none()
            && (p.batch_marks.is_none() || p.batch_marks_error.is_some())
    })
}

/// A process under an engine that maps libcuda now: what `--cuda` would probe.
#[derive(Clone, Debug, Serialize)]
pub struct CudaProcess {
    pub pid: u32,
    /// The worker's rank as ranks.csv would name it; `null` for the engine itself.
    pub rank: Option<String>,
    pub title: String,
    pub libcuda: String,
    /// A worker under an engine that steps per batch: the function whose entry would mark
    /// its batches, or why none can.
    pub batch_marks: Option<String>,
}

/// Worker `pid`'s per-batch function and the instruction byte its batch marks watch.
fn batch_entry(pid: u32) -> Result<(&'static str, u64), String> {
    let target = discover::discover(pid).map_err(|e| e.to_string())?;
    let (name, code) = resolve::worker_batch_entry(&target).map_err(|e| match e {
        ResolveError::Missing { .. } => NOT_YET_IMPORTED.to_owned(),
        other => other.to_string(),
    })?;
    let addr = plan::batch_entry(&code, target.python.layout).map_err(|e| e.to_string())?;
    Ok((name, addr))
}

/// The engine `root` and its descendants that map libcuda now, engine first, then workers
/// in rank order; with `per_batch`, where each worker's batches would be marked.
pub fn processes(root: u32, per_batch: bool) -> Vec<CudaProcess> {
    let mut found: Vec<CudaProcess> = libcuda::process_tree(root)
        .into_iter()
        .filter_map(|pid| {
            let mapping = libcuda::find(pid).ok()??;
            let title = engines::Process::read(pid)?.title;
            let rank = (pid != root)
                .then(|| engines::worker_rank(&title).unwrap_or_else(|| format!("pid{pid}")));
            let batch_marks = (rank.is_some() && per_batch).then(|| {
                batch_entry(pid)
                    .map(|(name, addr)| format!("{name} (entry at {addr:#x}) on thread {pid}"))
                    .unwrap_or_else(|e| format!("cannot be marked: {e}"))
            });
            Some(CudaProcess {
                pid,
                rank,
                title,
                libcuda: mapping.path,
                batch_marks,
            })
        })
        .collect();
    found.sort_by_key(|p| p.rank.as_deref().map(rank_order));
    found
}

#[derive(Debug, thiserror::Error)]
#[error("loading the CUDA probes failed: {0}\n  hint: --cuda off traces without them")]
pub struct CudaError(String);

/// The CUDA side of a trace; inert with `--cuda off`.
pub struct CudaTracer {
    level: Level,
    active: Option<Active>,
}

struct Active {
    probes: CudaProbes,
    folder: Folder,
    root_pid: u32,
    /// Mark each worker's batches (the engine steps per batch).
    mark_workers: bool,
    quiet: bool,
    /// Every process looked at and found mapping libcuda, probed or not.
    processes: BTreeMap<u32, ProcessReport>,
    /// When a probed worker was found gone (its later steps get no row for it).
    gone: BTreeMap<u32, u64>,
    /// Symbol offsets by libcuda file (device, inode).
    offsets: HashMap<(String, u64), Result<Offsets, String>>,
    /// When the first probe went in: earlier steps get no CUDA columns.
    first_attach_ns: Option<u64>,
    next_scan: Instant,
    /// Lines for stderr, printed by the next poll (so they follow the "attached" line).
    notes: Vec<String>,
    malformed: u64,
    foreign: u64,
    /// Calls the full ring lost, as of the last drain.
    ring_drops: u64,
}

impl CudaTracer {
    /// Loads the programs and probes the processes of the engine rooted at `root_pid` that
    /// map libcuda now; later ones are probed as [`CudaTracer::poll`] finds them. When the
    /// engine steps `per_batch`, each worker's batches are marked too.
    pub fn start(
        level: Level,
        root_pid: u32,
        per_batch: bool,
        quiet: bool,
    ) -> Result<Self, CudaError> {
        if level == Level::Off {
            return Ok(Self {
                level,
                active: None,
            });
        }
        let mut active = Active {
            probes: CudaProbes::load().map_err(CudaError)?,
            folder: Folder::default(),
            root_pid,
            mark_workers: per_batch,
            quiet,
            processes: BTreeMap::new(),
            gone: BTreeMap::new(),
            offsets: HashMap::new(),
            first_attach_ns: None,
            next_scan: Instant::now(),
            notes: Vec::new(),
            malformed: 0,
            foreign: 0,
            ring_drops: 0,
        };
        active.scan(level);
        if active.processes.is_empty() {
            active.notes.push(format!(
                "tracer: no process of pid {root_pid}'s tree maps libcuda yet; CUDA probes go in when one does"
            ));
        }
        Ok(Self {
            level,
            active: Some(active),
        })
    }

    /// Drains the CUDA ring, and every [`SCAN_EVERY`] probes newly loaded libcudas. Call it
    /// after draining the watch ring, so that every call made before the steps just
    /// completed had ended is in.
    pub fn poll(&mut self) {
        let level = self.level;
        let Some(active) = &mut self.active else {
            return;
        };
        active.drain();
        if Instant::now() >= active.next_scan {
            active.scan(level);
            active.next_scan = Instant::now() + SCAN_EVERY;
        }
        active.folder.expire(monotonic_ns());
        for note in active.notes.drain(..) {
            if !active.quiet {
                crate::live::status::say(&note);
            }
        }
    }

    /// The CUDA columns of a completed step, and its rows of ranks.csv: one per worker
    /// process probed since before the step began (none when the engine process makes
    /// every call, TP = 1). Steps must come in time order.
    pub fn fold(&mut self, step: &Step) -> (CudaStepStats, Vec<RankStats>) {
        let Some(active) = &mut self.active else {
            return Default::default();
        };
        let calls = active.folder.fold(Window::from(step));
        if active
            .first_attach_ns
            .is_none_or(|attached| step.start_ns < attached)
        {
            return Default::default();
        }
        let ranks = active.ranks(self.level, step.start_ns, &calls.processes);
        let slowest = slowest(&ranks);
        for rank in &ranks {
            if let Some(report) = active.processes.get_mut(&rank.pid) {
                report.rank_steps += 1;
                report.gpu_wait_ns += rank.gpu_wait_ns;
                if slowest.is_some_and(|(name, _)| name == rank.rank) {
                    report.slowest_steps += 1;
                }
            }
        }
        let t = calls.totals;
        let stats = CudaStepStats {
            launches: (self.level == Level::Launches).then_some(t.launches),
            graph_launches: Some(t.graph_launches),
            syncs: Some(t.syncs),
            sync_ns: Some(t.sync_ns),
            d2h_copies: Some(t.d2h_copies),
            d2h_ns: Some(t.d2h_ns),
            exec_launch_host_ns: Some(
                calls
                    .launch_ns
                    .saturating_sub(calls.launch_blocked_ns)
                    .saturating_sub(step.at_schedule.as_ref().map_or(0, |s| s.header.copy_ns)),
            ),
            exec_gpu_wait_ns: Some(calls.launch_blocked_ns + calls.wait_blocked_ns),
            slowest_rank: slowest.map(|(rank, _)| rank.to_owned()),
            rank_skew_ns: slowest.map(|(_, skew)| skew),
        };
        (stats, ranks)
    }

    /// Ends the trace (after the last steps were folded). The probes stay attached until
    /// the tracer is dropped, so that detaching (see [`probes::CudaProbes`]) comes
    /// after the caller has written its files.
    ///
    /// `per_batch`: the engine steps per batch (see
    /// [`CudaReport::workers_folded_by_time`]).
    pub fn finish(&mut self, per_batch: bool) -> CudaReport {
        let Some(active) = &mut self.active else {
            return CudaReport {
                level: self.level,
                processes: Vec::new(),
                probe_runs: 0,
                ring_buffer_drops: 0,
                returns_without_entry: 0,
                starts_map_full: 0,
                malformed_records: 0,
                foreign_calls: 0,
                in_steps: CallTotals::default(),
                outside_steps: CallTotals::default(),
                late_calls: 0,
                expired_calls: 0,
                workers_folded_by_time: false,
                batch_marks_matched: 0,
                batch_marks_unmatched: 0,
            };
        };
        active.drain();
        active.folder.finish();
        let never: Vec<u32> = active.folder.never_marked().collect();
        for pid in never {
            if let Some(report) = active.processes.get_mut(&pid) {
                report.batch_marks_error = Some(
                    "no batch began on the watched thread: its calls were folded by time".into(),
                );
            }
        }
        let probes = &active.probes;
        let processes: Vec<ProcessReport> = active.processes.values().cloned().collect();
        CudaReport {
            workers_folded_by_time: per_batch && has_unmarked_workers(&processes),
            batch_marks_matched: active.folder.marks_matched,
            batch_marks_unmatched: active.folder.marks_unmatched,
            level: self.level,
            probe_runs: probes.counter(CudaCounter::Probes),
            ring_buffer_drops: probes.counter(CudaCounter::RingFull),
            returns_without_entry: probes.counter(CudaCounter::ReturnWithoutEntry),
            starts_map_full: probes.counter(CudaCounter::StartsFull),
            processes,
            malformed_records: active.malformed,
            foreign_calls: active.foreign,
            in_steps: active.folder.in_steps,
            outside_steps: active.folder.outside,
            late_calls: active.folder.late,
            expired_calls: active.folder.expired,
        }
    }
}

impl Active {
    /// A row per worker probed before `start_ns` and not gone by then, by rank name.
    fn ranks(&self, level: Level, start_ns: u64, shares: &[ProcessCalls]) -> Vec<RankStats> {
        let mut ranks: Vec<RankStats> = self
            .processes
            .values()
            .filter(|p| p.pid != self.root_pid && p.error.is_none())
            .filter(|p| p.attached_ns <= start_ns)
            .filter(|p| self.gone.get(&p.pid).is_none_or(|&gone| start_ns < gone))
            .map(|p| {
                let share =
                    shares
                        .iter()
                        .find(|s| s.pid == p.pid)
                        .copied()
                        .unwrap_or(ProcessCalls {
                            pid: p.pid,
                            ..Default::default()
                        });
                let rank = p.rank.clone().unwrap_or_else(|| format!("pid{}", p.pid));
                RankStats::new(rank, level, &share)
            })
            .collect();
        ranks.sort_by_key(|r| rank_order(&r.rank));
        ranks
    }

    fn drain(&mut self) {
        // A full ring may have lost batch marks: each worker's next is matched afresh.
        if self.mark_workers {
            let drops = self.probes.counter(CudaCounter::RingFull);
            if drops > self.ring_drops {
                self.ring_drops = drops;
                self.folder.realign(monotonic_ns());
            }
        }
        let mut calls = Vec::new();
        while let Some(record) = self.probes.ring.next() {
            let Some(raw) = tracer_common::parse::fixed_record::<CudaCall>(&record) else {
                self.malformed += 1;
                continue;
            };
            let (pid, tid) = ((raw.pid_tgid >> 32) as u32, raw.pid_tgid as u32);
            if !self.processes.contains_key(&pid) {
                self.foreign += 1;
                continue;
            }
            if raw.cookie == BATCH_MARK_COOKIE {
                self.folder.push_mark(BatchMark {
                    pid,
                    tid,
                    ns: raw.start_ns,
                });
                continue;
            }
            let Some(function) = api::by_cookie(raw.cookie) else {
                self.malformed += 1;
                continue;
            };
            calls.push(Call {
                pid,
                tid,
                start_ns: raw.start_ns,
                end_ns: raw.end_ns,
                class: function.class,
            });
        }
        self.folder.push(calls);
    }

    /// Probes every process of the tree that maps libcuda and is not probed yet; names the
    /// workers whose title had no rank yet, and notes the workers gone.
    fn scan(&mut self, level: Level) {
        let now = monotonic_ns();
        for report in self.processes.values_mut() {
            if report.pid == self.root_pid || self.gone.contains_key(&report.pid) {
                continue;
            }
            match engines::Process::read(report.pid) {
                None => {
                    self.gone.insert(report.pid, now);
                }
                Some(process) if report.rank.as_ref().is_none_or(|r| r.starts_with("pid")) => {
                    report.rank = Some(
                        engines::worker_rank(&process.title)
                            .unwrap_or_else(|| format!("pid{}", report.pid)),
                    );
                }
                Some(_) => {}
            }
        }
        let unmarked: Vec<u32> = self
            .processes
            .values()
            .filter(|p| p.batch_marks_error.as_deref() == Some(NOT_YET_IMPORTED))
            .map(|p| p.pid)
            .collect();
        for pid in unmarked {
            if let Some(mut report) = self.processes.remove(&pid) {
                self.mark_batches(&mut report);
                self.processes.insert(pid, report);
            }
        }
        for pid in libcuda::process_tree(self.root_pid) {
            if self.processes.contains_key(&pid) {
                continue;
            }
            let mapping = match libcuda::find(pid) {
                Ok(Some(mapping)) => mapping,
                // Not loaded (yet), or the process is gone.
                Ok(None) => continue,
                Err(e) => {
                    let report = ProcessReport {
                        error: Some(format!("reading /proc/{pid}/maps: {e}")),
                        ..ProcessReport::new(pid, String::new())
                    };
                    self.processes.insert(pid, report);
                    continue;
                }
            };
            let mut report = ProcessReport::new(pid, mapping.path.clone());
            if pid != self.root_pid && self.mark_workers {
                // Before the probes: every batch whose calls they see has its mark.
                self.mark_batches(&mut report);
            }
            self.attach(level, mapping, &mut report);
            if pid != self.root_pid {
                let title = engines::Process::read(pid).map(|p| p.title);
                report.rank = Some(
                    title
                        .as_deref()
                        .and_then(engines::worker_rank)
                        .unwrap_or_else(|| format!("pid{pid}")),
                );
            }
            let rank = report
                .rank
                .as_ref()
                .map_or(String::new(), |rank| format!(", rank {rank}"));
            self.notes.push(match &report.error {
                None => format!(
                    "tracer: CUDA probes on pid {pid}{rank} ({}): {} functions in {:.1} ms",
                    report.libcuda,
                    report.functions.len(),
                    report.attach_ms
                ),
                Some(e) => format!("tracer: warning: CUDA probes on pid {pid} failed: {e}"),
            });
            self.processes.insert(pid, report);
        }
    }

    /// Watches the entry of the worker's per-batch function on its main thread (vLLM's
    /// worker runs its busy loop, and so every batch, there), for [`Folder::mark_batches`].
    /// Says how in its report; a worker that has not imported the function yet is tried
    /// again at the next scans.
    fn mark_batches(&mut self, report: &mut ProcessReport) {
        let pid = report.pid;
        let started = Instant::now();
        let marked = batch_entry(pid).and_then(|(name, addr)| {
            self.probes
                .mark_batches(pid, addr)
                .map_err(|e| format!("watching {name} on thread {pid}: {e}"))?;
            // Every batch begun from now on is marked.
            let since_ns = monotonic_ns();
            Ok((
                format!("{name} (entry at {addr:#x}) on thread {pid}"),
                since_ns,
            ))
        });
        let retry = report.batch_marks_error.is_some();
        match marked {
            Ok((what, since_ns)) => {
                self.folder.mark_batches(pid, pid, since_ns);
                self.notes.push(format!(
                    "tracer: batches of pid {pid} marked by {what} ({:.1} ms)",
                    started.elapsed().as_secs_f64() * 1e3
                ));
                report.batch_marks = Some(what);
                report.batch_marks_error = None;
            }
            Err(e) if e == NOT_YET_IMPORTED && retry => {}
            Err(e) => {
                if e != NOT_YET_IMPORTED {
                    self.notes.push(format!(
                        "tracer: warning: the batches of worker pid {pid} cannot be marked \
                         (its CUDA calls are folded by time): {e}"
                    ));
                }
                report.batch_marks_error = Some(e);
            }
        }
    }

    fn attach(&mut self, level: Level, mapping: libcuda::Mapping, report: &mut ProcessReport) {
        let started = Instant::now();
        let pid = report.pid;
        let offsets = self
            .offsets
            .entry(mapping.file.clone())
            .or_insert_with(|| libcuda::offsets(&mapping.host_path));
        let offsets = match offsets {
            Ok(offsets) => offsets.clone(),
            Err(e) => {
                report.error = Some(e.clone());
                return;
            }
        };
        let mut probed = Vec::new();
        for (cookie, (function, offset)) in DRIVER_API.iter().zip(&offsets).enumerate() {
            if !level.probes(function.class) {
                continue;
            }
            let Some(offset) = offset.filter(|o| !probed.contains(o)) else {
                report.not_probed.push(function.name);
                continue;
            };
            if let Err(e) = self.probes.attach(
                pid,
                &mapping.host_path,
                offset,
                cookie,
                function.class.timed(),
            ) {
                report.error = Some(format!("{}: {e}", function.name));
                break;
            }
            probed.push(offset);
            report.functions.push(function.name);
        }
        report.attached_ns = monotonic_ns();
        report.attach_ms = started.elapsed().as_secs_f64() * 1e3;
        if report.error.is_none() {
            self.first_attach_ns.get_or_insert(report.attached_ns);
        }
    }
}

/// Ranks in their natural order: `TP2` before `TP10`, `pid<N>` names last.
fn rank_order(rank: &str) -> (bool, Vec<(String, u64)>) {
    let parts = rank
        .split('_')
        .map(|part| {
            let digits = part.trim_start_matches(|c: char| !c.is_ascii_digit());
            let name = &part[..part.len() - digits.len()];
            (name.to_owned(), digits.parse().unwrap_or(u64::MAX))
        })
        .collect();
    (rank.starts_with("pid"), parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(name: &str, wait_start_ns: Option<u64>) -> RankStats {
        RankStats {
            rank: name.into(),
            wait_start_ns,
            ..Default::default()
        }
    }

    #[test]
    fn the_slowest_rank_began_its_wait_last() {
        let ranks = [
            rank("TP0", Some(100)),
            rank("TP1", Some(350)),
            rank("TP2", None),
            rank("TP3", Some(350)),
        ];
        assert_eq!(slowest(&ranks), Some(("TP1", 250)));
        assert_eq!(slowest(&ranks[1..3]), None, "one rank waiting");
        assert_eq!(slowest(&[]), None);
    }

    #[test]
    fn only_a_probed_worker_without_batch_marks_is_folded_by_time() {
        let process = |pid: u32, rank: Option<&str>, error: Option<&str>| ProcessReport {
            rank: rank.map(Into::into),
            error: error.map(Into::into),
            ..ProcessReport::new(pid, String::new())
        };
        let engine = process(1, None, None);
        assert!(!has_unmarked_workers(std::slice::from_ref(&engine)));
        assert!(!has_unmarked_workers(&[
            engine.clone(),
            process(2, Some("TP0"), Some("gone"))
        ]));
        let worker = process(3, Some("pid3"), None);
        assert!(has_unmarked_workers(&[engine.clone(), worker.clone()]));
        let marked = ProcessReport {
            batch_marks: Some("Worker.execute_model".into()),
            ..worker
        };
        assert!(!has_unmarked_workers(&[engine.clone(), marked.clone()]));
        let never = ProcessReport {
            batch_marks_error: Some("no batch began on the watched thread".into()),
            ..marked
        };
        assert!(has_unmarked_workers(&[engine, never]));
    }

    #[test]
    fn ranks_sort_naturally() {
        let mut names = ["pid12", "TP10", "TP2", "DP1_TP0", "DP0_TP1"];
        names.sort_by_key(|n| rank_order(n));
        assert_eq!(names, ["DP0_TP1", "DP1_TP0", "TP2", "TP10", "pid12"]);
    }
}
