//! The `tracer` command line.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::bail;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use tracer::{
    live::{
        cuda, engines, launch, session, shadow,
        sinks::{OutDir, TRACE_FILES},
    },
    offline::{compare, export, perfetto, report},
    tools::{doctor, probes},
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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a running vLLM deployment and write steps.csv, requests.csv, events.csv,
    /// queues.csv, run.json and trace.json.
    ///
    /// Runs until Ctrl-C, SIGTERM, --duration, or the target's exit; files are complete in
    /// every case. Needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (BPF programs,
    /// breakpoint perf events on another process's thread, reading its memory): `tracer
    /// doctor` checks all three.
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
        /// Stop after this many seconds (fractions allowed; 0 writes an empty trace).
        #[arg(long, short, value_parser = parse_seconds)]
        duration: Option<Duration>,
        /// Print nothing but errors (no status line, no summary).
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
        /// Where each step's scheduler snapshot reads the requests' fields: `sync` in the
        /// trap (the engine thread waits ~1 µs per queued request), `shadow` from the tracer
        /// while the batch executes (a fixed few µs on the engine thread; a copy that ends
        /// after the step moves on is dropped and counted), `auto` sync while execute takes
        /// under 2 ms (a CPU stand-in), then shadow, and back to sync if copies end late.
        #[arg(long, value_enum, value_name = "WHERE", default_value_t = shadow::Mode::Auto)]
        snapshots: shadow::Mode,
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
    /// is left of the command is stopped (SIGTERM to its process group). If the tracer dies,
    /// the command's process group is killed. Under sudo the command runs as the invoking
    /// user (SUDO_UID, SUDO_GID and that user's groups), not as root.
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
        /// Where snapshots read the requests' fields, as for `attach`.
        #[arg(long, value_enum, value_name = "WHERE", default_value_t = shadow::Mode::Auto)]
        snapshots: shadow::Mode,
        /// Ring buffer size in KiB, as for `attach`.
        #[arg(long, value_name = "KIB", default_value_t = tracer_common::EVENTS_BYTES / 1024, value_parser = parse_ring_kib)]
        ring_kib: u32,
        /// Also write seed.csv, as for `attach`.
        #[arg(long)]
        seed_csv: bool,
        /// A label for run.json, e.g. `--label dataset=sharegpt` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = launch::parse_label)]
        labels: Vec<(String, String)>,
        /// Under sudo, run the command as root too (by default it runs as the invoking user).
        #[arg(long)]
        as_root: bool,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Check that this machine (and with --pid, that target) can be traced; say how to fix
    /// what cannot. Exits non-zero when a check fails.
    ///
    /// Checks the kernel (5.8+, bpf(), ring buffers, lockdown), privileges (root, or
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
fn command() -> clap::Command {
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

/// Writes to stdout, returning write errors (print! panics on them, e.g. a closed pipe).
fn out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// The reader of our stdout went away (`tracer probes … | head`): not an error of ours, so
/// exit 0 quietly, as other Unix tools do.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
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

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
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
            snapshots,
            ring_kib,
        } => engines::find(pid, tid)
            .map_err(Into::into)
            .and_then(|engines| Ok((engines, output_dir(&output)?)))
            .and_then(|(engines, out)| {
                launch::trace_and_finish(
                    &engines,
                    &out,
                    &labels,
                    quiet,
                    &per_engine(duration, quiet, cuda, phases_only, snapshots, ring_kib),
                )
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
            snapshots,
            ring_kib,
            seed_csv,
            as_root,
            command,
        } => output_dir(&output)
            .and_then(|out| {
                launch::run(
                    &command,
                    as_root,
                    wait,
                    &out,
                    &labels,
                    quiet,
                    &per_engine(duration, quiet, cuda, phases_only, snapshots, ring_kib),
                )
            })
            .and_then(|()| write_seed(seed_csv, &output)),
        Command::Export {
            dir,
            format,
            output,
        } => export::export(&dir, format, output.as_deref()).and_then(|written| {
            for path in written {
                out(&format!("wrote {}\n", path.display()))?;
            }
            Ok(())
        }),
        Command::Doctor { pid, markdown } => run_doctor(pid, markdown),
        Command::Probes { pid, json } => run_probes(pid, json),
        Command::Report { dir, output, quiet } => run_report(&dir, output.as_deref(), quiet),
        Command::Compare { a, b, json } => run_compare(&a, &b, json),
        Command::ExportTrace { dir, output } => {
            perfetto::export(&dir, output.as_deref()).and_then(|exported| {
                out(&format!(
                    "wrote {} ({} events)\n",
                    exported.path.display(),
                    exported.events
                ))
                .map_err(Into::into)
            })
        }
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // Errors quote the target's text (titles, mapped paths): escaped.
            tracer::stderr::say(&tracer::text::printable_lines(&format!(
                "tracer: error: {error:#}"
            )));
            ExitCode::FAILURE
        }
    }
}

/// The trace's output directory, open, with every file name a trace writes checked: a
/// planted link or FIFO is refused before anything is started or attached.
fn output_dir(path: &Path) -> anyhow::Result<OutDir> {
    let out = OutDir::create(path)?;
    out.check_names(TRACE_FILES)?;
    Ok(out)
}

fn run_doctor(pid: Option<u32>, markdown: bool) -> anyhow::Result<()> {
    if markdown {
        return Ok(out(&doctor::markdown())?);
    }
    let (text, failed) = doctor::run(pid);
    out(&text)?;
    if failed {
        bail!("some checks failed");
    }
    Ok(())
}

fn run_probes(pid: u32, json: bool) -> anyhow::Result<()> {
    let engines = probes::list(pid)?;
    if json {
        out(&(serde_json::to_string_pretty(&engines)? + "\n"))?;
    } else {
        out(&probes::text(&engines))?;
    }
    Ok(())
}

/// The trace of every engine of a deployment, from the options `attach` and `run` share.
fn per_engine(
    duration: Option<Duration>,
    quiet: bool,
    cuda: cuda::Level,
    phases_only: bool,
    snapshots: shadow::Mode,
    ring_kib: u32,
) -> session::Options {
    session::Options {
        duration,
        quiet,
        cuda,
        snapshots: (!phases_only).then_some(snapshots),
        ring_bytes: ring_kib * 1024,
    }
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
        out(&written.text)?;
    }
    out(&format!(
        "wrote {}\n",
        written.dir.join("index.html").display()
    ))?;
    Ok(())
}

fn run_compare(a: &Path, b: &Path, json: bool) -> anyhow::Result<()> {
    let comparison = compare::compare(a, b)?;
    if json {
        out(&(serde_json::to_string_pretty(&comparison)? + "\n"))?;
    } else {
        out(&compare::text(&comparison))?;
    }
    Ok(())
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

    #[test]
    fn broken_pipe_is_found_under_context() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let error = anyhow::Error::from(pipe).context("writing the report");
        assert!(is_broken_pipe(&error));
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other.context("reading steps.csv")));
    }
}
