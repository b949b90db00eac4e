//! Project chores, one command each: [`Task`] (`cargo xtask --help`), and README.md.

mod bench;
mod codegen;
mod fixture;
mod modules;
mod python_build;
mod quickstart;
mod real_vllm;
mod screenshot;
mod setup;
mod test_run;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// Project chores, one command each (README.md says more).
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (nightly rust-src, bpf-linker into .tools/), then build
    Setup,
    /// Setup, then trace the bundled fixture engine for a few seconds (out/demo)
    Demo,
    /// Setup, then every test (unit and real-probe integration), a summary line per test
    /// binary at the end
    Test {
        /// Passed to `cargo test`, e.g. `--test faults -- --ignored long_run`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// Step-time overhead, traced ÷ untraced, on the fixture engine (every part unless one is
    /// named); tables in out/bench
    Bench {
        #[command(subcommand)]
        part: Option<bench::Part>,
    },
    /// Regenerate the CPython layout tables from the interpreters' own headers
    Codegen,
    /// Build a CPython the machine lacks into .pythons/ (from Debian's packages)
    Python {
        /// The CPython minor version
        #[arg(default_value = "3.14")]
        minor: String,
    },
    /// Released vLLM in cached venvs, and the harness that runs it under the tracer
    RealVllm {
        #[command(subcommand)]
        command: real_vllm::Task,
    },
    /// A trace's timeline in speedscope (headless Chromium) as a PNG
    Screenshot(screenshot::Args),
    /// README's quick start, run exactly as written
    Quickstart {
        /// Run it in a fresh `git clone` of this checkout's HEAD (nothing built)
        #[arg(long)]
        clone: bool,
    },
    /// The tracer crate's imports between modules (cycles, the layer rule) and its longest
    /// functions
    Modules,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => {
            setup::run()?;
            fixture::demo()
        }
        Task::Test { cargo_test_args } => {
            // Tools only: the test build compiles everything itself (a separate release
            // build first would compile the eBPF object twice).
            setup::tools()?;
            // The CPython matrix's rows that `cargo xtask python` makes (~25 s from nothing
            // here); best effort: where it cannot, those rows skip and the summary says why.
            let pythons = python_build::for_tests();
            // Default members only: tracer-ebpf builds for the BPF target, inside tracer's build.rs.
            test_run::run(&cargo_test_args, &pythons)
        }
        Task::Bench { part } => {
            setup::run()?;
            bench::run(part)
        }
        Task::Codegen => codegen::run(),
        Task::Python { minor } => python_build::ensure(&minor),
        Task::RealVllm { command } => real_vllm::main(command),
        Task::Screenshot(args) => screenshot::run(args),
        Task::Quickstart { clone } => quickstart::run(clone),
        Task::Modules => modules::run(),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Where setup installs tools: ignored by git, kept between runs.
pub fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

/// `cargo` in the workspace root, with the tools dir first on PATH (bpf-linker).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env(
        "PATH",
        format!("{}:{path}", tools_dir().join("bin").display()),
    )
    .current_dir(workspace_root());
    cmd
}

/// Runs a command with inherited output; fails if it fails.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command, returns its stdout; fails with its stderr when it fails.
pub fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The built tracer binary.
pub fn tracer_bin() -> PathBuf {
    workspace_root().join("target/release/tracer")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's commands reach the tasks with their arguments intact.
    #[test]
    fn readme_commands_parse() {
        let parse = |line: &str| Cli::try_parse_from(line.split(' ')).map(|cli| cli.task);
        match parse("cargo-xtask test --test faults -- --ignored long_run") {
            Ok(Task::Test { cargo_test_args }) => {
                assert_eq!(
                    cargo_test_args,
                    ["--test", "faults", "--", "--ignored", "long_run"]
                )
            }
            _ => panic!("test with cargo test arguments"),
        }
        match parse("cargo-xtask real-vllm run --version 0.33.0 -- --async-scheduling --workers 2")
        {
            Ok(Task::RealVllm {
                command:
                    real_vllm::Task::Run {
                        version, harness, ..
                    },
            }) => {
                assert_eq!(version, "0.33.0");
                assert_eq!(harness, ["--async-scheduling", "--workers", "2"]);
            }
            _ => panic!("real-vllm run with harness arguments"),
        }
        match parse("cargo-xtask real-vllm sweep --versions 0.34.0,0.8.5.post1 --keep") {
            Ok(Task::RealVllm {
                command:
                    real_vllm::Task::Sweep {
                        versions,
                        shapes,
                        keep,
                    },
            }) => {
                assert_eq!(versions, ["0.34.0", "0.8.5.post1"]);
                assert_eq!(shapes.len(), 4, "every shape by default");
                assert!(keep);
            }
            _ => panic!("real-vllm sweep"),
        }
        assert!(matches!(
            parse("cargo-xtask bench queues 512x2000"),
            Ok(Task::Bench { part: Some(bench::Part::Queues { points }) }) if points == [(512, 2000)]
        ));
        assert!(parse("cargo-xtask bench queues 512x7").is_err());
        assert!(parse("cargo-xtask quickstart --clone").is_ok());
    }
}
