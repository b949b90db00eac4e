//! Project chores, one command each (see README.md):
//!
//! - `cargo xtask setup`   install what the build needs (nightly rust-src, bpf-linker), build
//! - `cargo xtask demo`    setup, then trace the bundled fixture engine for a few seconds
//! - `cargo xtask test`    setup, then every test (unit and real-probe integration), a
//!   summary line per test binary at the end
//! - `cargo xtask bench`   step-time overhead, traced ÷ untraced, on the fixture engine
//! - `cargo xtask codegen` regenerate the CPython layout tables
//! - `cargo xtask python 3.14` build a CPython the machine lacks into `.pythons/`
//! - `cargo xtask real-vllm` released vLLM in cached venvs, and the harness that runs it
//! - `cargo xtask screenshot` a trace's timeline in speedscope (headless Chromium) as a PNG
//! - `cargo xtask quickstart [--clone]` README's quick start, run exactly as written

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("demo") => {
            setup::run()?;
            fixture::demo()
        }
        Some("test") => {
            // Tools only: the test build compiles everything itself (a separate release
            // build first would compile the eBPF object twice).
            setup::tools()?;
            // The CPython matrix's rows that `cargo xtask python` makes (~25 s from nothing
            // here); best effort: where it cannot, those rows skip and the summary says why.
            let pythons = python_build::for_tests();
            // Default members only: tracer-ebpf builds for the BPF target, inside tracer's build.rs.
            test_run::run(&args[1..], &pythons)
        }
        Some("bench") => {
            setup::run()?;
            bench::run(&args[1..])
        }
        Some("codegen") => codegen::run(),
        Some("python") => python_build::run(&args[1..]),
        Some("real-vllm") => real_vllm::main(&args[1..]),
        Some("screenshot") => screenshot::run(&args[1..]),
        Some("quickstart") => quickstart::run(&args[1..]),
        Some("modules") => modules::run(&args[1..]),
        _ => bail!(
            "usage: cargo xtask \
             <setup|demo|test|bench|codegen|python|real-vllm|screenshot|quickstart|modules>"
        ),
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
