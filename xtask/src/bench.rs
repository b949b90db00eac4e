//! `cargo xtask bench`: what tracing costs the engine, as traced ÷ untraced step time in one
//! run of the fixture engine. The fixture reports its own mean `step()` time (timed around
//! the call, so every trap at step entry and inside is included) every half second; we
//! alternate untraced and traced windows on the same process, so drift hits both sides.
//! Per setting it also records the tracer's attach time, CPU share, peak RSS and probe
//! hits/s with their losses; a last pass finds the hit rate the pipeline sustains with the
//! fastest fixture. Results: a table on stdout and CSVs under out/bench/.
//!
//! Then the queue axis ([`queues`]): the snapshots' engine-thread hold as the running and
//! waiting queues grow. `cargo xtask bench queues [RxW …]` runs only that axis (or only
//! those points of it), `cargo xtask bench steps` only the step overhead.

#[path = "bench_queues.rs"]
mod queues;

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{fixture::Fixture, tracer_bin, workspace_root};

/// Execute-phase costs (ms) to measure at: GPU steps are ~5–50 ms; short ones are the worst case.
const EXECUTE_MS: &[&str] = &["0.2", "1", "5"];
/// Running requests per step (`--max-num-seqs`, with arrivals that keep it full and KV
/// blocks for all of them: with the fixture's default 512 blocks a batch of 64 or 256 ran
/// ~33 requests and the waiting queue grew by thousands, so snapshots measured the queue).
const BATCHES: &[u32] = &[1, 16, 64, 256];
/// Tokens each request generates: arrivals of batch ÷ this per step keep the batch full.
const REQUEST_TOKENS: u32 = 64;
/// Alternations of untraced and traced windows per setting.
const ROUNDS: usize = 2;
/// Half-second windows measured per side per round.
const WINDOWS: usize = 3;
/// What is traced: phases only; the default (phases plus two scheduler snapshots a step:
/// request state); the default with the fixture driving the fake libcuda (CUDA probes); the
/// same calls made in two worker processes (tensor parallelism: the tracer probes each
/// rank's libcuda and folds its calls by time into the step they fall in).
const MODES: &[Mode] = &[
    Mode {
        name: "phases-only",
        options: &["--phases-only"],
        fixture: &[],
        cuda: false,
    },
    Mode {
        name: "+requests",
        options: &[],
        fixture: &[],
        cuda: false,
    },
    Mode {
        name: "+cuda",
        options: &[],
        fixture: &[],
        cuda: true,
    },
    Mode {
        name: "+cuda tp2",
        options: &[],
        fixture: &["--tp", "2"],
        cuda: true,
    },
];

struct Mode {
    name: &'static str,
    /// `tracer attach` options.
    options: &'static [&'static str],
    /// Fixture engine options.
    fixture: &'static [&'static str],
    cuda: bool,
}

/// What one traced window cost the tracer, from /proc and its run.json.
#[derive(Default)]
struct TracerCost {
    attach_ms: f64,
    cpu_s: f64,
    wall_s: f64,
    peak_rss_kb: u64,
    hits: u64,
    drops: u64,
}

impl TracerCost {
    fn add(&mut self, other: TracerCost) {
        self.attach_ms = self.attach_ms.max(other.attach_ms);
        self.cpu_s += other.cpu_s;
        self.wall_s += other.wall_s;
        self.peak_rss_kb = self.peak_rss_kb.max(other.peak_rss_kb);
        self.hits += other.hits;
        self.drops += other.drops;
    }

    fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_s / self.wall_s
    }

    fn hits_per_s(&self) -> f64 {
        self.hits as f64 / self.wall_s
    }
}

struct Side {
    steps: u64,
    step_ns: u64,
}

impl Side {
    fn add(&mut self, line: &str) -> Result<()> {
        let field = |name: &str| -> Result<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .with_context(|| format!("no {name} in {line:?}"))?
                .parse()
                .map_err(Into::into)
        };
        let steps = field("steps=")?;
        self.steps += steps;
        self.step_ns += field("mean_step_ns=")? * steps;
        Ok(())
    }

    fn mean_us(&self) -> f64 {
        self.step_ns as f64 / self.steps as f64 / 1e3
    }
}

fn trace_dir() -> PathBuf {
    workspace_root().join("out/bench/trace")
}

/// A traced window: the tracer process and when its probes were in.
struct Attached {
    child: Child,
    since: Instant,
    cpu_at_attach: f64,
    /// The rest of its stderr, for the error if it fails.
    stderr: std::thread::JoinHandle<String>,
}

fn attach(pid: u32, options: &[&str]) -> Result<Attached> {
    let mut tracer = Command::new(tracer_bin())
        .args(["attach", "--pid", &pid.to_string(), "-o"])
        .arg(trace_dir())
        .args(options)
        .stderr(Stdio::piped())
        .spawn()?;
    // The first stderr line is "tracer: attached …" (or an error).
    let mut stderr = std::io::BufReader::new(tracer.stderr.take().expect("piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line)?;
    anyhow::ensure!(line.contains("attached"), "tracer did not attach: {line}");
    // Keep reading, so the tracer's closing summary has somewhere to go.
    let stderr = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let cpu_at_attach = cpu_seconds(tracer.id())?;
    Ok(Attached {
        child: tracer,
        since: Instant::now(),
        cpu_at_attach,
        stderr,
    })
}

/// User + system CPU time of a process so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(") ").context("/proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// VmHWM: the process's peak resident memory (kB).
fn peak_rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM")?.parse()?)
}

/// A number field of run.json, by key (the first occurrence).
fn json_number(text: &str, key: &str) -> Result<f64> {
    let at = text
        .find(&format!("\"{key}\": "))
        .with_context(|| format!("no {key} in run.json"))?;
    let value = &text[at + key.len() + 4..];
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(value.len());
    Ok(value[..end].parse()?)
}

fn detach(mut tracer: Attached) -> Result<TracerCost> {
    let pid = tracer.child.id();
    let wall_s = tracer.since.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid)? - tracer.cpu_at_attach;
    let peak_rss_kb = peak_rss_kb(pid)?;
    // SIGINT, as a user's Ctrl-C. SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let status = tracer.child.wait()?;
    let said = tracer.stderr.join().unwrap_or_default();
    anyhow::ensure!(status.success(), "tracer failed ({status}):\n{said}");
    let run = std::fs::read_to_string(trace_dir().join("run.json"))?;
    Ok(TracerCost {
        attach_ms: json_number(&run, "attach_ms")?,
        cpu_s,
        wall_s,
        peak_rss_kb,
        hits: json_number(&run, "probe_hits")? as u64,
        drops: json_number(&run, "ring_buffer_drops")? as u64,
    })
}

/// One part of the bench.
#[derive(clap::Subcommand)]
pub enum Part {
    /// The step overhead alone (out/bench/step_overhead.csv, sustained.csv)
    Steps,
    /// The queue axis alone (out/bench/queues.csv)
    Queues {
        /// Points as RUNNINGxWAITING, e.g. 512x2000 (default: the whole axis)
        #[arg(value_parser = queues::parse_point)]
        points: Vec<(u32, u32)>,
    },
}

/// The whole bench, or one part of it.
pub fn run(part: Option<Part>) -> Result<()> {
    match part {
        None => {
            step_overhead()?;
            queues::run(&[])
        }
        Some(Part::Steps) => step_overhead(),
        Some(Part::Queues { points }) => queues::run(&points),
    }
}

fn step_overhead() -> Result<()> {
    let results = workspace_root().join("out/bench");
    std::fs::create_dir_all(&results)?;
    let fake_cuda = crate::fixture::build_fake_libcuda(&results)?;
    let mut table = String::from(
        "execute_ms,batch,mode,untraced_step_us,traced_step_us,ratio,untraced_steps,\
         traced_steps,attach_ms,tracer_cpu_percent,tracer_peak_rss_mb,hits_per_s,ring_drops\n",
    );
    println!(
        "{:>8} {:>5} {:>11} {:>10} {:>10} {:>7} {:>9} {:>6} {:>7} {:>8} {:>6}",
        "execute",
        "batch",
        "mode",
        "untraced",
        "traced",
        "ratio",
        "attach",
        "cpu",
        "rss",
        "hits/s",
        "drops"
    );
    for execute_ms in EXECUTE_MS {
        for &batch in BATCHES {
            for mode in MODES {
                let (untraced, traced, cost) = measure(execute_ms, batch, mode, &fake_cuda)?;
                let ratio = traced.mean_us() / untraced.mean_us();
                println!(
                    "{:>5} ms {:>5} {:>11} {:>7.1} µs {:>7.1} µs {:>7.4} {:>6.0} ms {:>5.1}% {:>4.0} MB {:>8.0} {:>6}",
                    execute_ms,
                    batch,
                    mode.name,
                    untraced.mean_us(),
                    traced.mean_us(),
                    ratio,
                    cost.attach_ms,
                    cost.cpu_percent(),
                    cost.peak_rss_kb as f64 / 1024.0,
                    cost.hits_per_s(),
                    cost.drops
                );
                writeln!(
                    table,
                    "{execute_ms},{batch},{},{:.2},{:.2},{ratio:.5},{},{},{:.1},{:.2},{:.1},{:.0},{}",
                    mode.name,
                    untraced.mean_us(),
                    traced.mean_us(),
                    untraced.steps,
                    traced.steps,
                    cost.attach_ms,
                    cost.cpu_percent(),
                    cost.peak_rss_kb as f64 / 1024.0,
                    cost.hits_per_s(),
                    cost.drops
                )?;
            }
        }
    }
    let path = results.join("step_overhead.csv");
    std::fs::write(&path, table)?;
    println!(
        "(ratio = mean step() time traced ÷ untraced, same process, alternating windows; \
         attach = slowest attach; cpu = tracer CPU time ÷ traced wall time; rss = tracer peak; \
         {})",
        path.display()
    );
    sustained(&results)
}

/// The fastest the fixture steps (no execute cost, no requests): probe hits/s the pipeline
/// takes there, and whether any were lost.
fn sustained(results: &std::path::Path) -> Result<()> {
    let mut table = String::from("mode,hits_per_s,steps_per_s,ring_drops,snapshots_dropped\n");
    for mode in &MODES[..2] {
        let fixture = Fixture::spawn(&["--execute-ms", "0", "--num-requests", "0"])?;
        let tracer = attach(fixture.pid, mode.options)?;
        std::thread::sleep(std::time::Duration::from_secs(3));
        let cost = detach(tracer)?;
        let run = std::fs::read_to_string(trace_dir().join("run.json"))?;
        let steps = json_number(&run, "steps")?;
        let snapshots_dropped = json_number(&run, "snapshots_dropped")?;
        println!(
            "fastest fixture, {}: {:.0} probe hits/s ({:.0} steps/s), {} hits lost, {} snapshots lost",
            mode.name,
            cost.hits_per_s(),
            steps / cost.wall_s,
            cost.drops,
            snapshots_dropped
        );
        writeln!(
            table,
            "{},{:.0},{:.0},{},{}",
            mode.name,
            cost.hits_per_s(),
            steps / cost.wall_s,
            cost.drops,
            snapshots_dropped
        )?;
    }
    std::fs::write(results.join("sustained.csv"), table)?;
    Ok(())
}

/// Untraced and traced step times of one fixture process, alternating windows.
fn measure(
    execute_ms: &str,
    batch: u32,
    mode: &Mode,
    fake_cuda: &std::path::Path,
) -> Result<(Side, Side, TracerCost)> {
    let (batch_arg, arrivals) = (
        batch.to_string(),
        format!("{}", batch as f64 / REQUEST_TOKENS as f64),
    );
    let tokens = REQUEST_TOKENS.to_string();
    // Prompts of 16–64 tokens plus 64 outputs: at most 8 blocks of 16 a request; twice that.
    let blocks = (batch * 16 + 64).to_string();
    let mut args = vec![
        "--execute-ms",
        execute_ms,
        "--rate-every",
        "0.5",
        "--max-num-seqs",
        &batch_arg,
        "--arrival-per-step",
        &arrivals,
        "--max-tokens",
        &tokens,
        &tokens,
        "--stop-prob",
        "0",
        "--prompt-len",
        "16",
        "64",
        "--num-gpu-blocks",
        &blocks,
    ];
    let lib = fake_cuda.display().to_string();
    if mode.cuda {
        args.extend(["--fake-cuda", &lib]);
    }
    args.extend(mode.fixture);
    let mut fixture = Fixture::spawn(&args)?;
    let (mut untraced, mut traced) = (
        Side {
            steps: 0,
            step_ns: 0,
        },
        Side {
            steps: 0,
            step_ns: 0,
        },
    );
    let mut cost = TracerCost::default();
    fixture.next_line("rate")?; // settle
    for _ in 0..ROUNDS {
        for _ in 0..WINDOWS {
            untraced.add(&fixture.next_line("rate")?)?;
        }
        let tracer = attach(fixture.pid, mode.options)?;
        fixture.next_line("rate")?; // the window the attach landed in
        for _ in 0..WINDOWS {
            traced.add(&fixture.next_line("rate")?)?;
        }
        cost.add(detach(tracer)?);
        fixture.next_line("rate")?;
    }
    Ok((untraced, traced, cost))
}
