//! One trace, end to end: discover → resolve → plan → attach → decode → correlate → sinks,
//! until Ctrl-C, SIGTERM/SIGHUP, `--duration`, or the target's exit, whichever comes first.
//! Whatever ends it, the files are flushed and closed and the summary printed.

use std::{
    collections::VecDeque,
    os::fd::{AsFd as _, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracer_common::{capture::snap, Counter};

use crate::{
    inspect::{cpython::PyReader, memory::LiveProcess},
    live::{
        attach,
        correlate::{
            requests::{Requests, Scheduled},
            Correlator, Step,
        },
        cuda::{self, CudaTracer},
        decode::{Decoder, RawSnapshot},
        discover, plan, resolve, shadow,
        sinks::{self, OutDir, Outputs, StepRow},
        snapshot::{self, Capture, CaptureError, LiveRequests},
    },
    schema::{
        rows::RankRow,
        run_info::{Counters, ProbeInfo, RunInfo, Totals},
    },
};

/// How often the ring buffers are drained (the eBPF side does not wake us per hit). Short,
/// so that a request whose facts the kernel side could not copy is still alive when they
/// are read from the target instead, and the rings stay small.
const DRAIN_EVERY: Duration = Duration::from_millis(2);
/// How often steps.csv is flushed to disk while tracing.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

pub struct Options {
    pub pid: u32,
    pub tid: Option<u32>,
    pub out_dir: OutDir,
    pub duration: Option<Duration>,
    pub quiet: bool,
    pub cuda: cuda::Level,
    /// Copy the scheduler's state at each step (batch columns, requests, events, queues), and
    /// where the requests' fields are read (`None`: phases only).
    pub snapshots: Option<shadow::Mode>,
    /// Size of the ring buffer of probe hits and snapshots, in bytes.
    pub ring_bytes: u32,
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A line on stderr. A closed stderr (the launching terminal went away) must not cost the
/// trace its files, so write errors are ignored.
pub fn say(message: &str) {
    use std::io::Write as _;
    crate::tools::status::Status::clear();
    let _ = writeln!(std::io::stderr(), "{message}");
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

pub fn run(options: Options) -> Result<Totals> {
    let note = |message: String| {
        if !options.quiet {
            say(&message);
        }
    };
    let target = discover::discover(options.pid)?;
    let resolved = resolve::resolve(&target, options.tid)?;
    let plan = plan::plan(&resolved, target.python.layout)?;
    let memory = LiveProcess { pid: target.pid };
    let reader = PyReader::new(&memory, target.python.layout, target.python.types);
    let config = snapshot::engine_config(&reader, resolved.engine, resolved.names.state);
    let vllm_version = crate::live::engines::vllm_version(&target);
    // A release the tables were not measured on, or a step no row fits, is traced anyway
    // (phases by the nearest row); what it cannot fill is named at the end.
    let unknown = unknown_release(vllm_version.as_deref(), &resolved);
    if let Some(why) = &unknown {
        say(&format!("tracer: warning: {why}"));
    }
    // Without a snapshot plan the trace still has every step's phases; say why once.
    let capture = if options.snapshots.is_some() {
        reader
            .sys_modules(target.python.runtime)
            .map_err(CaptureError::from)
            .and_then(|modules| Capture::plan(&reader, modules, &resolved, &plan))
            .map(Some)
    } else {
        Ok(None)
    };
    let mut capture_error = None;
    let mut capture = match capture {
        Ok(capture) => capture,
        Err(e) => {
            say(&format!(
                "tracer: warning: batch and request columns are off: {e}"
            ));
            capture_error = Some(e.to_string());
            None
        }
    };
    if let (Some(capture), Some(shadow::Mode::Shadow)) = (&mut capture, options.snapshots) {
        capture.set_shadow(true);
    }
    let mut outputs = Outputs::create(&options.out_dir)?;

    let trace_start_ns = monotonic_ns();
    let mut probes = attach::attach(
        &plan,
        capture.as_ref().map(|c| (target.pid, &c.plan)),
        options.ring_bytes,
    )?;
    // Before the "attached" line: from then on every step has its CUDA columns.
    let mut cuda = CudaTracer::start(options.cuda, target.pid, options.quiet)?;
    note(format!(
        "tracer: attached to pid {} tid {} (Python {}, {}) in {:.1} ms; writing {}",
        target.pid,
        plan.tid,
        target.python.version,
        resolved.step.qualname,
        probes.attach_time.as_secs_f64() * 1e3,
        options.out_dir.path().display()
    ));
    let mut status =
        crate::tools::status::Status::new(target.pid, options.out_dir.path().into(), options.quiet);

    let mut decoder = Decoder::new(&plan, target.python.eval_code.clone());
    let mut correlator = Correlator::new(plan.per_batch);
    let mut requests = Requests::new(
        target.pid,
        trace_start_ns,
        capture.as_ref().is_some_and(|c| c.idle_at_start),
    );
    let mut source = capture
        .as_ref()
        .map(|_| LiveRequests::new(&reader, resolved.names.state));
    let mut shadow = capture
        .as_ref()
        .zip(options.snapshots)
        .map(|(capture, mode)| shadow::Shadow::new(&reader, resolved.names.state, capture, mode));
    if shadow
        .as_ref()
        .is_some_and(|s| s.mode != shadow::Mode::Sync)
    {
        shadow::hurry();
    }
    let mut totals = Totals::default();
    let mut write_error = None;
    let mut pending_updates: VecDeque<PendingUpdate> = VecDeque::new();
    let mut drain = |probes: &mut attach::Probes, totals: &mut Totals, outputs: &mut Outputs| {
        let mut steps = Vec::new();
        while let Some(record) = probes.events.next() {
            let Some(hit) = decoder.decode(&record) else {
                continue;
            };
            let hits = match &mut shadow {
                Some(shadow) => {
                    let plan = &capture.as_ref().expect("shadow copies need a plan").plan;
                    shadow.pass(hit, plan, source.as_mut())
                }
                None => vec![hit],
            };
            steps.extend(hits.into_iter().filter_map(|hit| correlator.push(hit)));
        }
        // After the watch ring: the facts of every request its snapshots list are in.
        while let Some(record) = probes.facts.next() {
            if !source.as_mut().is_some_and(|source| source.learn(&record)) {
                decoder.counts.malformed += 1;
            }
        }
        // After the watch ring: every CUDA call made before these steps ended is in.
        cuda.poll();
        for step in steps {
            let (step_cuda, ranks) = cuda.fold(&step);
            let mut row = StepRow::new(&step, target.pid, trace_start_ns).with_cuda(&step_cuda);
            for rank in &ranks {
                if let Err(e) = outputs.ranks.write(&RankRow::new(&step, target.pid, rank)) {
                    write_error.get_or_insert(e);
                }
            }
            let (Some(capture), Some(source)) = (&mut capture, &mut source) else {
                write_step(&row, totals, outputs, &mut write_error);
                continue;
            };
            // The scheduler as the step's schedule() left it, with the step's output. Per
            // batch, the copy before the batch's update shows later batches' queues; only
            // its `scheduler_output` local is the batch's (a shadow copy read it already).
            let state = |raw: &Option<RawSnapshot>| {
                raw.as_ref()
                    .filter(|r| r.header.flags & snap::DROPPED == 0)
                    .map(|r| capture.state(r))
            };
            let scheduled = match (plan.per_batch, state(&step.at_schedule)) {
                (true, Some(at_schedule)) => Some(snapshot::SchedulerState {
                    scheduled: at_schedule
                        .scheduled
                        .clone()
                        .or_else(|| state(&step.after_execute).and_then(|s| s.scheduled)),
                    ..at_schedule
                }),
                (true, None) => None,
                // On the `step` path only shadow copies are taken when `schedule()` returns.
                (false, Some(shadow_copy)) => Some(shadow_copy),
                (false, None) => state(&step.after_execute),
            };
            // Schedules and updates are folded in the order they ran. Per batch, the previous
            // batch's update usually ran after this batch's schedule(): not when a call had
            // nothing to schedule.
            while let Some(update) =
                pending_updates.pop_front_if(|u| u.step.update_done_ns < step.schedule_done_ns)
            {
                update.fold(&mut requests, totals, outputs, &mut write_error);
            }
            let (out, token) = requests.schedule(
                source,
                &step,
                scheduled.as_ref(),
                &capture.budgets,
                &mut row,
            );
            if let Err(e) = outputs.write_step_details(&out) {
                write_error.get_or_insert(e);
            }
            let updated = state(&step.after_update);
            // Planned without a live request: the first one listed shows where requests
            // keep their fields; the kernel side reads them there from its next hit on.
            let listed = [&step.after_execute, &step.at_schedule]
                .into_iter()
                .flatten()
                .find_map(|raw| raw.running.first().map(|item| item.object));
            if let Some(request) = listed.filter(|_| !capture.sampled) {
                if capture.refresh(&reader, request) {
                    if let Err(e) = probes.set_plan(target.pid, &capture.plan) {
                        say(&format!("tracer: warning: request fields stay unread: {e}"));
                    }
                }
            }
            // `auto`: shadow copies once the steps leave time for them, and back if not.
            if let Some(on) = shadow.as_mut().and_then(|s| s.choose(step.still_ns())) {
                capture.set_shadow(on);
                if let Err(e) = probes.set_plan(target.pid, &capture.plan) {
                    say(&format!(
                        "tracer: warning: snapshots stay as they were: {e}"
                    ));
                }
            }
            pending_updates.push_back(PendingUpdate {
                updated,
                step,
                row,
                scheduled: token,
            });
        }
        if let Some(source) = &mut source {
            source.end_drain();
        }
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let end_reason = runtime.block_on(async {
        let mut exited = pidfd(target.pid).context("watching the target for exit")?;
        let (mut sigint, mut sigterm, mut sighup) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        );
        let deadline = tokio::time::sleep(options.duration.unwrap_or(Duration::MAX / 4));
        tokio::pin!(deadline);
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        // Shadow snapshots wake the loader at once (other records wait for the tick).
        // (A duplicate of the ring's fd: the drain needs the ring itself.)
        let ring = probes.events.as_fd().try_clone_to_owned();
        // SAFETY: the AsyncFd owns the duplicate, open until it is dropped.
        let ring = ring
            .and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(Into::into))
            .context("polling the ring buffer")?;
        let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
        let mut status_tick = tokio::time::interval(crate::tools::status::TTY_EVERY);
        let reason = loop {
            tokio::select! {
                _ = drain_tick.tick() => drain(&mut probes, &mut totals, &mut outputs),
                guard = ring.readable() => {
                    // Cleared first: a record that comes during the drain wakes us again.
                    guard?.clear_ready();
                    drain(&mut probes, &mut totals, &mut outputs);
                }
                _ = flush_tick.tick() => outputs.flush().context("writing the CSV files")?,
                _ = status_tick.tick() => status.tick(crate::tools::status::Counters {
                    steps: totals.steps,
                    drops: probes.counter(Counter::RingFull),
                    ..Default::default()
                }),
                _ = sigint.recv() => break "interrupted (SIGINT)",
                _ = sigterm.recv() => break "terminated (SIGTERM)",
                _ = sighup.recv() => break "hung up (SIGHUP)",
                _ = &mut deadline => break "duration reached",
                guard = exited.readable_mut() => { guard?.clear_ready(); break "target exited" }
            }
        };
        anyhow::Ok(reason)
    })?;
    status.finish();
    // Everything the kernel side wrote before we stopped still gets decoded.
    drain(&mut probes, &mut totals, &mut outputs);
    let trace_end_ns = monotonic_ns();
    correlator.finish();
    for update in pending_updates.drain(..) {
        update.fold(&mut requests, &mut totals, &mut outputs, &mut write_error);
    }
    if let Err(e) = outputs.write_step_details(&requests.finish(trace_end_ns)) {
        write_error.get_or_insert(e);
    }
    // The CUDA probes stay attached until `run` returns: their detach outlives the files.
    let cuda = cuda.finish();
    if let Some(e) = write_error {
        return Err(e).context("writing the CSV files");
    }
    outputs.flush().context("writing the CSV files")?;
    // Columns no row filled, among those this trace was asked to fill (snapshot columns need
    // snapshots; the CUDA columns, per-rank ones included, have their own report): what this
    // engine did not show us.
    let empty_columns = if options.snapshots.is_some() {
        sinks::run_json::empty_columns(options.out_dir.path(), |column| {
            !["cuda_", "exec_", "slowest_rank", "rank_"]
                .iter()
                .any(|prefix| column.starts_with(prefix))
        })
    } else {
        Vec::new()
    };
    let empty_columns: Vec<String> = empty_columns
        .into_iter()
        .chain(
            config
                .iter()
                .filter(|(_, value)| value.is_null())
                .map(|(key, _)| format!("run.json:config.{key}")),
        )
        .collect();

    let info = RunInfo {
        tracer_version: env!("CARGO_PKG_VERSION"),
        pid: target.pid,
        tid: plan.tid,
        exe: target.exe.clone(),
        cmdline: target.cmdline.clone(),
        python_version: target.python.version.clone(),
        vllm_version,
        config,
        python_binary: target.python.binary.display().to_string(),
        rewrite_filter: target.python.eval_code.describe(),
        engine_shape: resolved.names.releases,
        unknown_release: unknown.clone(),
        execute_ends_at: resolved
            .fallback
            .as_ref()
            .map(|f| format!("{}()", f.execute))
            .unwrap_or_else(|| format!("{}()", resolved.names.execute)),
        snapshots_off: capture_error,
        empty_columns,
        step_function: format!("{}.{}", resolved.names.core_module, resolved.step.qualname),
        probes: plan
            .watches
            .iter()
            .map(|w| ProbeInfo {
                mark: w.mark.to_string(),
                bytecode_offset: w.offset,
                address: format!("{:#x}", w.addr),
            })
            .collect(),
        trace_start_ns,
        trace_end_ns,
        attach_ms: probes.attach_time.as_secs_f64() * 1e3,
        end_reason: end_reason.into(),
        totals,
        counters: Counters {
            probe_hits: probes.counter(Counter::Hits),
            ring_buffer_drops: probes.counter(Counter::RingFull),
            decode: decoder.counts,
            correlate: correlator.counts,
            requests: requests.counts,
            request_reads: source.as_ref().map_or(0, |source| source.errors),
            facts_dropped: probes.counter(Counter::FactsRingFull),
            snapshots: probes.counter(Counter::Snapshots),
            snapshots_failed: probes.counter(Counter::SnapshotFailed),
            snapshots_dropped: probes.counter(Counter::SnapshotRingFull),
            shadow: shadow.as_ref().map(|s| s.counts),
        },
        scheduler: capture.as_ref().map(|c| c.budgets),
        cuda,
    };
    drop(probes);
    info.write(&options.out_dir)?;
    // Before the CUDA probes go (their detach outlives this process, and must not hold the
    // output directory's lock).
    drop(outputs);
    if info.counters.ring_buffer_drops > 0 {
        say(&format!(
            "tracer: warning: {} probe hits were lost (ring buffer full); see run.json \
             (a larger --ring-kib helps)",
            info.counters.ring_buffer_drops
        ));
    }
    if info.counters.snapshots_dropped > 0 {
        say(&format!(
            "tracer: warning: {} scheduler snapshots did not fit in the ring buffer (their steps \
             have phases but no batch columns); see run.json (a larger --ring-kib helps)",
            info.counters.snapshots_dropped
        ));
    }
    if let Some(c) = info.counters.shadow.filter(|c| c.late + c.failed > 0) {
        say(&format!(
            "tracer: warning: {} of {} shadow snapshot copies ended after the engine thread moved \
             on (their steps have phases but no batch columns); see run.json (--snapshots sync \
             copies in the trap)",
            c.late + c.failed,
            c.copies
        ));
    }
    if !info.empty_columns.is_empty() {
        say(&format!(
            "tracer: warning: {} columns were left empty in every row ({}): {}; see run.json \
             empty_columns",
            info.empty_columns.len(),
            match &unknown {
                Some(_) => "a release the tables do not know",
                None => "not shown by this engine",
            },
            info.empty_columns.join(", ")
        ));
    }
    if options.cuda != cuda::Level::Off {
        note(format!("tracer: {}", info.cuda.summary()));
    }
    note(format!("tracer: {end_reason}; {}", totals.summary()));
    Ok(totals)
}

/// Why this engine is outside what the tables were measured on, if it is: a vLLM release no
/// row was read from, or a step no row fits (then traced by the nearest row).
fn unknown_release(version: Option<&str>, resolved: &resolve::Resolved) -> Option<String> {
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
    fn fold(
        mut self,
        requests: &mut Requests,
        totals: &mut Totals,
        outputs: &mut Outputs,
        write_error: &mut Option<csv::Error>,
    ) {
        let out = requests.update(
            &self.step,
            self.scheduled,
            self.updated.as_ref(),
            &mut self.row,
        );
        if let Err(e) = outputs.write_step_details(&out) {
            write_error.get_or_insert(e);
        }
        write_step(&self.row, totals, outputs, write_error);
    }
}

fn write_step(
    row: &StepRow,
    totals: &mut Totals,
    outputs: &mut Outputs,
    write_error: &mut Option<csv::Error>,
) {
    totals.add(row);
    if let Err(e) = outputs.steps.write(row) {
        write_error.get_or_insert(e);
    }
}
