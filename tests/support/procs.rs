//! Processes the tests start: the fixture engine, the tracer, idle Pythons and process
//! groups, each killed in `Drop` so that a failed assertion leaves nothing running; and what
//! /proc says about a process while it runs.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{root, tracer_bin, wait_until};

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

    pub fn pid(&self) -> u32 {
        self.child.id()
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
        let mut status = None;
        wait_until(timeout, "the tracer to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        (status.unwrap(), self.stderr.rest())
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

/// `tracer ARGS` run to completion: (exit status, stdout, stderr).
pub fn tracer(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(tracer_bin()).args(args).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stdout of `tracer ARGS`, which must succeed.
pub fn tracer_ok(args: &[&str]) -> String {
    let (status, stdout, stderr) = tracer(args);
    assert!(
        status.success(),
        "tracer {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

pub fn kill_and_wait(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A Python process that idles (no vLLM engine), killed when dropped.
pub struct IdlePython(Child);

impl IdlePython {
    pub fn spawn(python: &str) -> Self {
        Self::after(python, "", &[])
    }

    /// Runs `code` first, with `argv` as `sys.argv[1:]`, then idles; returned once it is
    /// idling.
    pub fn after(python: &str, code: &str, argv: &[&str]) -> Self {
        let code = format!("{code}\nimport time; print('ready', flush=True); time.sleep(60)");
        let mut idle = Self(
            Command::new(python)
                .arg("-c")
                .arg(code)
                .args(argv)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        Lines::new(idle.0.stdout.take().unwrap()).wait_for("ready", Duration::from_secs(30));
        idle
    }

    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for IdlePython {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child leading its own process group, which is killed on drop, also when the test panics
/// while starting it: a leaked engine would hold the test's output pipe open and hang CI.
pub struct ProcessGroup(pub Child);

impl ProcessGroup {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The fields of /proc/<pid>/stat after the command name (which may hold spaces): the
/// state is the first, utime and stime the 12th and 13th.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The process's state letter (`R`, `S`, `T` for stopped, …), `None` once it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    stat_fields(pid).first()?.chars().next()
}

/// CPU time the process has used (user and system), `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let fields = stat_fields(pid);
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_millis(
        (ticks(11)? + ticks(12)?) * 1000 / per_second,
    ))
}
