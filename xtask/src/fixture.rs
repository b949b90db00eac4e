//! The bundled fixture engine (tests/fixtures/engine) as a child process, and the demo.

use std::{
    io::{BufRead, BufReader, Lines},
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::{exec, tracer_bin, workspace_root};

/// The first interpreter we have of those the tracer supports.
pub fn python() -> Result<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    [
        format!("{home}/.pyenv/versions/3.11.7/bin/python3"),
        "/usr/bin/python3.11".into(),
        "/usr/bin/python3".into(),
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .context("no Python 3.11+ found")
}

pub struct Fixture {
    child: Child,
    pub pid: u32,
    pub stdout: Lines<BufReader<ChildStdout>>,
}

impl Fixture {
    /// Starts the fixture engine and waits for its `ready` line.
    pub fn spawn(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(python()?)
            .arg(workspace_root().join("tests/fixtures/engine/run_engine.py"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        match stdout.next() {
            Some(Ok(line)) if line.starts_with("ready") => Ok(Self { child, pid, stdout }),
            other => bail!("fixture engine did not start: {other:?}"),
        }
    }

    /// The next line that starts with `prefix`.
    pub fn next_line(&mut self, prefix: &str) -> Result<String> {
        for line in self.stdout.by_ref() {
            let line = line?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
        bail!("fixture engine exited")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Traces the fixture engine for 3 seconds into out/demo and shows the result.
pub fn demo() -> Result<()> {
    let out = workspace_root().join("out/demo");
    let fixture = Fixture::spawn(&["--execute-ms", "1"])?;
    eprintln!(
        "demo: fixture engine running as pid {}; tracing it for 3 s",
        fixture.pid
    );
    exec(
        Command::new(tracer_bin())
            .args([
                "attach",
                "--pid",
                &fixture.pid.to_string(),
                "--duration",
                "3",
                "-o",
            ])
            .arg(&out),
    )?;
    drop(fixture);
    let csv = std::fs::read_to_string(out.join("steps.csv"))?;
    eprintln!("demo: {} (first rows):", out.join("steps.csv").display());
    for line in csv.lines().take(6) {
        println!("{line}");
    }
    Ok(())
}

/// tests/fixtures/fakecuda built as `dir`/fakecuda/libcuda.so.1 (the name the tracer looks
/// for).
pub fn build_fake_libcuda(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let lib = dir.join("fakecuda/libcuda.so.1");
    std::fs::create_dir_all(lib.parent().expect("has a parent"))?;
    let status = Command::new("gcc")
        .args(["-O2", "-fPIC", "-shared", "-fno-ipa-icf", "-o"])
        .arg(&lib)
        .arg(workspace_root().join("tests/fixtures/fakecuda/fakecuda.c"))
        .status()
        .context("running gcc")?;
    anyhow::ensure!(status.success(), "building the fake libcuda failed");
    Ok(lib)
}
