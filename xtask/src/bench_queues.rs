//! `cargo xtask bench queues`: what the scheduler snapshots cost the engine thread as the
//! queues grow. For running R × waiting W, one fixture process holds a steady state of R
//! requests decoding and W waiting (a burst of R + W requests, `--max-num-seqs` R, outputs
//! longer than the run, KV blocks for all R: the rest wait for a seat, reason `max_num_seqs`),
//! and untraced half-second windows alternate with traced ones at `--phases-only`, with
//! snapshots copied in the trap (`--snapshots sync`) and in the shadow (`--snapshots shadow`). Per point and level: the engine-thread hold per step (steps.csv
//! `tracer_ns`, p50 and p99 over the steps of the traced windows), the mean `step()` time
//! traced ÷ untraced (the fixture's own `rate` lines) with its spread over windows, and the
//! queue lengths steps.csv saw. Also what one user-memory read costs on this machine
//! (`process_vm_readv` from the fixture) and, fitted over the points, what copies in the
//! trap cost per request. Results: stdout and out/bench/queues.csv.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
};

use anyhow::{bail, Context as _, Result};

use crate::{fixture::python, tracer_bin, workspace_root};

const RUNNING: &[u32] = &[16, 128, 512];
const WAITING: &[u32] = &[0, 500, 2000];
/// Execute-phase time (ms): the real-vLLM steps the issue measured were 4–7 ms. The engine
/// thread sleeps through it, as it waits for a GPU: a tracer reading in the shadow then
/// takes a core the engine does not need (spinning instead, on this 2-core VM, the two
/// share: 512 × 2000 ran 1.54× traced in the shadow vs 1.31× in the trap).
const EXECUTE_MS: &str = "5";
/// Prompt tokens of every request (short: the burst's prefill is one step).
const PROMPT: u32 = 4;
/// Output tokens of every request: more than any point runs steps, so none finishes.
const MAX_TOKENS: u32 = 50_000;
const BLOCK_SIZE: u32 = 16;
/// Alternations per point; each round measures every level (their order reversed every other round).
const ROUNDS: usize = 4;
/// Half-second windows measured per side per level per round.
const WINDOWS: usize = 2;
/// Rate lines skipped after the burst arrives (its prefill, then the first decodes).
const SETTLE: usize = 2;
/// Queue places one snapshot copies per queue (tracer-common `MAX_QUEUE_ITEMS`).
const MAX_QUEUE_ITEMS: u32 = 512;

struct Level {
    name: &'static str,
    options: &'static [&'static str],
}

const LEVELS: &[Level] = &[
    Level {
        name: "phases-only",
        options: &["--phases-only"],
    },
    Level {
        name: "sync",
        options: &["--snapshots", "sync"],
    },
    Level {
        name: "shadow",
        options: &["--snapshots", "shadow"],
    },
];

/// CLOCK_MONOTONIC now (ns): steps.csv's clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A fixture `rate` line and when it reached us.
struct Rate {
    at_ns: u64,
    steps: u64,
    step_ns: u64,
}

impl Rate {
    fn parse(line: &str, at_ns: u64) -> Result<Self> {
        let field = |name: &str| -> Result<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .with_context(|| format!("no {name} in {line:?}"))?
                .parse()
                .map_err(Into::into)
        };
        let steps = field("steps=")?;
        Ok(Self {
            at_ns,
            steps,
            step_ns: field("mean_step_ns=")? * steps,
        })
    }
}

/// The fixture in one steady state; its `rate` lines stamped on arrival by a reader thread,
/// so a window that a tracer's attach or detach fell in can be told and dropped.
struct Engine {
    child: Child,
    pid: u32,
    rates: Receiver<Result<Rate>>,
}

impl Engine {
    fn spawn(running: u32, waiting: u32) -> Result<Self> {
        let requests = (running + waiting).to_string();
        let seqs = running.to_string();
        let budget = (running * PROMPT).max(2048).to_string();
        // Every running request's whole life, plus vLLM's null block and some slack.
        let blocks = (running * (PROMPT + MAX_TOKENS).div_ceil(BLOCK_SIZE) + 64).to_string();
        let (prompt, tokens) = (PROMPT.to_string(), MAX_TOKENS.to_string());
        let mut child = Command::new(python()?)
            .arg(workspace_root().join("tests/fixtures/engine/run_engine.py"))
            .args(["--warmup", "0", "--burst", "--num-requests", &requests])
            .args(["--max-num-seqs", &seqs, "--max-num-batched-tokens", &budget])
            .args(["--num-gpu-blocks", &blocks, "--block-size", "16"])
            .args([
                "--prompt-len",
                &prompt,
                &prompt,
                "--max-tokens",
                &tokens,
                &tokens,
            ])
            .args(["--stop-prob", "0", "--execute-ms", EXECUTE_MS])
            .args(["--execute-mode", "sleep"])
            .args(["--rate-every", "0.5", "--seed", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ready") => {}
            other => bail!("fixture engine did not start: {other:?}"),
        }
        let (tx, rates) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines {
                let at_ns = monotonic_ns();
                let rate = match line {
                    Ok(line) if line.starts_with("rate") => Rate::parse(&line, at_ns),
                    Ok(_) => continue,
                    Err(e) => Err(e.into()),
                };
                if tx.send(rate).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, pid, rates })
    }

    fn next(&self) -> Result<Rate> {
        self.rates
            .recv_timeout(std::time::Duration::from_secs(30))
            .context("fixture engine stopped reporting")?
    }

    /// Drops the windows that ended before `t_ns` and the one that ended after it (it holds
    /// `t_ns`); returns when that one ended, where clean windows start.
    fn skip_past(&self, t_ns: u64) -> Result<u64> {
        loop {
            let rate = self.next()?;
            if rate.at_ns > t_ns {
                return Ok(rate.at_ns);
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mean step time over windows.
#[derive(Default, Clone, Copy)]
struct Side {
    steps: u64,
    step_ns: u64,
}

impl Side {
    fn add(&mut self, rate: &Rate) {
        self.steps += rate.steps;
        self.step_ns += rate.step_ns;
    }

    fn mean_ns(&self) -> f64 {
        self.step_ns as f64 / self.steps as f64
    }
}

/// What steps.csv said about the steps inside the measured traced windows.
#[derive(Default)]
struct Seen {
    steps: usize,
    hold_ns: Vec<u64>,
    running: Vec<u64>,
    waiting: Vec<u64>,
}

/// Per level of a point: untraced windows next to traced ones, and what the trace saw.
#[derive(Default)]
struct LevelResult {
    untraced: Side,
    traced: Side,
    /// Each traced window's mean ÷ the mean of the untraced windows just before it.
    window_ratios: Vec<f64>,
    seen: Seen,
}

fn trace_dir() -> PathBuf {
    workspace_root().join("out/bench/queues-trace")
}

/// A tracer attached to the fixture; returns it and when the attach was done.
fn attach(pid: u32, options: &[&str]) -> Result<(Child, u64)> {
    let mut tracer = Command::new(tracer_bin())
        .args(["attach", "--pid", &pid.to_string(), "-o"])
        .arg(trace_dir())
        .args(options)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = BufReader::new(tracer.stderr.take().expect("piped"));
    let mut line = String::new();
    stderr.read_line(&mut line)?;
    anyhow::ensure!(line.contains("attached"), "tracer did not attach: {line}");
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Ok((tracer, monotonic_ns()))
}

fn detach(mut tracer: Child) -> Result<()> {
    // SIGINT, as a user's Ctrl-C. SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
    anyhow::ensure!(tracer.wait()?.success(), "tracer failed");
    Ok(())
}

/// Rows of steps.csv that started within `[from_ns, to_ns)`.
fn read_steps(dir: &Path, from_ns: u64, to_ns: u64, seen: &mut Seen) -> Result<()> {
    let text = std::fs::read_to_string(dir.join("steps.csv"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty steps.csv")?
        .split(',')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .with_context(|| format!("no {name} in steps.csv"))
    };
    let (start, hold, running, waiting) = (
        column("start_ns")?,
        column("tracer_ns")?,
        column("running")?,
        column("waiting")?,
    );
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let number = |i: usize| cells.get(i).and_then(|c| c.parse::<u64>().ok());
        match number(start) {
            Some(t) if t >= from_ns && t < to_ns => {}
            _ => continue,
        }
        seen.steps += 1;
        if let Some(ns) = number(hold) {
            seen.hold_ns.push(ns);
        }
        if let Some(n) = number(running) {
            seen.running.push(n);
        }
        if let Some(n) = number(waiting) {
            seen.waiting.push(n);
        }
    }
    Ok(())
}

/// One point of the axis: both levels, alternating with untraced windows, in one process.
/// With `read_cost`, also what user-memory reads of 8 B and 4 KiB cost from this fixture.
fn measure(
    running: u32,
    waiting: u32,
    read_cost: bool,
) -> Result<(Vec<LevelResult>, Option<ReadCost>)> {
    let engine = Engine::spawn(running, waiting)?;
    for _ in 0..SETTLE {
        engine.next()?;
    }
    let mut results: Vec<LevelResult> = LEVELS.iter().map(|_| LevelResult::default()).collect();
    for round in 0..ROUNDS {
        for k in 0..LEVELS.len() {
            let index = if round % 2 == 0 {
                k
            } else {
                LEVELS.len() - 1 - k
            };
            let (level, result) = (&LEVELS[index], &mut results[index]);
            let mut before = Side::default();
            for _ in 0..WINDOWS {
                before.add(&engine.next()?);
            }
            result.untraced.steps += before.steps;
            result.untraced.step_ns += before.step_ns;
            let (tracer, attached_ns) = attach(engine.pid, level.options)?;
            let from_ns = engine.skip_past(attached_ns)?;
            for _ in 0..WINDOWS {
                let rate = engine.next()?;
                result.traced.add(&rate);
                result
                    .window_ratios
                    .push(rate.step_ns as f64 / rate.steps as f64 / before.mean_ns());
            }
            let to_ns = monotonic_ns();
            detach(tracer)?;
            read_steps(&trace_dir(), from_ns, to_ns, &mut result.seen)?;
            engine.skip_past(monotonic_ns())?;
        }
    }
    let cost = if read_cost {
        Some((
            read_cost_ns(engine.pid, 8, 200_000)?,
            read_cost_ns(engine.pid, 4096, 50_000)?,
        ))
    } else {
        None
    };
    Ok((results, cost))
}

/// ns per `process_vm_readv` of 8 bytes and of 4 KiB.
type ReadCost = (f64, f64);

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn mean(values: &[u64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<u64>() as f64 / values.len() as f64)
}

/// Calls timed together in [`read_cost_ns`].
const BATCH: usize = 1_000;

/// `process_vm_readv` of `bytes` from the start of `pid`'s first readable mapping, `n`
/// times: ns per call (the fastest batch). A syscall from another process, so an upper bound on what the eBPF
/// side's `bpf_probe_read_user` of the same bytes costs (no syscall entry there).
fn read_cost_ns(pid: u32, bytes: usize, n: usize) -> Result<f64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let addr = maps
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.starts_with('r'))
        })
        .and_then(|l| l.split('-').next())
        .context("no readable mapping")?;
    let addr = u64::from_str_radix(addr, 16)?;
    let mut buf = vec![0u8; bytes];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: bytes,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: bytes,
    };
    // Batches of 1 000, the fastest kept: on a shared 2-core machine a batch that lost the
    // CPU to another process measures that process.
    let mut best = f64::MAX;
    for _ in 0..n.div_ceil(BATCH) {
        let start = monotonic_ns();
        for _ in 0..BATCH {
            // SAFETY: `local` points at our own buffer of `bytes` bytes.
            let got =
                unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
            anyhow::ensure!(
                got == bytes as isize,
                "process_vm_readv: {}",
                std::io::Error::last_os_error()
            );
        }
        best = best.min((monotonic_ns() - start) as f64 / BATCH as f64);
    }
    Ok(best)
}

fn us(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |ns| format!("{:.1}", ns as f64 / 1e3))
}

fn range(values: &[u64]) -> String {
    match (values.iter().min(), values.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
        (Some(lo), Some(hi)) => format!("{lo}-{hi}"),
        _ => "-".into(),
    }
}

/// A point of the axis as `RUNNINGxWAITING` (`512x2000`).
pub fn parse_point(point: &str) -> Result<(u32, u32), String> {
    let (r, w) = point
        .split_once('x')
        .and_then(|(r, w)| Some((r.parse().ok()?, w.parse().ok()?)))
        .ok_or_else(|| format!("a point is RUNNINGxWAITING, e.g. 512x2000, not {point:?}"))?;
    if !RUNNING.contains(&r) || !WAITING.contains(&w) {
        return Err(format!(
            "{r}x{w} is not a point of the axis: running {RUNNING:?} × waiting {WAITING:?}"
        ));
    }
    Ok((r, w))
}

/// `points`: only those points of the axis (e.g. 16×0 and 512×2000); none: all.
pub fn run(points: &[(u32, u32)]) -> Result<()> {
    let results = workspace_root().join("out/bench");
    std::fs::create_dir_all(&results)?;
    let mut table = String::from(
        "running,waiting,level,seen_running_mean,seen_waiting_mean,traced_steps,hold_p50_us,\
         hold_p99_us,hold_max_us,untraced_step_us,traced_step_us,ratio,ratio_min,ratio_max,hold_p50_per_request_ns\n",
    );
    println!(
        "{:>7} {:>7} {:>11} {:>9} {:>11} {:>6} {:>9} {:>9} {:>9} {:>9} {:>7} {:>13} {:>8}",
        "running",
        "waiting",
        "level",
        "seen R",
        "seen W",
        "steps",
        "hold p50",
        "hold p99",
        "untraced",
        "traced",
        "ratio",
        "window range",
        "p50/req"
    );
    // (requests copied per snapshot, hold p50) with copies in the trap.
    let mut fit: Vec<(f64, f64)> = Vec::new();
    let mut read_cost = None;
    for &running in RUNNING {
        for &waiting in WAITING {
            if !points.is_empty() && !points.contains(&(running, waiting)) {
                continue;
            }
            let (levels, cost) = measure(running, waiting, read_cost.is_none())?;
            read_cost = read_cost.or(cost);
            for (level, result) in LEVELS.iter().zip(&levels) {
                let mut hold = result.seen.hold_ns.clone();
                hold.sort_unstable();
                let (p50, p99, max) = (
                    percentile(&hold, 50.0),
                    percentile(&hold, 99.0),
                    hold.last().copied(),
                );
                let ratio = result.traced.mean_ns() / result.untraced.mean_ns();
                let (lo, hi) = result
                    .window_ratios
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
                let seen_r = mean(&result.seen.running);
                let seen_w = mean(&result.seen.waiting);
                // Requests one snapshot copies: each queue up to MAX_QUEUE_ITEMS.
                let copied = seen_r
                    .zip(seen_w)
                    .map(|(r, w)| r.min(MAX_QUEUE_ITEMS as f64) + w.min(MAX_QUEUE_ITEMS as f64));
                let per_request = p50.zip(copied).map(|(ns, n)| ns as f64 / n);
                println!(
                    "{:>7} {:>7} {:>11} {:>9} {:>11} {:>6} {:>6} µs {:>6} µs {:>6.0} µs {:>6.0} µs {:>7.3} {:>5.3}–{:.3} {:>8}",
                    running,
                    waiting,
                    level.name,
                    range(&result.seen.running),
                    range(&result.seen.waiting),
                    result.seen.steps,
                    us(p50),
                    us(p99),
                    result.untraced.mean_ns() / 1e3,
                    result.traced.mean_ns() / 1e3,
                    ratio,
                    lo,
                    hi,
                    per_request.map_or("-".into(), |ns| format!("{ns:.0} ns"))
                );
                let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
                writeln!(
                    table,
                    "{running},{waiting},{},{},{},{},{},{},{},{:.1},{:.1},{ratio:.4},{lo:.4},{hi:.4},{}",
                    level.name,
                    opt(seen_r),
                    opt(seen_w),
                    result.seen.steps,
                    opt(p50.map(|ns| ns as f64 / 1e3)),
                    opt(p99.map(|ns| ns as f64 / 1e3)),
                    opt(max.map(|ns| ns as f64 / 1e3)),
                    result.untraced.mean_ns() / 1e3,
                    result.traced.mean_ns() / 1e3,
                    opt(per_request),
                )?;
                if let (Some(p50), Some(r), Some(w), "sync") = (p50, seen_r, seen_w, level.name) {
                    let copied = r.min(MAX_QUEUE_ITEMS as f64) + w.min(MAX_QUEUE_ITEMS as f64);
                    fit.push((copied, p50 as f64));
                }
            }
        }
    }
    let path = results.join("queues.csv");
    std::fs::write(&path, table)?;
    println!(
        "(hold = steps.csv tracer_ns per step, over the steps of the traced windows; \
         ratio = mean step() traced ÷ untraced, same process, alternating windows, and its \
         range over windows; seen R/W = running/waiting columns, range over those steps; \
         p50/req = hold p50 ÷ requests one snapshot copies; {})",
        path.display()
    );
    if let Some((small, page)) = read_cost {
        println!(
            "one user-memory read on this machine: process_vm_readv {small:.0} ns for 8 B, \
             {page:.0} ns for 4 KiB (fastest batch of {BATCH}; a syscall from another process: an upper bound on \
             bpf_probe_read_user)"
        );
    }
    let per_request: Vec<f64> = fit.iter().map(|(n, ns)| ns / n).collect();
    if let (Some(lo), Some(hi)) = (
        per_request.iter().copied().reduce(f64::min),
        per_request.iter().copied().reduce(f64::max),
    ) {
        println!(
            "--snapshots sync: hold p50 ÷ requests copied = {lo:.0}–{hi:.0} ns per request per \
             step over the points (each queue copied up to {MAX_QUEUE_ITEMS} places)"
        );
    }
    Ok(())
}
