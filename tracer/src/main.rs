//! The `tracer` command line.

mod cli;

use std::{io::Write as _, path::Path, process::ExitCode};

use anyhow::bail;
use clap::FromArgMatches as _;
use cli::{Cli, Command};
use tracer::{
    live::{
        engines, launch,
        sinks::{OutDir, TRACE_FILES},
        status::say,
    },
    offline::{compare, export, perfetto, report},
    text::printable_lines,
    tools::{doctor, probes},
};

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

fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&cli::command().get_matches()).unwrap_or_else(|e| e.exit());
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // Errors quote the target's text (titles, mapped paths): escaped.
            say(&printable_lines(&format!("tracer: error: {error:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Attach(args) => run_attach(&args),
        Command::Run(args) => run_command(&args),
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
            let exported = perfetto::export(&dir, output.as_deref())?;
            out(&format!(
                "wrote {} ({} events)\n",
                exported.path.display(),
                exported.events
            ))?;
            Ok(())
        }
    }
}

/// `tracer attach`: the engines of the deployment `--pid` names, traced until the trace ends.
fn run_attach(args: &cli::Attach) -> anyhow::Result<()> {
    let engines = engines::find(args.pid, args.tid)?;
    let trace = &args.trace;
    let out_dir = output_dir(&trace.output)?;
    launch::trace_and_finish(
        &engines,
        &out_dir,
        &trace.labels,
        trace.quiet,
        &trace.session(),
    )?;
    write_seed(trace.seed_csv, &trace.output)
}

/// `tracer run`: the command started, its engines traced, what is left of it stopped.
fn run_command(args: &cli::Run) -> anyhow::Result<()> {
    let trace = &args.trace;
    let out_dir = output_dir(&trace.output)?;
    launch::run(
        &args.command,
        args.as_root,
        args.wait,
        &out_dir,
        &trace.labels,
        trace.quiet,
        &trace.session(),
    )?;
    write_seed(trace.seed_csv, &trace.output)
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
    fn broken_pipe_is_found_under_context() {
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let error = anyhow::Error::from(pipe).context("writing the report");
        assert!(is_broken_pipe(&error));
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other.context("reading steps.csv")));
    }
}
