//! `cargo xtask test`: every test binary runs (`--no-fail-fast`), its output passes through
//! as it comes, and a summary per binary ends the run. A flaky binary early in the list must
//! not hide the results of the ones after it, and the end of a long log must say what
//! failed without scrolling back.
//!
//! cargo writes its `Running tests/x.rs (target/…)` headers on stderr and the test binaries
//! write to stdout; both go into one pipe, so a binary's lines come after its header in
//! the order they were written.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Stdio,
};

use anyhow::{Context as _, Result};

use crate::cargo;

/// One test binary as cargo ran it.
#[derive(Debug, Default, PartialEq)]
pub struct Binary {
    pub name: String,
    /// From `running N tests`.
    pub planned: Option<u64>,
    /// From `test result:`; `None` when the binary ended without one (it crashed).
    pub result: Option<Counts>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Counts {
    pub ok: bool,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub seconds: f64,
}

impl Binary {
    fn failed(&self) -> bool {
        self.result.as_ref().is_none_or(|r| !r.ok || r.failed > 0)
    }
}

/// What the lines of a `cargo test` run say about its test binaries.
#[derive(Debug, Default)]
pub struct Summary {
    pub binaries: Vec<Binary>,
}

impl Summary {
    /// Takes one line of cargo's combined output.
    pub fn line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(name) = header(line) {
            self.binaries.push(Binary {
                name,
                ..Default::default()
            });
        } else if let Some(binary) = self.binaries.last_mut() {
            if let Some(n) = line
                .strip_prefix("running ")
                .and_then(|rest| rest.strip_suffix(" tests").or(rest.strip_suffix(" test")))
                .and_then(|n| n.parse().ok())
            {
                binary.planned = Some(n);
            } else if let Some(result) = line.strip_prefix("test result: ") {
                binary.result = counts(result);
            }
        }
    }

    /// One line per binary, then the totals; and whether everything passed.
    pub fn render(&self) -> (String, bool) {
        let width = self
            .binaries
            .iter()
            .map(|b| b.name.len())
            .max()
            .unwrap_or(0)
            .max("test binary".len());
        let mut text = format!(
            "{:width$}  {:>6}  {:>6}  {:>7}  {:>8}\n",
            "test binary", "passed", "failed", "ignored", "seconds"
        );
        let (mut passed, mut failed, mut ignored) = (0, 0, 0);
        let mut bad = Vec::new();
        for b in &self.binaries {
            match &b.result {
                Some(r) => {
                    text += &format!(
                        "{:width$}  {:>6}  {:>6}  {:>7}  {:>8.1}{}\n",
                        b.name,
                        r.passed,
                        r.failed,
                        r.ignored,
                        r.seconds,
                        if b.failed() { "  FAILED" } else { "" }
                    );
                    (passed, failed, ignored) =
                        (passed + r.passed, failed + r.failed, ignored + r.ignored);
                }
                None => {
                    let why = match b.planned {
                        Some(n) => format!("CRASHED: no result line after running {n} tests"),
                        None => "CRASHED: no result line (did it start?)".into(),
                    };
                    text += &format!(
                        "{:width$}  {:>6}  {:>6}  {:>7}  {:>8}  {why}\n",
                        b.name, "-", "-", "-", "-"
                    );
                }
            }
            if b.failed() {
                bad.push(b.name.as_str());
            }
        }
        text += &format!(
            "{passed} passed, {failed} failed, {ignored} ignored in {} test binaries",
            self.binaries.len()
        );
        if !bad.is_empty() {
            text += &format!("; failing binaries: {}", bad.join(", "));
        }
        text += "\n";
        (text, bad.is_empty())
    }
}

/// The binary a `Running …` or `Doc-tests …` header announces:
/// `Running unittests src/lib.rs (target/release/deps/tracer-1a2b)` → `tracer (src/lib.rs)`,
/// `Running ../tests/attach.rs (target/release/deps/attach-3c4d)` → `tests/attach.rs`.
fn header(line: &str) -> Option<String> {
    if let Some(krate) = line.strip_prefix("Doc-tests ") {
        return Some(format!("doc-tests {krate}"));
    }
    let rest = line.strip_prefix("Running ")?;
    let (source, path) = rest.rsplit_once(" (")?;
    // Only cargo's own headers name a test executable under target/…/deps/.
    let path = path.strip_suffix(')').filter(|p| p.contains("/deps/"))?;
    match source.strip_prefix("unittests ") {
        Some(source) => {
            let file = path.rsplit('/').next().unwrap_or(path);
            let krate = file.rsplit_once('-').map_or(file, |(krate, _hash)| krate);
            Some(format!("{krate} ({source})"))
        }
        // tracer's [[test]] paths are relative to tracer/: `../tests/attach.rs`.
        None => Some(source.trim_start_matches("../").to_owned()),
    }
}

/// `ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 3.21s`
fn counts(text: &str) -> Option<Counts> {
    let (verdict, rest) = text.split_once(". ")?;
    let mut counts = Counts {
        ok: verdict == "ok",
        ..Default::default()
    };
    for field in rest.split("; ") {
        if let Some(s) = field
            .strip_prefix("finished in ")
            .and_then(|s| s.strip_suffix('s'))
        {
            counts.seconds = s.parse().ok()?;
            continue;
        }
        let (n, what) = field.split_once(' ')?;
        let n: u64 = n.parse().ok()?;
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    Some(counts)
}

/// `cargo test --release --no-fail-fast ARGS`, output passed through, then the summary.
/// Fails if a test failed, a binary crashed, or cargo itself failed (e.g. a compile error).
/// `notes`: lines printed under the summary (which optional interpreters the matrix ran on).
pub fn run(args: &[String], notes: &[String]) -> Result<()> {
    let (reader, writer) = std::io::pipe()?;
    let mut cmd = cargo();
    cmd.args(["test", "--release"]);
    // cargo refuses a flag given twice; `--no-fail-fast` after `--` would go to libtest.
    let ours = args.iter().take_while(|a| *a != "--");
    if !ours.clone().any(|a| a == "--no-fail-fast") {
        cmd.arg("--no-fail-fast");
    }
    cmd.args(args)
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .stdin(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    // The Command holds the pipe's write end: drop it, or the read below never ends.
    drop(cmd);
    let mut summary = Summary::default();
    let mut reader = BufReader::new(reader);
    let mut stdout = std::io::stdout();
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf)? > 0 {
        // A closed stdout must not stop the tests; the summary is still computed.
        let _ = stdout.write_all(&buf);
        let _ = stdout.flush();
        summary.line(&String::from_utf8_lossy(&buf));
        buf.clear();
    }
    let status = child.wait()?;
    let (text, all_passed) = summary.render();
    // Above the table, so that the run still ends on the totals line.
    println!();
    for note in notes {
        println!("{note}");
    }
    println!("{text}");
    if summary.binaries.is_empty() || (!status.success() && all_passed) {
        anyhow::bail!(
            "cargo test failed ({status}) before or outside the test binaries: see above"
        );
    }
    if !all_passed {
        anyhow::bail!("some tests failed: see the summary above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run as cargo prints it (headers from stderr, tests from stdout), with a failing
    /// binary, one that crashed mid-way, and doc-tests.
    const TRANSCRIPT: &str = "\
   Compiling tracer v0.1.0 (/w/tracer)
    Finished `release` profile [optimized] target(s) in 40.00s
     Running unittests src/lib.rs (target/release/deps/tracer-3031751076be876c)

running 3 tests
test a ... ok
test b ... ignored
test c ... ok

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.25s

     Running ../tests/attach.rs (target/release/deps/attach-7d05083ab608d7a5)

running 2 tests
test slow ... FAILED
test fast ... ok

failures:
    slow

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 52.31s

error: test failed, to rerun pass `-p tracer --test attach`
     Running tests/faults.rs (target/release/deps/faults-0123456789abcdef)

running 34 tests
test one ... ok
error: test failed, to rerun pass `-p tracer --test faults`

Caused by:
  process didn't exit successfully: `…/faults-0123` (signal: 11, SIGSEGV: invalid memory reference)
     Running tests/cli.rs (target/release/deps/cli-0123456789abcdef)

running 1 test
test x ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s

   Doc-tests tracer

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

error: 2 targets failed:
    `-p tracer --test attach`
    `-p tracer --test faults`
";

    #[test]
    fn every_binary_is_summarized() {
        let mut summary = Summary::default();
        for line in TRANSCRIPT.lines() {
            summary.line(line);
        }
        let names: Vec<&str> = summary.binaries.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tracer (src/lib.rs)",
                "tests/attach.rs",
                "tests/faults.rs",
                "tests/cli.rs",
                "doc-tests tracer"
            ]
        );
        assert_eq!(
            summary.binaries[1].result,
            Some(Counts {
                ok: false,
                passed: 1,
                failed: 1,
                ignored: 0,
                seconds: 52.31
            })
        );
        assert_eq!(summary.binaries[2].planned, Some(34));
        assert_eq!(summary.binaries[2].result, None);
        assert_eq!(summary.binaries[3].planned, Some(1));
        let (text, all_passed) = summary.render();
        assert!(!all_passed);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(
            lines[2].starts_with("tests/attach.rs ") && lines[2].ends_with("52.3  FAILED"),
            "{text}"
        );
        assert!(
            lines[3].contains("CRASHED: no result line after running 34 tests"),
            "{text}"
        );
        assert_eq!(
            lines[6],
            "4 passed, 1 failed, 1 ignored in 5 test binaries; \
             failing binaries: tests/attach.rs, tests/faults.rs"
        );
    }

    #[test]
    fn a_clean_run_passes() {
        let mut summary = Summary::default();
        for line in TRANSCRIPT.lines().skip(2).take(8) {
            summary.line(line);
        }
        let (text, all_passed) = summary.render();
        assert!(all_passed, "{text}");
        assert!(text.ends_with("2 passed, 0 failed, 1 ignored in 1 test binaries\n"));
    }
}
