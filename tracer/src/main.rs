//! The `tracer` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tracer::trace;

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
    /// Attach to a running vLLM engine process and write steps.csv and run.json.
    ///
    /// Runs until Ctrl-C, SIGTERM, --duration, or the target's exit; files are complete in
    /// every case.
    Attach {
        /// Process id of the vLLM engine (the EngineCore process, or the server itself when
        /// it runs the engine in-process).
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
    },
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
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
        } => trace::run(trace::Options {
            pid,
            tid,
            out_dir: output,
            duration,
            quiet,
        }),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            trace::say(&format!("tracer: error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}
