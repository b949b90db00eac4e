//! The `tracer` command line.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::bail;
use clap::{Parser, Subcommand};
use tracer::{compare, cuda, doctor, engines, export, launch, perfetto, probes, report, trace};

/// Trace an unmodified, running vLLM engine with eBPF: for every engine step, how long
/// schedule, execute and update took.
///
/// Probes are hardware watchpoints on the Python bytecode of the engine's step function, so
/// the target is never stopped, patched or restarted. Needs root (CAP_BPF + CAP_PERFMON).
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a running vLLM deployment and write steps.csv, run.json and trace.json.
    ///
    /// Runs until Ctrl-C, SIGTERM, --duration, or the target's exit; files are complete in
    /// every case.
    Attach {
        /// Any process of the deployment: the API server (`vllm serve`), an EngineCore or a
        /// worker; the tracer finds the engine process(es) from it. Data-parallel engines are
        /// each traced, into DIR/dp<rank>/.
        #[arg(long, short)]
        pid: u32,
        /// Engine thread id, if the tracer cannot find the thread running the busy loop.
        #[arg(long)]
        tid: Option<u32>,
        /// Output directory (created if missing).
        #[arg(long, short, default_value = "out")]
        output: PathBuf,
        /// Stop after this many seconds (fractions allowed).
        #[arg(long, short, value_parser = parse_seconds)]
        duration: Option<Duration>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// CUDA driver-API probes in the engine's processes: `launches` fills every CUDA
        /// column of steps.csv; `sync` all but kernel launches, at a few probe hits per step
        /// instead of one per kernel.
        #[arg(long, value_enum, default_value_t = cuda::Level::default())]
        cuda: cuda::Level,
        /// A label for run.json, e.g. `--label dataset=sharegpt` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = launch::parse_label)]
        labels: Vec<(String, String)>,
        /// Also write seed.csv: the in-process logger's columns (see `tracer export`).
        #[arg(long)]
        seed_csv: bool,
        /// Phases only: no scheduler snapshots, so no batch columns, requests.csv, events.csv
        /// or queues.csv. Each snapshot copies the queues while the engine thread waits
        /// (a few µs per queued request), so this is the lightest trace.
        #[arg(long)]
        phases_only: bool,
        /// Size of the kernel ring buffer that carries probe hits and scheduler snapshots to
        /// the tracer, in KiB: a power of two from 4 to 1048576. Raise it when the tracer
        /// reports lost hits or snapshots (a stalled tracer, or very long queues).
        #[arg(long, value_name = "KIB", default_value_t = tracer_common::EVENTS_BYTES / 1024, value_parser = parse_ring_kib)]
        ring_kib: u32,
    },
    /// Start a command (e.g. `vllm serve …`, or a script that starts the server and a
    /// benchmark client), wait until vLLM's engine loop runs, and trace it like `attach`.
    ///
    /// The trace ends when the engines exit, on Ctrl-C or after --duration; then whatever
    /// is left of the command is stopped (SIGTERM to its process group).
    Run {
        /// Output directory (created if missing).
        #[arg(long, short, default_value = "out")]
        output: PathBuf,
        /// Stop after this many seconds of tracing.
        #[arg(long, short, value_parser = parse_seconds)]
        duration: Option<Duration>,
        /// Give up if no engine loop runs after this many seconds (vLLM loads the model first).
        #[arg(long, value_parser = parse_seconds, default_value = "1200")]
        wait: Duration,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// CUDA probes, as for `attach`.
        #[arg(long, value_enum, default_value_t = cuda::Level::default())]
        cuda: cuda::Level,
        /// Phases only, as for `attach`.
        #[arg(long)]
        phases_only: bool,
        /// Ring buffer size in KiB, as for `attach`.
        #[arg(long, value_name = "KIB", default_value_t = tracer_common::EVENTS_BYTES / 1024, value_parser = parse_ring_kib)]
        ring_kib: u32,
        /// Also write seed.csv, as for `attach`.
        #[arg(long)]
        seed_csv: bool,
        /// A label for run.json, e.g. `--label dataset=sharegpt` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = launch::parse_label)]
        labels: Vec<(String, String)>,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Check that this machine (and with --pid, that target) can be traced; say how to fix
    /// what cannot. Exits non-zero when a check fails.
    Doctor {
        /// Also check a target: any process of a vLLM deployment.
        #[arg(long, short)]
        pid: Option<u32>,
        /// Print every check with its fix as Markdown (the README's troubleshooting section).
        #[arg(long)]
        markdown: bool,
    },
    /// List the probes `attach --pid N` would put in, with addresses and versions, without
    /// attaching anything.
    Probes {
        #[arg(long, short)]
        pid: u32,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Summary tables and charts of a trace: writes DIR/report/index.html (and .md, .json,
    /// .svg) and prints the tables.
    Report {
        /// A trace's output directory.
        dir: PathBuf,
        /// Where to write the report (default DIR/report).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Do not print the tables.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Two traces side by side (e.g. two vLLM versions): B ÷ A ratios and Mann-Whitney p.
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite a trace's CSVs in another tool's shape: `seed` = the per-step columns of the
    /// in-process logger patched into vLLM's core.py (DIR/seed.csv).
    Export {
        /// A trace's output directory.
        dir: PathBuf,
        #[arg(long, value_enum)]
        format: export::Format,
        /// Output file (default: next to the CSVs of each engine).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write a trace's CSVs as a Chrome JSON trace (DIR/trace.json) for ui.perfetto.dev.
    ExportTrace {
        dir: PathBuf,
        /// Output file (default DIR/trace.json).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// The kernel takes ring buffers of a power-of-two number of pages.
fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text
        .parse()
        .map_err(|_| format!("not a number of KiB: {text}"))?;
    if kib.is_power_of_two() && (4..=1 << 20).contains(&kib) {
        Ok(kib)
    } else {
        Err(format!(
            "{kib} KiB: the ring buffer takes a power of two from 4 to 1048576 KiB"
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach {
            pid,
            tid,
            output,
            duration,
            quiet,
            cuda,
            labels,
            seed_csv,
            phases_only,
            ring_kib,
        } => engines::find(pid, tid)
            .map_err(Into::into)
            .and_then(|engines| {
                launch::trace_and_finish(&engines, &output, &labels, quiet, &|engine, out_dir| {
                    trace::Options {
                        pid: engine.process.pid,
                        tid: Some(engine.resolved.tid),
                        out_dir,
                        duration,
                        quiet,
                        cuda,
                        snapshots: !phases_only,
                        ring_bytes: ring_kib * 1024,
                    }
                })
            })
            .and_then(|()| write_seed(seed_csv, &output)),
        Command::Run {
            output,
            duration,
            wait,
            quiet,
            cuda,
            labels,
            phases_only,
            ring_kib,
            seed_csv,
            command,
        } => launch::run(
            &command,
            wait,
            &output,
            &labels,
            quiet,
            &|engine, out_dir| trace::Options {
                pid: engine.process.pid,
                tid: Some(engine.resolved.tid),
                out_dir,
                duration,
                quiet,
                cuda,
                snapshots: !phases_only,
                ring_bytes: ring_kib * 1024,
            },
        )
        .and_then(|()| write_seed(seed_csv, &output)),
        Command::Export {
            dir,
            format,
            output,
        } => export::export(&dir, format, output.as_deref()).map(|written| {
            for path in written {
                println!("wrote {}", path.display());
            }
        }),
        Command::Doctor { pid, markdown } => run_doctor(pid, markdown),
        Command::Probes { pid, json } => run_probes(pid, json),
        Command::Report { dir, output, quiet } => run_report(&dir, output.as_deref(), quiet),
        Command::Compare { a, b, json } => run_compare(&a, &b, json),
        Command::ExportTrace { dir, output } => {
            perfetto::export(&dir, output.as_deref()).map(|exported| {
                println!(
                    "wrote {} ({} events)",
                    exported.path.display(),
                    exported.events
                )
            })
        }
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            trace::say(&format!("tracer: error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run_doctor(pid: Option<u32>, markdown: bool) -> anyhow::Result<()> {
    if markdown {
        print!("{}", doctor::markdown());
        return Ok(());
    }
    let (text, failed) = doctor::run(pid);
    print!("{text}");
    if failed {
        bail!("some checks failed");
    }
    Ok(())
}

fn run_probes(pid: u32, json: bool) -> anyhow::Result<()> {
    let engines = probes::list(pid)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&engines)?);
    } else {
        print!("{}", probes::text(&engines));
    }
    Ok(())
}

/// `--seed-csv`: the logger's columns next to each engine's CSVs, once labels are in.
fn write_seed(wanted: bool, output: &Path) -> anyhow::Result<()> {
    if wanted {
        export::export(output, export::Format::Seed, None)?;
    }
    Ok(())
}

fn run_report(dir: &Path, output: Option<&Path>, quiet: bool) -> anyhow::Result<()> {
    let written = report::write(dir, output)?;
    if !quiet {
        print!("{}", written.text);
    }
    println!("wrote {}", written.dir.join("index.html").display());
    Ok(())
}

fn run_compare(a: &Path, b: &Path, json: bool) -> anyhow::Result<()> {
    let comparison = compare::compare(a, b)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        print!("{}", compare::text(&comparison));
    }
    Ok(())
}
