//! Helpers for the integration tests: spawn the fixture engine and the tracer as real
//! processes, synchronise on their own "ready"/"attached" lines (never on sleeps), and kill
//! whatever is left in `Drop`.

#![allow(dead_code)] // each test file uses its own subset

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{mpsc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn tracer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tracer")
}

/// Tests that time things run one at a time: two fixtures spinning on two cores would
/// measure the scheduler, not the tracer.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pyenv interpreter by version, e.g. `pyenv("3.11.7")`; panics if it is not installed,
/// so a machine without the test matrix fails loudly instead of skipping.
pub fn pyenv(version: &str) -> String {
    let home = std::env::var("HOME").unwrap();
    let path = format!("{home}/.pyenv/versions/{version}/bin/python3");
    assert!(
        Path::new(&path).exists(),
        "{path} is missing: the tests need the pyenv interpreters"
    );
    path
}

/// An interpreter that `cargo xtask python <minor>` put into `.pythons/<minor>/bin/<exe>`
/// (e.g. `built_python("3.14", "python3.14")`), or `None` if it is not there: a fresh
/// machine that cannot make it skips these rows (the test passes, and says so on stderr
/// with `SKIPPED`; `cargo xtask test` prints the reason in its summary).
pub fn built_python(minor: &str, exe: &str) -> Option<String> {
    let path = root().join(".pythons").join(minor).join("bin").join(exe);
    if path.exists() {
        Some(path.to_str().unwrap().to_owned())
    } else {
        eprintln!(
            "SKIPPED: {} is not there (`cargo xtask python {minor}` makes it)",
            path.display()
        );
        None
    }
}

/// Lines of a child's stream, readable with a timeout.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line containing `needle`, waiting up to `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_within(left);
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The next line, waiting up to `timeout` (a hung child fails the test, not CI).
    pub fn next_within(&mut self, timeout: Duration) -> String {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(_) => panic!("no line within {timeout:?}; saw {:?}", self.seen),
        }
    }

    /// Everything until the stream closes.
    pub fn rest(&mut self) -> Vec<String> {
        self.seen.extend(self.rx.iter());
        self.seen.clone()
    }
}

/// The fixture engine (tests/fixtures/engine), running until it finishes or is dropped.
pub struct Fixture {
    child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
}

impl Fixture {
    /// Starts the fixture and waits for its `ready` line (its warmup is done).
    pub fn spawn(python: &str, args: &[&str]) -> Self {
        let script = root().join("tests/fixtures/engine/run_engine.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the fixture engine");
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let pid = child.id();
        let mut fixture = Self {
            child,
            pid,
            stdin,
            stdout,
        };
        fixture
            .stdout
            .wait_for("ready pid=", Duration::from_secs(60));
        fixture
    }

    /// Lets a `--wait-go` fixture run its measured steps.
    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go is sent once");
        writeln!(stdin, "go").unwrap();
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Not exited yet.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tracer` process.
pub struct Tracer {
    child: Child,
    pub stderr: Lines,
}

impl Tracer {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(tracer_bin())
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the tracer");
        let stderr = Lines::new(child.stderr.take().unwrap());
        Self { child, stderr }
    }

    /// `tracer attach --pid <pid> -o <out>`, returned once its probes are in: from then on
    /// every step is traced.
    pub fn attach(pid: u32, out: &Path) -> Self {
        Self::attach_with(pid, out, &[])
    }

    /// [`Self::attach`] with more options.
    pub fn attach_with(pid: u32, out: &Path, options: &[&str]) -> Self {
        let pid = pid.to_string();
        let mut args = vec!["attach", "--pid", &pid, "-o", out.to_str().unwrap()];
        args.extend_from_slice(options);
        let mut tracer = Self::spawn(&args);
        tracer
            .stderr
            .wait_for("tracer: attached", Duration::from_secs(30));
        tracer
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Its resident memory now (kB), while it runs.
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Waits for the tracer to exit (at most `timeout`), returning its status and stderr.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.stderr.rest());
            }
            assert!(
                Instant::now() < deadline,
                "tracer still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the tracer to completion and returns (exit status, stderr).
pub fn run_tracer(args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(tracer_bin())
        .args(args)
        .output()
        .expect("running the tracer");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A row of the fixture's ground-truth CSV.
#[derive(Debug, serde::Deserialize)]
pub struct TruthRow {
    pub step: u64,
    pub start_ns: u64,
    pub after_schedule_ns: u64,
    pub after_execute_ns: u64,
    pub after_update_ns: u64,
}

impl TruthRow {
    /// (schedule, execute, update, step) durations in ns.
    pub fn phases(&self) -> [u64; 4] {
        [
            self.after_schedule_ns - self.start_ns,
            self.after_execute_ns - self.after_schedule_ns,
            self.after_update_ns - self.after_execute_ns,
            self.after_update_ns - self.start_ns,
        ]
    }
}

pub fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Percentile (0–100) of absolute values, nearest rank.
pub fn percentile(values: &mut [i64], p: f64) -> i64 {
    values.sort_by_key(|v| v.abs());
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize - 1;
    values[rank.min(values.len() - 1)].abs()
}

/// Waits until the tracer has flushed more than `rows` rows of steps.csv (it flushes every
/// 500 ms): a count of steps, not a time, so a slow or busy machine only takes longer.
pub fn wait_for_rows(out: &Path, rows: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let path = out.join("steps.csv");
    while std::fs::read_to_string(&path).map_or(0, |text| text.lines().count()) <= rows + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {rows} steps in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A trace's run.json.
pub fn read_run_json(out: &Path) -> serde_json::Value {
    let path = out.join("run.json");
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
