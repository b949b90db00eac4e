//! `cargo xtask bench`: what tracing costs the engine, as traced ÷ untraced step time in one
//! run of the fixture engine. The fixture reports its own mean `step()` time (timed around
//! the call, so every trap at step entry and inside is included) every half second; we
//! alternate untraced and traced windows on the same process, so drift hits both sides.

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{fixture::Fixture, tracer_bin, workspace_root};

/// Execute-phase costs (ms) to measure at: GPU steps are ~5–50 ms; short ones are the worst case.
const EXECUTE_MS: &[&str] = &["0.2", "1", "5"];
/// Alternations of untraced and traced windows per setting.
const ROUNDS: usize = 3;
/// Half-second windows measured per side per round.
const WINDOWS: usize = 4;
/// What is traced: phases only, and the default (phases plus two scheduler snapshots a step).
const MODES: &[(&str, &[&str])] = &[("phases-only", &["--phases-only"]), ("default", &[])];

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

fn attach(pid: u32, options: &[&str]) -> Result<Child> {
    let mut tracer = Command::new(tracer_bin())
        .args(["attach", "--pid", &pid.to_string(), "-o"])
        .arg(workspace_root().join("target/bench/trace"))
        .args(options)
        .stderr(Stdio::piped())
        .spawn()?;
    // The first stderr line is "tracer: attached …" (or an error).
    let mut stderr = std::io::BufReader::new(tracer.stderr.take().expect("piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line)?;
    anyhow::ensure!(line.contains("attached"), "tracer did not attach: {line}");
    // Keep reading, so the tracer's closing summary has somewhere to go.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Ok(tracer)
}

fn detach(mut tracer: Child) -> Result<()> {
    // SIGINT, as a user's Ctrl-C. SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(tracer.id() as libc::pid_t, libc::SIGINT) };
    anyhow::ensure!(tracer.wait()?.success(), "tracer failed");
    Ok(())
}

pub fn run() -> Result<()> {
    let mut table = String::from(
        "execute_ms,mode,untraced_step_us,traced_step_us,ratio,untraced_steps,traced_steps\n",
    );
    println!(
        "{:>10} {:>12} {:>18} {:>16} {:>8}",
        "execute", "mode", "untraced step", "traced step", "ratio"
    );
    for execute_ms in EXECUTE_MS {
        for (mode, options) in MODES {
            let (untraced, traced) = measure(execute_ms, options)?;
            let ratio = traced.mean_us() / untraced.mean_us();
            println!(
                "{:>8} ms {:>12} {:>15.1} µs {:>13.1} µs {:>8.4}",
                execute_ms,
                mode,
                untraced.mean_us(),
                traced.mean_us(),
                ratio
            );
            writeln!(
                table,
                "{execute_ms},{mode},{:.2},{:.2},{ratio:.5},{},{}",
                untraced.mean_us(),
                traced.mean_us(),
                untraced.steps,
                traced.steps
            )?;
        }
    }
    let path = workspace_root().join("target/bench/step_overhead.csv");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, table)?;
    println!(
        "(ratio = mean step() time traced ÷ untraced, same process, alternating windows; {})",
        path.display()
    );
    Ok(())
}

/// Untraced and traced step times of one fixture process, alternating windows.
fn measure(execute_ms: &str, options: &[&str]) -> Result<(Side, Side)> {
    let mut fixture = Fixture::spawn(&["--execute-ms", execute_ms, "--rate-every", "0.5"])?;
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
    fixture.next_line("rate")?; // settle
    for _ in 0..ROUNDS {
        for _ in 0..WINDOWS {
            untraced.add(&fixture.next_line("rate")?)?;
        }
        let tracer = attach(fixture.pid, options)?;
        fixture.next_line("rate")?; // the window the attach landed in
        for _ in 0..WINDOWS {
            traced.add(&fixture.next_line("rate")?)?;
        }
        detach(tracer)?;
        fixture.next_line("rate")?;
    }
    Ok((untraced, traced))
}
