//! The `tracer` command line: subcommands, their options and the parsers of their values.

use std::{path::PathBuf, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use tracer::{
    live::{cuda, launch, session, shadow},
    offline::export,
};

/// Trace an unmodified, running vLLM engine with eBPF: for every engine step, how long
/// schedule, execute and update took, what was in the batch, and every request's lifecycle.
///
/// Probes are hardware watchpoints on the Python bytecode of the engine's step function, so
/// the target is never stopped, patched or restarted. `attach` and `run` need root, or
/// CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE; `tracer doctor` checks these and says how to fix
/// what is missing. `report`, `compare`, `export` and `export-trace` only read files.
#[derive(Parser)]
#[command(version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach to a running vLLM deployment and write steps.csv, requests.csv, events.csv,
    /// queues.csv, run.json and trace.json.
    ///
    /// Runs until Ctrl-C, SIGTERM, --duration, or the target's exit; files are complete in
    /// every case. Needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (BPF programs,
    /// breakpoint perf events on another process's thread, reading its memory): `tracer
    /// doctor` checks all three.
    Attach(Attach),
    /// Start a command (e.g. `vllm serve …`, or a script that starts the server and a
    /// benchmark client), wait until vLLM's engine loop runs, and trace it like `attach`.
    ///
    /// The trace ends when the engines exit, on Ctrl-C or after --duration; then whatever
    /// is left of the command is stopped (SIGTERM to its process group). If the tracer dies,
    /// the command's process group is killed. Under sudo the command runs as the invoking
    /// user (SUDO_UID, SUDO_GID and that user's groups), not as root.
    Run(Run),
    /// Check that this machine (and with --pid, that target) can be traced; say how to fix
    /// what cannot. Exits non-zero when a check fails.
    ///
    /// Checks the kernel (5.17+; 5.8+ with --phases-only; bpf(), ring buffers, lockdown), privileges (root, or
    /// CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE), hardware watchpoints, uprobes, and
    /// perf_event_paranoid and ptrace_scope; with --pid also the engines, CPython and vLLM
    /// versions and every probe point.
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
    ///
    /// Per engine: pid and thread, CPython and vLLM versions, the step function's code
    /// object, and each watchpoint's bytecode offset and address. Reads the target's memory,
    /// so it needs root or CAP_SYS_PTRACE; loads nothing into the kernel.
    Probes {
        /// Any process of the deployment, as for `attach`.
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
    /// Two traces side by side (e.g. two vLLM versions): the report's tables for both, with
    /// B ÷ A ratios and a Mann-Whitney U p-value per distribution.
    ///
    /// Each side is labelled with its run's vLLM version, engine config and --label values.
    Compare {
        /// The first trace's output directory (the baseline).
        a: PathBuf,
        /// The second trace's output directory (ratios are B ÷ A).
        b: PathBuf,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite a trace's CSVs in another tool's shape: `seed` (the in-process logger's
    /// per-step columns), `features` (step-time model inputs), `blis` or `vidur` (request
    /// streams for those simulators).
    ///
    /// Writes seed.csv, features.csv, blis.csv + blis.yaml or vidur.csv next to each
    /// engine's CSVs (or to -o); `--format` below says what each holds. seed.csv takes the
    /// engine config from run.json and temperature, arrival_rate, distribution and dataset
    /// from the trace's --label values.
    Export {
        /// A trace's output directory.
        dir: PathBuf,
        /// Which tool's shape to write.
        #[arg(long, value_enum)]
        format: export::Format,
        /// Output file (default: next to the CSVs of each engine).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write a trace's CSVs as a Chrome JSON trace (DIR/trace.json) for ui.perfetto.dev or
    /// speedscope.
    ///
    /// `attach` and `run` write trace.json when they end; this rewrites it, e.g. after the
    /// CSVs were edited or with an older trace.
    ExportTrace {
        /// A trace's output directory.
        dir: PathBuf,
        /// Output file (default DIR/trace.json).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

// The options of `tracer attach` (its help text is the doc comment of `Command::Attach`).
#[derive(Args)]
pub struct Attach {
    /// Any process of the deployment: the API server (`vllm serve`), an EngineCore or a
    /// worker; the tracer finds the engine process(es) from it. Data-parallel engines are
    /// each traced, into DIR/dp<rank>/.
    #[arg(long, short)]
    pub pid: u32,
    /// Engine thread id, if the tracer cannot find the thread running the busy loop.
    #[arg(long)]
    pub tid: Option<u32>,
    #[command(flatten)]
    pub trace: TraceOptions,
}

// The options of `tracer run` (its help text is the doc comment of `Command::Run`).
#[derive(Args)]
pub struct Run {
    /// Give up if no engine loop runs after this many seconds (vLLM loads the model first).
    #[arg(long, value_parser = parse_seconds, default_value = "1200")]
    pub wait: Duration,
    /// Under sudo, run the command as root too (by default it runs as the invoking user).
    #[arg(long)]
    pub as_root: bool,
    #[command(flatten)]
    pub trace: TraceOptions,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// The options `attach` and `run` share: where the trace goes and what it holds.
#[derive(Args)]
pub struct TraceOptions {
    /// Output directory (created if missing).
    #[arg(long, short, default_value = "out")]
    pub output: PathBuf,
    /// Stop after this many seconds of tracing (fractions allowed; 0 writes an empty trace).
    #[arg(long, short, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Print nothing but errors (no status line, no summary).
    #[arg(long, short)]
    pub quiet: bool,
    /// CUDA driver-API probes in the engine's processes: `launches` fills every CUDA
    /// column of steps.csv; `sync` all but kernel launches, at a few probe hits per step
    /// instead of one per kernel.
    #[arg(long, value_enum, default_value_t = cuda::Level::default())]
    pub cuda: cuda::Level,
    /// A label for run.json, e.g. `--label dataset=sharegpt` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = launch::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Also write seed.csv: the in-process logger's columns (see `tracer export`).
    #[arg(long)]
    pub seed_csv: bool,
    /// Phases only: no scheduler snapshots, so no batch columns, requests.csv, events.csv
    /// or queues.csv. Each snapshot copies the queues while the engine thread waits
    /// (a few µs per queued request), so this is the lightest trace.
    #[arg(long)]
    pub phases_only: bool,
    /// Where each step's scheduler snapshot reads the requests' fields: `sync` in the
    /// trap (the engine thread waits ~1 µs per queued request), `shadow` from the tracer
    /// while the batch executes (a fixed few µs on the engine thread; a copy that ends
    /// after the step moves on is dropped and counted), `auto` sync while execute takes
    /// under 2 ms (a CPU stand-in), then shadow, and back to sync if copies end late.
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = shadow::Mode::Auto)]
    pub snapshots: shadow::Mode,
    /// Size of the kernel ring buffer that carries probe hits and scheduler snapshots to
    /// the tracer, in KiB: a power of two from 4 to 1048576. Raise it when the tracer
    /// reports lost hits or snapshots (a stalled tracer, or very long queues).
    #[arg(long, value_name = "KIB", default_value_t = tracer_common::EVENTS_BYTES / 1024, value_parser = parse_ring_kib)]
    pub ring_kib: u32,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text}"))?;
    if seconds < 0.0 {
        return Err("must be 0 seconds or more".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| "not a finite number of seconds".into())
}

/// The parser. Negative numbers reach the value parsers (tracer has no flag named like a
/// number), so `--duration -1` gets parse_seconds' message instead of clap's "unexpected
/// argument '-1'".
pub fn command() -> clap::Command {
    Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|arg| {
            if arg.get_action().takes_values() {
                arg.allow_negative_numbers(true)
            } else {
                arg
            }
        })
    })
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

impl TraceOptions {
    /// What each engine's trace is asked for.
    pub fn session(&self) -> session::Options {
        session::Options {
            duration: self.duration,
            quiet: self.quiet,
            cuda: self.cuda,
            snapshots: (!self.phases_only).then_some(self.snapshots),
            ring_bytes: self.ring_kib * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_is_consistent() {
        command().debug_assert();
    }

    /// `tracer X --help` says what X is for and what each of its options does.
    #[test]
    fn every_subcommand_and_option_has_help() {
        let cli = command();
        assert!(cli.get_about().is_some_and(|a| !a.to_string().is_empty()));
        let mut seen = Vec::new();
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            assert!(
                sub.get_about()
                    .is_some_and(|a| !a.to_string().trim().is_empty()),
                "`tracer {name}` has no description"
            );
            for arg in sub.get_arguments() {
                let id = arg.get_id();
                if ["help", "version"].contains(&id.as_str()) {
                    continue;
                }
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "`tracer {name}`'s {id} has no help"
                );
            }
            seen.push(name.to_owned());
        }
        for name in [
            "attach",
            "run",
            "doctor",
            "probes",
            "report",
            "compare",
            "export",
            "export-trace",
        ] {
            assert!(
                seen.iter().any(|s| s == name),
                "{name} not checked: {seen:?}"
            );
        }
    }

    #[test]
    fn seconds_refuse_negatives_with_their_own_message() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("-1"), Err("must be 0 seconds or more".into()));
        assert!(parse_seconds("inf").unwrap_err().contains("not a finite"));
        assert!(parse_seconds("soon").unwrap_err().contains("not a number"));
        // Through the parser: `-1` is the option's value, not an unknown flag.
        let error = command()
            .try_get_matches_from(["tracer", "attach", "--pid", "1", "--duration", "-1"])
            .expect_err("refused");
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(
            error.to_string().contains("must be 0 seconds or more"),
            "{error}"
        );
    }
}
