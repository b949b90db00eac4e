//! One trace of one engine, end to end: plan → attach → decode → correlate → sinks, until
//! Ctrl-C, SIGTERM/SIGHUP, `--duration`, or the target's exit, whichever comes first.
//! Whatever ends it, the files are flushed and closed and the summary printed.

use std::{
    collections::VecDeque,
    os::fd::{AsFd as _, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};
use tracer_common::{capture::snap, Counter};

use crate::{
    clock::monotonic_ns,
    inspect::{cpython::PyReader, memory::LiveProcess},
    live::{
        attach,
        correlate::{
            requests::{Requests, Scheduled, StepOutput},
            Correlator, Step,
        },
        cuda::{self, CudaTracer},
        decode::{Decoder, RawSnapshot},
        engines::Engine,
        plan::{self, ProbePlan},
        record::{tag, Recorder},
        resolve::{self, Resolved},
        shadow,
        sinks::{self, OutDir, Outputs, StepRow},
        snapshot::{self, LiveRequests, SnapshotPlan, SnapshotPlanError},
        status::{self, say, Status},
    },
    schema::{
        rows::RankRow,
        run_info::{Counters, CudaReport, ProbeInfo, RunInfo, SnapshotErrors, Totals},
    },
};

/// How often the ring buffers are drained (the eBPF side does not wake us per hit). Short,
/// so that a request whose facts the kernel side could not copy is still alive when they
/// are read from the target instead, and the rings stay small.
const DRAIN_EVERY: Duration = Duration::from_millis(2);
/// How often steps.csv is flushed to disk while tracing.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// What `attach` and `run` ask of the trace of every engine.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub duration: Option<Duration>,
    pub quiet: bool,
    pub cuda: cuda::Level,
    /// Copy the scheduler's state at each step (batch columns, requests, events, queues), and
    /// where the requests' fields are read (`None`: phases only).
    pub snapshots: Option<shadow::Mode>,
    /// Size of the ring buffer of probe hits and snapshots, in bytes.
    pub ring_bytes: u32,
}

/// A pidfd becomes readable when the process exits.
fn pidfd(pid: u32) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by pidfd_open, is owned by nobody else, and the AsyncFd
    // owns it until it is dropped.
    unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd as i32)) }.map_err(Into::into)
}

/// Traces `engine`, as [`crate::live::engines`] found and resolved it, into `out_dir`.
pub fn run(engine: &Engine, out_dir: OutDir, options: &Options) -> Result<Totals> {
    let memory = LiveProcess {
        pid: engine.target.pid,
    };
    let python = &engine.target.python;
    let reader = PyReader::new(&memory, python.layout, python.types);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before the probes go in: a Ctrl-C while they do ends the trace once they are in,
    // with its files, instead of killing the tracer (or, where SIGINT was inherited
    // ignored, being lost). Held off this thread meanwhile: a signal during the program
    // load interrupted the verifier, and the load, retried, took 3.4 s instead of 0.3 s.
    let stops = {
        let _runtime = runtime.enter();
        StopSignals::new()?
    };
    let session = stops.held(|| Session::start(engine, &reader, out_dir, options));
    let mut session = session?;
    let end_reason = runtime.block_on(session.wait_for_end(stops))?;
    session.finish(end_reason)
}

/// The signals that end a trace, listened for from before the attach.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    const KINDS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Runs `work` with these signals blocked on this thread; one that came meanwhile is
    /// delivered (and heard by [`Session::wait_for_end`]) once it returns.
    fn held<T>(&self, work: impl FnOnce() -> T) -> T {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
        // pthread_sigmask only changes this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for kind in Self::KINDS {
                libc::sigaddset(&mut set, kind);
            }
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut before);
            let result = work();
            libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            result
        }
    }
}

/// A line on stderr unless `--quiet`.
fn note(quiet: bool, message: String) {
    if !quiet {
        say(&message);
    }
}

/// A trace under way: the probes in, the files open, and what is folded between drains.
struct Session<'r> {
    engine: &'r Engine,
    reader: &'r PyReader<'r, LiveProcess>,
    options: &'r Options,
    out_dir: OutDir,
    plan: ProbePlan,
    config: serde_json::Map<String, serde_json::Value>,
    vllm_version: Option<String>,
    /// Why this engine is outside what the tables were measured on, if it is.
    unknown: Option<String>,
    /// Why the batch and request columns are off, if they were asked for and are.
    snapshots_error: Option<String>,
    snapshots: Option<SnapshotPlan>,
    trace_start_ns: u64,
    watchpoints: attach::Watchpoints,
    cuda: CudaTracer,
    status: Status,
    decoder: Decoder,
    correlator: Correlator,
    requests: Requests,
    source: Option<LiveRequests<'r, LiveProcess>>,
    shadow: Option<shadow::Shadow<'r, LiveProcess>>,
    /// Steps whose update is still to be folded, oldest first.
    pending_updates: VecDeque<PendingUpdate>,
    files: Files,
    /// Where the raw records go, with `TRACER_RECORD` set (see [`crate::live::record`]).
    recorder: Option<Recorder>,
}

impl<'r> Session<'r> {
    /// Plans the probes and snapshots, opens the files, attaches, and says so.
    fn start(
        engine: &'r Engine,
        reader: &'r PyReader<'r, LiveProcess>,
        out_dir: OutDir,
        options: &'r Options,
    ) -> Result<Self> {
        let (target, resolved) = (&engine.target, &engine.resolved);
        let plan = plan::plan(resolved, target.python.layout)?;
        let config = snapshot::engine_config(reader, resolved.engine, resolved.names.state);
        let vllm_version = resolve::vllm_version(target);
        // A release the tables were not measured on, or a step no row fits, is traced anyway
        // (phases by the nearest row); what it cannot fill is named at the end.
        let unknown = unknown_release(vllm_version.as_deref(), resolved);
        if let Some(why) = &unknown {
            say(&format!("tracer: warning: {why}"));
        }
        let (snapshots, snapshots_error) = plan_snapshots(reader, engine, &plan, options.snapshots);
        let outputs = Outputs::create(&out_dir)?;

        let trace_start_ns = monotonic_ns();
        let watchpoints = attach::attach(
            &plan,
            snapshots.as_ref().map(|c| (target.pid, &c.plan)),
            options.ring_bytes,
        )?;
        // Before the "attached" line: from then on every step has its CUDA columns.
        let cuda = CudaTracer::start(options.cuda, target.pid, plan.per_batch, options.quiet)?;
        note(
            options.quiet,
            format!(
                "tracer: attached to pid {} tid {} (Python {}, {}) in {:.1} ms; writing {}",
                target.pid,
                plan.tid,
                target.python.version,
                resolved.step.qualname,
                watchpoints.attach_time.as_secs_f64() * 1e3,
                out_dir.path().display()
            ),
        );
        let status = Status::new(target.pid, out_dir.path().into(), options.quiet);

        let (source, shadow) = request_readers(reader, resolved, snapshots.as_ref(), options);
        let idle_at_start = snapshots.as_ref().is_some_and(|c| c.idle_at_start);
        Ok(Self {
            decoder: Decoder::new(&plan, target.python.eval_code.clone()),
            correlator: Correlator::new(plan.per_batch),
            requests: Requests::new(target.pid, trace_start_ns, idle_at_start)
                .with_prefix_caching(config.get("enable_prefix_caching") != Some(&false.into())),
            recorder: Recorder::from_env(engine, &plan, snapshots.as_ref(), trace_start_ns),
            engine,
            reader,
            options,
            out_dir,
            plan,
            config,
            vllm_version,
            unknown,
            snapshots_error,
            snapshots,
            trace_start_ns,
            watchpoints,
            cuda,
            status,
            source,
            shadow,
            pending_updates: VecDeque::new(),
            files: Files {
                outputs,
                totals: Totals::default(),
                error: None,
            },
        })
    }

    /// Drains the rings, flushes the files and ticks the status line until something ends
    /// the trace; returns what did.
    async fn wait_for_end(&mut self, mut stops: StopSignals) -> Result<&'static str> {
        let mut exited = match pidfd(self.engine.target.pid) {
            Ok(exited) => exited,
            // It exited (and was reaped) while we attached: the rings hold the whole trace.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok("target exited"),
            Err(e) => return Err(e).context("watching the target for exit"),
        };
        let deadline = tokio::time::sleep(self.options.duration.unwrap_or(Duration::MAX / 4));
        tokio::pin!(deadline);
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        // Shadow snapshots wake the loader at once (other records wait for the tick).
        // (A duplicate of the ring's fd: the drain needs the ring itself.)
        let ring = self.watchpoints.events.as_fd().try_clone_to_owned();
        // SAFETY: the AsyncFd owns the duplicate, open until it is dropped.
        let ring = ring
            .and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(Into::into))
            .context("polling the ring buffer")?;
        let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
        let mut status_tick = tokio::time::interval(status::TTY_EVERY);
        let reason = loop {
            tokio::select! {
                _ = drain_tick.tick() => self.drain(),
                guard = ring.readable() => {
                    // Cleared first: a record that comes during the drain wakes us again.
                    guard?.clear_ready();
                    self.drain();
                }
                _ = flush_tick.tick() => {
                    self.files.outputs.flush().context("writing the CSV files")?
                }
                _ = status_tick.tick() => self.status.tick(status::Counters {
                    steps: self.files.totals.steps,
                    drops: self.watchpoints.counter(Counter::RingFull),
                    ..Default::default()
                }),
                _ = stops.interrupt.recv() => break "interrupted (SIGINT)",
                _ = stops.terminate.recv() => break "terminated (SIGTERM)",
                _ = stops.hangup.recv() => break "hung up (SIGHUP)",
                _ = &mut deadline => break "duration reached",
                guard = exited.readable_mut() => { guard?.clear_ready(); break "target exited" }
            }
        };
        Ok(reason)
    }

    /// Reads what the rings hold: hits (through the shadow copies) into steps, then the
    /// request facts, then the CUDA calls; then folds each step into its rows.
    fn drain(&mut self) {
        let mut steps = Vec::new();
        while let Some(record) = self.watchpoints.events.next() {
            if let Some(recorder) = &mut self.recorder {
                recorder.write(tag::EVENTS, &record);
            }
            let Some(hit) = self.decoder.decode(&record) else {
                continue;
            };
            let hits = match &mut self.shadow {
                Some(shadow) => {
                    let snapshots = self.snapshots.as_ref();
                    let plan = &snapshots.expect("shadow copies need a plan").plan;
                    shadow.pass(hit, plan, self.source.as_mut())
                }
                None => vec![hit],
            };
            let correlator = &mut self.correlator;
            steps.extend(hits.into_iter().filter_map(|hit| correlator.push(hit)));
        }
        // After the watch ring: the facts of every request its snapshots list are in.
        while let Some(record) = self.watchpoints.facts.next() {
            if let Some(recorder) = &mut self.recorder {
                recorder.write(tag::FACTS, &record);
            }
            if !self
                .source
                .as_mut()
                .is_some_and(|source| source.learn(&record))
            {
                self.decoder.counts.malformed += 1;
            }
        }
        // After the watch ring: every CUDA call made before these steps ended is in.
        self.cuda.poll();
        for step in steps {
            self.fold_step(step);
        }
        if let Some(recorder) = &mut self.recorder {
            recorder.write(tag::DRAIN, &[]);
        }
        if let Some(source) = &mut self.source {
            source.end_drain();
        }
    }

    /// One step into its rows: its CUDA columns and ranks, then (with snapshots) its schedule
    /// into the request lifecycles; its update and row wait in [`Self::pending_updates`].
    fn fold_step(&mut self, step: Step) {
        let pid = self.engine.target.pid;
        let (step_cuda, ranks) = self.cuda.fold(&step);
        let mut row = StepRow::new(&step, pid, self.trace_start_ns).with_cuda(&step_cuda);
        for rank in &ranks {
            self.files.rank(&RankRow::new(&step, pid, rank));
        }
        let (Some(snapshots), Some(source)) = (&self.snapshots, &mut self.source) else {
            self.files.step(&row);
            return;
        };
        let state = |raw: &RawSnapshot| snapshots.state(raw);
        let scheduled = scheduled_state(&state, &step, self.plan.per_batch);
        // Schedules and updates are folded in the order they ran. Per batch, the previous
        // batch's update usually ran after this batch's schedule(): not when a call had
        // nothing to schedule.
        while let Some(update) = self
            .pending_updates
            .pop_front_if(|u| u.step.update_done_ns < step.schedule_done_ns)
        {
            update.fold(&mut self.requests, &mut self.files);
        }
        let (out, token) = self.requests.schedule(
            source,
            &step,
            scheduled.as_ref(),
            &snapshots.budgets,
            &mut row,
        );
        self.files.details(&out);
        let updated = state_at(&state, &step.after_update);
        self.replan(&step);
        self.pending_updates.push_back(PendingUpdate {
            updated,
            step,
            row,
            scheduled: token,
        });
    }

    /// Puts a better snapshot plan in when `step` shows one is due.
    fn replan(&mut self, step: &Step) {
        let Some(snapshots) = &mut self.snapshots else {
            return;
        };
        let pid = self.engine.target.pid;
        // Planned without a live request: the first one listed shows where requests
        // keep their fields; the kernel side reads them there from its next hit on.
        let listed = [&step.after_execute, &step.at_schedule]
            .into_iter()
            .flatten()
            .find_map(|raw| raw.running.first().map(|item| item.object));
        if let Some(request) = listed.filter(|_| !snapshots.sampled) {
            if snapshots.refresh(self.reader, request) {
                if let Err(e) = self.watchpoints.set_plan(pid, &snapshots.plan) {
                    say(&format!("tracer: warning: request fields stay unread: {e}"));
                }
            }
        }
        // `auto`: shadow copies once the steps leave time for them, and back if not.
        if let Some(on) = self.shadow.as_mut().and_then(|s| s.choose(step.still_ns())) {
            snapshots.set_shadow(on);
            if let Err(e) = self.watchpoints.set_plan(pid, &snapshots.plan) {
                say(&format!(
                    "tracer: warning: snapshots stay as they were: {e}"
                ));
            }
        }
        if let Some(recorder) = &mut self.recorder {
            recorder.plan(step.index, &snapshots.plan);
        }
    }

    /// Ends the trace: decodes what the kernel side wrote before we stopped, folds the last
    /// updates, closes the files, writes run.json, and says what was lost and the summary.
    fn finish(mut self, end_reason: &'static str) -> Result<Totals> {
        self.status.finish();
        self.drain();
        let trace_end_ns = monotonic_ns();
        if let Some(recorder) = &mut self.recorder {
            recorder.end(trace_end_ns);
        }
        self.correlator.finish();
        for update in self.pending_updates.drain(..) {
            update.fold(&mut self.requests, &mut self.files);
        }
        let out = self.requests.finish(trace_end_ns);
        self.files.details(&out);
        // The CUDA probes stay attached until this returns: their detach outlives the files.
        let cuda = self.cuda.finish(self.plan.per_batch);
        if let Some(e) = self.files.error.take() {
            return Err(e).context("writing the CSV files");
        }
        self.files
            .outputs
            .flush()
            .context("writing the CSV files")?;
        let info = self.run_info(end_reason, trace_end_ns, cuda);
        drop(self.watchpoints);
        info.write(&self.out_dir)?;
        // Before the CUDA probes go (their detach outlives this process, and must not hold the
        // output directory's lock).
        drop(self.files.outputs);
        say_what_was_lost(&info, self.unknown.is_some());
        if self.options.cuda != cuda::Level::Off {
            note(
                self.options.quiet,
                format!("tracer: {}", info.cuda.summary()),
            );
        }
        let totals = self.files.totals;
        note(
            self.options.quiet,
            format!("tracer: {end_reason}; {}", totals.summary()),
        );
        Ok(totals)
    }

    /// Columns no row filled, among those this trace was asked to fill (snapshot columns need
    /// snapshots; the CUDA columns, per-rank ones included, have their own report), and
    /// config values not read: what this engine did not show us.
    fn empty_columns(&self) -> Vec<String> {
        let empty_columns = if self.options.snapshots.is_some() {
            sinks::run_json::empty_columns(self.out_dir.path(), |column| {
                !["cuda_", "exec_", "slowest_rank", "rank_"]
                    .iter()
                    .any(|prefix| column.starts_with(prefix))
            })
        } else {
            Vec::new()
        };
        empty_columns
            .into_iter()
            .chain(
                self.config
                    .iter()
                    .filter(|(_, value)| value.is_null())
                    .map(|(key, _)| format!("run.json:config.{key}")),
            )
            .collect()
    }

    fn run_info(&self, end_reason: &str, trace_end_ns: u64, cuda: CudaReport) -> RunInfo {
        let (target, resolved, watchpoints) = (
            &self.engine.target,
            &self.engine.resolved,
            &self.watchpoints,
        );
        RunInfo {
            tracer_version: env!("CARGO_PKG_VERSION"),
            pid: target.pid,
            tid: self.plan.tid,
            exe: target.exe.clone(),
            cmdline: target.cmdline.clone(),
            python_version: target.python.version.clone(),
            vllm_version: self.vllm_version.clone(),
            config: self.config.clone(),
            python_binary: target.python.binary.display().to_string(),
            rewrite_filter: target.python.eval_code.describe(),
            engine_shape: resolved.names.releases,
            unknown_release: self.unknown.clone(),
            execute_ends_at: resolved
                .fallback
                .as_ref()
                .map(|f| format!("{}()", f.execute))
                .unwrap_or_else(|| format!("{}()", resolved.names.execute)),
            snapshots_off: self.snapshots_error.clone(),
            empty_columns: self.empty_columns(),
            step_function: format!("{}.{}", resolved.names.core_module, resolved.step.qualname),
            probes: self
                .plan
                .watches
                .iter()
                .map(|w| ProbeInfo {
                    mark: w.mark.to_string(),
                    bytecode_offset: w.offset,
                    address: format!("{:#x}", w.addr),
                })
                .collect(),
            trace_start_ns: self.trace_start_ns,
            trace_end_ns,
            attach_ms: watchpoints.attach_time.as_secs_f64() * 1e3,
            end_reason: end_reason.into(),
            totals: self.files.totals,
            counters: Counters {
                probe_hits: watchpoints.counter(Counter::Hits),
                ring_buffer_drops: watchpoints.counter(Counter::RingFull),
                decode: self.decoder.counts,
                correlate: self.correlator.counts,
                requests: self.requests.counts,
                request_reads: self.source.as_ref().map_or(0, |source| source.errors),
                facts_dropped: watchpoints.counter(Counter::FactsRingFull),
                snapshots: watchpoints.counter(Counter::Snapshots),
                snapshots_failed: watchpoints.counter(Counter::SnapshotFailed),
                snapshots_dropped: watchpoints.counter(Counter::SnapshotRingFull),
                snapshot_errors: SnapshotErrors {
                    no_scratch: watchpoints.counter(Counter::NoScratch),
                    over_bound: watchpoints.counter(Counter::OverBound),
                    running_unreadable: watchpoints.counter(Counter::RunningUnreadable),
                    waiting_unreadable: watchpoints.counter(Counter::WaitingUnreadable),
                    kv_free_unreadable: watchpoints.counter(Counter::KvFreeUnreadable),
                    scheduled_unreadable: watchpoints.counter(Counter::ScheduledUnreadable),
                },
                shadow: self.shadow.as_ref().map(|s| s.counts),
            },
            scheduler: self.snapshots.as_ref().map(|c| c.budgets),
            cuda,
        }
    }
}

/// The snapshot plan when snapshots are asked for, or why there is none: then every step
/// still has its phases, and the reason is said once.
fn plan_snapshots(
    reader: &PyReader<LiveProcess>,
    engine: &Engine,
    plan: &ProbePlan,
    snapshots: Option<shadow::Mode>,
) -> (Option<SnapshotPlan>, Option<String>) {
    let Some(mode) = snapshots else {
        return (None, None);
    };
    let snapshots = reader
        .sys_modules(engine.target.python.runtime)
        .map_err(SnapshotPlanError::from)
        .and_then(|modules| SnapshotPlan::plan(reader, modules, &engine.resolved, plan));
    match snapshots {
        Ok(mut snapshots) => {
            if mode == shadow::Mode::Shadow {
                snapshots.set_shadow(true);
            }
            (Some(snapshots), None)
        }
        Err(e) => {
            say(&format!(
                "tracer: warning: batch and request columns are off: {e}"
            ));
            (None, Some(e.to_string()))
        }
    }
}

/// With a snapshot plan, what reads the requests' fields from the tracer: the source of the
/// facts the kernel side did not copy, and the shadow copier when snapshots may be shadow
/// copies.
fn request_readers<'r>(
    reader: &'r PyReader<'r, LiveProcess>,
    resolved: &Resolved,
    snapshots: Option<&SnapshotPlan>,
    options: &Options,
) -> (
    Option<LiveRequests<'r, LiveProcess>>,
    Option<shadow::Shadow<'r, LiveProcess>>,
) {
    let names = resolved.names.state;
    let source = snapshots.map(|_| LiveRequests::new(reader, names));
    let shadow = snapshots
        .zip(options.snapshots)
        .map(|(snapshots, mode)| shadow::Shadow::new(reader, names, snapshots, mode));
    if shadow
        .as_ref()
        .is_some_and(|s| s.mode != shadow::Mode::Sync)
    {
        shadow::hurry();
    }
    (source, shadow)
}

/// How a snapshot's raw words are typed: [`SnapshotPlan::state`] (or a replay's typing).
pub(crate) type TypeState<'a> = dyn Fn(&RawSnapshot) -> snapshot::SchedulerState + 'a;

/// The scheduler as a snapshot shows it, unless the snapshot was dropped.
pub(crate) fn state_at(
    state: &TypeState,
    raw: &Option<RawSnapshot>,
) -> Option<snapshot::SchedulerState> {
    raw.as_ref()
        .filter(|r| r.header.flags & snap::DROPPED == 0)
        .map(state)
}

/// The scheduler as the step's schedule() left it, with the step's output. Per batch, the
/// copy before the batch's update shows later batches' queues; only its `scheduler_output`
/// local is the batch's (a shadow copy read it already).
pub(crate) fn scheduled_state(
    state: &TypeState,
    step: &Step,
    per_batch: bool,
) -> Option<snapshot::SchedulerState> {
    match (per_batch, state_at(state, &step.at_schedule)) {
        (true, Some(at_schedule)) => Some(snapshot::SchedulerState {
            scheduled: at_schedule
                .scheduled
                .clone()
                .or_else(|| state_at(state, &step.after_execute).and_then(|s| s.scheduled)),
            ..at_schedule
        }),
        (true, None) => None,
        // On the `step` path only shadow copies are taken when `schedule()` returns.
        (false, Some(shadow_copy)) => Some(shadow_copy),
        (false, None) => state_at(state, &step.after_execute),
    }
}

/// The end-of-trace warnings: probe hits, snapshots or shadow copies lost, and columns left
/// empty (`unknown`: the release is one the tables do not know).
fn say_what_was_lost(info: &RunInfo, unknown: bool) {
    let counters = &info.counters;
    if counters.ring_buffer_drops > 0 {
        say(&format!(
            "tracer: warning: {} probe hits were lost (ring buffer full); see run.json \
             (a larger --ring-kib helps)",
            counters.ring_buffer_drops
        ));
    }
    if counters.snapshots_dropped > 0 {
        say(&format!(
            "tracer: warning: {} scheduler snapshots did not fit in the ring buffer (their steps \
             have phases but no batch columns); see run.json (a larger --ring-kib helps)",
            counters.snapshots_dropped
        ));
    }
    if let Some(c) = counters.shadow.filter(|c| c.late + c.failed > 0) {
        say(&format!(
            "tracer: warning: {} of {} shadow snapshot copies ended after the engine thread moved \
             on (their steps have phases but no batch columns); see run.json (--snapshots sync \
             copies in the trap)",
            c.late + c.failed,
            c.copies
        ));
    }
    if info.cuda.workers_folded_by_time {
        say(
            "tracer: warning: the CUDA calls of a worker process whose batches could not be \
             marked (run.json cuda.processes[].batch_marks_error) were folded by time while \
             the engine steps per batch (async scheduling): a batch's calls can land in a \
             neighbouring row (on an H200, 251 of 737 rows' launches fit another batch's \
             tokens); totals over many steps hold; see README \"Worker processes under async \
             scheduling\"",
        );
    }
    if !info.empty_columns.is_empty() {
        say(&format!(
            "tracer: warning: {} columns were left empty in every row ({}): {}; see run.json \
             empty_columns",
            info.empty_columns.len(),
            if unknown {
                "a release the tables do not know"
            } else {
                "not shown by this engine"
            },
            info.empty_columns.join(", ")
        ));
    }
}

/// Why this engine is outside what the tables were measured on, if it is: a vLLM release no
/// row was read from, or a step no row fits (then traced by the nearest row).
fn unknown_release(version: Option<&str>, resolved: &Resolved) -> Option<String> {
    let version = version.unwrap_or("of unknown version");
    if let Some(fallback) = &resolved.fallback {
        return Some(format!(
            "vLLM {version}: no row of the tracer's tables fits its step ({}); phases traced \
             by the row of {}, execute ending at the return of {}() (the last call before {}())",
            fallback.tried.trim().replace('\n', ";"),
            resolved.names.releases,
            fallback.execute,
            resolved.names.update
        ));
    }
    // The bundled fixture engine (`0.0.0+fixture`) is what the fixture row was read from.
    let known = crate::inspect::vllm::MEASURED.contains(&version) || version.ends_with("+fixture");
    (!known).then(|| {
        format!(
            "vLLM {version} is not a release the tracer's tables were measured on ({}); its \
             step fits the row of {}: traced by it, columns it leaves empty are named at the end",
            crate::inspect::vllm::MEASURED.join(", "),
            resolved.names.releases
        )
    })
}

/// A step whose update is still to be folded into the request lifecycles, and its row, written
/// once it is.
struct PendingUpdate {
    step: Step,
    row: StepRow,
    scheduled: Option<Scheduled>,
    updated: Option<snapshot::SchedulerState>,
}

impl PendingUpdate {
    fn fold(mut self, requests: &mut Requests, files: &mut Files) {
        let out = requests.update(
            &self.step,
            self.scheduled,
            self.updated.as_ref(),
            &mut self.row,
        );
        files.details(&out);
        files.step(&self.row);
    }
}

/// The CSV files, the totals of the rows written, and the first write error: kept while the
/// trace goes on (the rings must still be read), returned at its end.
struct Files {
    outputs: Outputs,
    totals: Totals,
    error: Option<csv::Error>,
}

impl Files {
    fn step(&mut self, row: &StepRow) {
        self.totals.add(row);
        if let Err(e) = self.outputs.steps.write(row) {
            self.error.get_or_insert(e);
        }
    }

    /// The events, queue rows and finished requests of one step.
    fn details(&mut self, out: &StepOutput) {
        if let Err(e) = self.outputs.write_step_details(out) {
            self.error.get_or_insert(e);
        }
    }

    fn rank(&mut self, row: &RankRow) {
        if let Err(e) = self.outputs.ranks.write(row) {
            self.error.get_or_insert(e);
        }
    }
}
