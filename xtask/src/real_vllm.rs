//! `cargo xtask real-vllm`: released vLLM wheels from PyPI, each in its own cached venv, and the
//! harness in tests/real_vllm that runs their real V1 engine around a stand-in executor.
//!
//! Its commands are [`Task`]'s (`cargo xtask real-vllm --help`).
//!
//! `pip install vllm==V` does not work here: 0.33.0 pins a `certifi` newer than any on PyPI and
//! pulls GPU-only packages. So each venv gets vLLM with `--no-deps`, then vLLM's own requirements
//! (from its installed METADATA) with those pins relaxed and those packages dropped. Installs go
//! through uv (from PyPI) with one cache under `.venvs/cache`: uv hard-links installed files from
//! its cache, so versions pinning the same torch (0.10.2 and 0.11.0: 2.8.0) share its gigabytes.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{exec, tracer_bin, workspace_root};

/// vLLM releases we install, newest first (the default). Each has the V1 engine.
const VERSIONS: &[&str] = &["0.34.0", "0.33.0", "0.11.0", "0.10.2"];

/// The release sweep (issue 20): the latest patch of each release line users run, in the
/// order it runs them (newest and oldest first, then inwards).
const SWEEP: &[&str] = &[
    "0.34.0",
    "0.8.5.post1",
    "0.33.0",
    "0.9.2",
    "0.30.0",
    "0.10.2",
    "0.26.0",
    "0.11.0",
    "0.22.1",
    "0.12.0",
    "0.18.1",
    "0.14.1",
];

/// Engine shapes the sweep runs: name and harness arguments.
const SHAPES: &[(&str, &[&str])] = &[
    ("multiprocess", &[]),
    ("in-process", &["--in-process"]),
    ("async-scheduling", &["--async-scheduling"]),
    // vLLM's MultiprocExecutor and GPU Worker, 2 worker processes, a stand-in model runner
    // on the fake libcuda: the tracer's CUDA probes and batch marks per worker.
    ("tensor-parallel", &["--async-scheduling", "--workers", "2"]),
];

/// The harness's exit status when the release lacks what an option asks for (e.g.
/// `--async-scheduling` before vLLM had it): the shape does not exist there.
const HARNESS_UNSUPPORTED: i32 = 3;

/// One harness run may take this long, start-up included (then its process group is killed).
const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(420);

/// Installed distributions at least this large are cleaned from the uv cache when the sweep
/// removes a venv (torch, the CUDA libraries, triton): the rest is small and shared.
const CLEAN_BYTES: u64 = 50 << 20;

/// Requirements of vLLM left out: GPU kernels, CUDA-only tooling and Ray, none of which the
/// engine loop with a stand-in executor imports. Names as vLLM's METADATA spells them.
const DROPPED: &[&str] = &[
    "apache-tvm-ffi",
    "fastsafetensors",
    "flashinfer-python",
    "humming-kernels",
    "instanttensor",
    "nvidia-cudnn-frontend",
    "nvidia-cutlass-dsl",
    "nvtx",
    "PyNvVideoCodec",
    "quack-kernels",
    "ray",
    "tilelang",
    "tokenspeed-mla",
    "torchcodec",
    "xformers",
];

/// Requirements whose version bound is dropped: vLLM 0.33.0 asks for a certifi newer than any
/// release on PyPI.
const UNPINNED: &[&str] = &["certifi"];

/// The interpreter the venvs are made from (a pyenv build; 3.12+ for `sys.monitoring`).
const PYTHON: &str = "3.12.1";

/// uv, installed from PyPI into `.venvs/uv`.
const UV_VERSION: &str = "0.13.9";

/// Written last into a venv: its presence means the venv is complete.
const MARKER: &str = ".real-vllm-complete";

/// What `cargo xtask real-vllm` does.
#[derive(clap::Subcommand)]
pub enum Task {
    /// Create a release's venv, `.venvs/vllm-<V>` (kept; nothing is done when it is complete)
    Setup {
        /// The release
        #[arg(long, default_value = VERSIONS[0], conflicts_with = "all")]
        version: String,
        /// Every release `run` defaults to or is documented with (0.34.0, 0.33.0, 0.11.0,
        /// 0.10.2)
        #[arg(long)]
        all: bool,
    },
    /// Setup, then the harness under `tracer attach`, and the trace checked against vLLM's own
    /// stats and the harness's ground truth (by default 200 requests whose KV blocks run out)
    Run {
        /// The release
        #[arg(long, default_value = VERSIONS[0])]
        version: String,
        /// Trace with `--phases-only`
        #[arg(long)]
        phases_only: bool,
        /// The harness's arguments, after `--` (e.g. `-- --async-scheduling --workers 2`)
        #[arg(last = true)]
        harness: Vec<String>,
    },
    /// Every release in every engine shape, one venv on disk at a time; a table in
    /// out/real-vllm/sweep.md
    Sweep {
        /// Releases, comma-separated (default: every release of the sweep)
        #[arg(long, value_delimiter = ',', default_values = SWEEP)]
        versions: Vec<String>,
        /// Engine shapes, comma-separated
        #[arg(long, value_delimiter = ',', default_values = SHAPES.iter().map(|(s, _)| *s),
              value_parser = clap::builder::PossibleValuesParser::new(SHAPES.iter().map(|(s, _)| *s)))]
        shapes: Vec<String>,
        /// Keep each release's venv (by default it is removed after its rows)
        #[arg(long)]
        keep: bool,
    },
}

pub fn main(command: Task) -> Result<()> {
    let versions: Vec<&String> = match &command {
        Task::Setup { version, .. } | Task::Run { version, .. } => vec![version],
        Task::Sweep { versions, .. } => versions.iter().collect(),
    };
    for v in versions {
        if !VERSIONS.contains(&v.as_str()) && !SWEEP.contains(&v.as_str()) {
            bail!(
                "vLLM {v} is not one we install; known: {}",
                SWEEP.join(", ")
            );
        }
    }
    match command {
        Task::Setup { all: true, .. } => VERSIONS.iter().try_for_each(|v| setup(v).map(drop)),
        Task::Setup { version, .. } => setup(&version).map(drop),
        Task::Run {
            version,
            phases_only,
            harness,
        } => match run(&version, phases_only, &harness)? {
            Outcome::Checked { passed: false, .. } => bail!("the trace check failed"),
            Outcome::Unsupported(why) => bail!("not run: {why}"),
            Outcome::Checked { .. } => Ok(()),
        },
        Task::Sweep {
            versions,
            shapes,
            keep,
        } => sweep(&versions, &shapes, keep),
    }
}

/// Keeps a failed run's harness output and trace in `out/real-vllm/failed/<version>-<shape>-
/// <attempt>` (the next run of the release would remove them), and says where.
fn keep_failed(version: &str, shape: &str, attempt: u32) {
    let run = workspace_root().join("out/real-vllm").join(version);
    let kept = (run.parent().expect("under out/real-vllm"))
        .join("failed")
        .join(format!("{version}-{shape}-{attempt}"));
    let _ = std::fs::remove_dir_all(&kept);
    let moved = std::fs::create_dir_all(&kept).and_then(|()| {
        ["harness", "trace"]
            .iter()
            .try_for_each(|dir| std::fs::rename(run.join(dir), kept.join(dir)))
    });
    match moved {
        Ok(()) => eprintln!(
            "real-vllm sweep: the failed run is kept in {}",
            kept.display()
        ),
        Err(e) => eprintln!("real-vllm sweep: the failed run could not be kept: {e}"),
    }
}

fn venvs_dir() -> PathBuf {
    workspace_root().join(".venvs")
}

/// Creates `.venvs/vllm-<version>` unless complete; returns its python.
pub fn setup(version: &str) -> Result<PathBuf> {
    let venv = venvs_dir().join(format!("vllm-{version}"));
    let python = venv.join("bin/python");
    if venv.join(MARKER).exists() {
        return Ok(python);
    }
    let started = Instant::now();
    let uv = uv()?;
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing incomplete {}", venv.display()))?;
    }
    eprintln!(
        "real-vllm: creating {} (a few minutes, ~7 GB)",
        venv.display()
    );
    exec(
        uv_cmd(&uv)
            .arg("venv")
            .arg("--python")
            .arg(base_python()?)
            .arg(&venv),
    )?;
    exec(
        uv_cmd(&uv)
            .args(["pip", "install", "--python"])
            .arg(&python)
            .args(["--no-deps", &format!("vllm=={version}")]),
    )?;
    let requirements = venv.join("requirements.txt");
    std::fs::write(
        &requirements,
        requirements_of(&installed_metadata(&venv, version)?),
    )?;
    // Its requirements as they were a week after the release: most are lower bounds only,
    // and today's versions break old releases (0.8.5 with transformers 5: no
    // `all_special_tokens_extended`).
    let mut install = uv_cmd(&uv);
    install
        .args(["pip", "install", "--python"])
        .arg(&python)
        .arg("-r")
        .arg(&requirements);
    match exclude_newer(version) {
        Ok(date) => {
            eprintln!("real-vllm: vllm {version}'s requirements as of {date}");
            install.args(["--exclude-newer", &date]);
        }
        Err(e) => eprintln!("real-vllm: today's requirements (no release date: {e:#})"),
    }
    exec(&mut install)?;
    std::fs::write(venv.join(MARKER), format!("vllm {version}\n"))?;
    eprintln!(
        "real-vllm: vllm {version} installed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(python)
}

/// What a run found.
pub enum Outcome {
    /// The release lacks what the shape needs (the harness said why).
    Unsupported(String),
    /// check_trace ran: its `check` JSON (null if it printed none) and whether it passed.
    Checked {
        passed: bool,
        check: serde_json::Value,
    },
}

/// Sets up the venv and the tracer, starts the harness (`--wait-go`, after a warm-up), attaches
/// `tracer attach --pid <harness pid>` (the tracer finds the EngineCore child itself, or the
/// harness process for `--in-process`, where the load starts first), lets the load go, and
/// checks the trace against the ground truth (check_trace.py). Outputs under
/// `out/real-vllm/<V>/{harness,trace}`. `--async-scheduling` runs `step_with_batch_queue`
/// (per-batch records); `--workers N` runs the model in N worker processes (vLLM's
/// MultiprocExecutor, tensor parallel) that call the fake libcuda, built here, and traces them
/// with CUDA probes. The harness runs in its own process group, killed after
/// [`RUN_LIMIT`] (a release whose engine never finishes a request must not hang a sweep).
fn run(version: &str, phases_only: bool, harness: &[String]) -> Result<Outcome> {
    let python = setup(version)?;
    crate::setup::run()?;
    let root = workspace_root();
    let out = root.join("out/real-vllm").join(version);
    let (harness_out, trace_out, go) = (out.join("harness"), out.join("trace"), out.join("go"));
    for path in [&harness_out, &trace_out] {
        if path.exists() {
            std::fs::remove_dir_all(path)?;
        }
    }
    let _ = std::fs::remove_file(&go);
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(venvs_dir().join("model"))?;
    let started = Instant::now();
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "real_vllm_harness", "--warmup", "2", "--wait-go"])
        .arg(&go)
        .arg("--out")
        .arg(&harness_out)
        .arg("--model-dir")
        .arg(venvs_dir().join("model/tiny-llama"))
        .args(harness)
        .env("PYTHONPATH", root.join("tests/real_vllm"))
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if harness.is_empty() {
        // The harness defaults (200 requests, 128 KV blocks) are sized to preempt.
        cmd.arg("--expect-preemption");
    }
    // Worker processes run a stand-in model runner that launches on the fake libcuda: the
    // tracer probes it in each (its CUDA probes are off otherwise: nothing calls libcuda).
    let workers = harness.iter().any(|a| a == "--workers");
    if workers {
        cmd.arg("--fake-cuda")
            .arg(crate::fixture::build_fake_libcuda(&out)?);
    }
    let mut child = Kill(cmd.spawn().context("starting the harness")?);
    let _watchdog = Watchdog::new(child.0.id(), RUN_LIMIT);
    // Echoed; the last line (an exception's, when it fails) goes into the error.
    let last_err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = BufReader::new(child.0.stderr.take().expect("piped"));
    let last = last_err.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("{line}");
            if !line.trim().is_empty() {
                *last.lock().unwrap() = line;
            }
        }
    });
    let last_err = move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        last_err.lock().unwrap().clone()
    };
    let mut lines = BufReader::new(child.0.stdout.take().expect("piped")).lines();
    let ready = loop {
        let Some(line) = lines.next().transpose()? else {
            let status = child.0.wait()?;
            if status.code() == Some(HARNESS_UNSUPPORTED) {
                let why = std::fs::read_to_string(harness_out.join("unsupported.txt"))
                    .unwrap_or_else(|_| "the harness said unsupported".into());
                return Ok(Outcome::Unsupported(why.trim().to_owned()));
            }
            bail!(
                "the harness exited before `ready` ({status}): {}",
                last_err()
            );
        };
        if let Some(json) = line.strip_prefix("ready ") {
            break json.to_owned();
        }
    };
    let harness_pid = json_uint(&ready, "harness_pid").context("ready without harness_pid")?;
    eprintln!(
        "real-vllm: vllm {version} ready in {:.0} s: {ready}",
        started.elapsed().as_secs_f64()
    );
    // The summary line comes later; the logs before it are vLLM's.
    let summary = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("summary ").map(str::to_owned))
    });

    let mut tracer = Command::new(tracer_bin());
    tracer.arg("attach");
    if !workers {
        tracer.args(["--cuda", "off"]);
    }
    tracer
        .args(["--pid", &harness_pid.to_string(), "-o"])
        .arg(&trace_out)
        .stderr(Stdio::piped());
    if phases_only {
        tracer.arg("--phases-only");
    }
    // An in-process engine is found by its caller's frame, there only while steps run.
    let in_process = harness.iter().any(|a| a == "--in-process");
    if in_process {
        std::fs::write(&go, "")?;
    }
    let mut tracer = Kill(tracer.spawn().context("starting the tracer")?);
    let mut tracer_err = BufReader::new(tracer.0.stderr.take().expect("piped")).lines();
    let attached = Instant::now();
    // Warnings may come first (a release no table row fits: their text may say "error").
    let mut said = String::new();
    let mut is_attached = false;
    while let Some(line) = tracer_err.next().transpose()? {
        eprintln!("{line}");
        if line.contains("tracer: attached") {
            is_attached = true;
            break;
        }
        said += &line;
        said.push('\n');
    }
    if !is_attached || tracer.0.try_wait()?.is_some() {
        bail!("the tracer did not attach: {said}");
    }
    eprintln!(
        "real-vllm: attached in {:.1} s",
        attached.elapsed().as_secs_f64()
    );
    let tracer_log = std::thread::spawn(move || {
        for line in tracer_err.map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    std::fs::write(&go, "")?;
    let load = Instant::now();
    let status = child.0.wait()?;
    let summary = summary.join().ok().flatten();
    eprintln!(
        "real-vllm: harness done in {:.1} s ({status}); summary {}",
        load.elapsed().as_secs_f64(),
        summary.as_deref().unwrap_or("missing")
    );
    // The tracer stops by itself when the engine process exits.
    let tracer_status = tracer.wait_for(std::time::Duration::from_secs(60))?;
    let _ = tracer_log.join();
    if !status.success() {
        bail!("the harness failed ({status}): {}", last_err());
    }
    if !tracer_status.success() {
        bail!("the tracer failed ({tracer_status})");
    }
    let mut check = Command::new(&python);
    check
        .args(["-m", "real_vllm_harness.check_trace", "--harness"])
        .arg(&harness_out)
        .arg("--trace")
        .arg(&trace_out)
        .env("PYTHONPATH", root.join("tests/real_vllm"))
        .stdout(Stdio::piped());
    if phases_only {
        check.arg("--phases-only");
    }
    let checked = check.output().context("running check_trace")?;
    let stdout = String::from_utf8_lossy(&checked.stdout);
    print!("{stdout}");
    let check_json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("check "))
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or(serde_json::Value::Null);
    eprintln!(
        "real-vllm: vllm {version} traced and checked in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        if checked.status.success() {
            "pass"
        } else {
            "FAIL"
        }
    );
    Ok(Outcome::Checked {
        passed: checked.status.success(),
        check: check_json,
    })
}

/// Kills a process group (SIGKILL) once `limit` has passed, unless dropped first.
struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    fn new(pgid: u32, limit: std::time::Duration) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + limit;
            while Instant::now() < until {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            eprintln!("real-vllm: {limit:?} passed: killing the harness's process group");
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One release × shape of a sweep.
struct SweepRow {
    version: String,
    shape: &'static str,
    /// "pass", "fail", "not run" or "n/a" (the release has no such shape).
    result: &'static str,
    /// Why it failed or did not run; the tracer's row (engine_shape) when it ran.
    note: String,
    steps: Option<(u64, u64)>,
    batch_differ: Option<u64>,
    request_differ: Option<u64>,
    run_s: f64,
    /// The first attempt's failure, when the row is a second attempt.
    retry: Option<String>,
}

/// Runs every release of `versions` in every shape of [`SHAPES`]: a venv per release (set up
/// unless present), each shape traced and checked, then (unless `keep`, or the venv was there
/// before: those are kept) the venv removed and its large packages cleaned from the shared uv
/// cache, so one release's gigabytes are on disk at a time. A failure is a row, not the end.
/// Writes `out/real-vllm/sweep.json` and `sweep.md` after every row.
fn sweep(versions: &[String], shapes: &[String], keep: bool) -> Result<()> {
    let root = workspace_root();
    let out = root.join("out/real-vllm");
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let mut rows: Vec<SweepRow> = Vec::new();
    let mut releases: Vec<serde_json::Value> = Vec::new();
    let date = crate::cmd_output(Command::new("date").arg("+%Y-%m-%d %H:%M %Z"))?
        .trim()
        .to_owned();
    for version in versions {
        let venv = venvs_dir().join(format!("vllm-{version}"));
        let existed = venv.join(MARKER).exists();
        let t0 = Instant::now();
        let setup_result = setup(version);
        let setup_s = t0.elapsed().as_secs_f64();
        // The venv alone counts every file it holds (hard links into the cache included):
        // what this release occupies; the cache is the shared store around it.
        let gib = |kib: u64| (kib as f64 / (1 << 20) as f64 * 10.0).round() / 10.0;
        let venv_gib = gib(disk_kib(std::slice::from_ref(&venv)));
        let cache_gib = gib(disk_kib(&[venvs_dir().join("cache")]));
        eprintln!(
            "real-vllm sweep: {version}: setup {setup_s:.0} s, venv {venv_gib} GiB, uv cache \
             {cache_gib} GiB"
        );
        for (shape, args) in SHAPES.iter().filter(|(s, _)| shapes.iter().any(|w| w == s)) {
            let t = Instant::now();
            let mut row = SweepRow {
                version: version.clone(),
                shape,
                result: "not run",
                note: String::new(),
                steps: None,
                batch_differ: None,
                request_differ: None,
                run_s: 0.0,
                retry: None,
            };
            match &setup_result {
                Err(e) => row.note = format!("setup failed: {}", one_line(e)),
                Ok(_) => {
                    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                    // A failed run is run once more (the timing bounds can fail on a loaded
                    // 2-core machine); the first attempt's reason stays in the note.
                    let mut outcome = run(version, false, &args);
                    if !matches!(
                        outcome,
                        Ok(Outcome::Checked { passed: true, .. }) | Ok(Outcome::Unsupported(_))
                    ) {
                        let first = match &outcome {
                            Err(e) => one_line(e),
                            Ok(Outcome::Checked { check, .. }) => check["problems"].to_string(),
                            Ok(Outcome::Unsupported(why)) => why.clone(),
                        };
                        eprintln!("real-vllm sweep: {version} {shape} failed ({first}); once more");
                        keep_failed(version, shape, 1);
                        outcome = run(version, false, &args);
                        row.retry = Some(first.chars().take(300).collect());
                        if !matches!(outcome, Ok(Outcome::Checked { passed: true, .. })) {
                            keep_failed(version, shape, 2);
                        }
                    }
                    match outcome {
                        Err(e) => {
                            row.result = "fail";
                            row.note = one_line(&e);
                        }
                        Ok(Outcome::Unsupported(why)) => {
                            row.result = "n/a";
                            row.note = why;
                        }
                        Ok(Outcome::Checked { passed, check }) => {
                            row.result = if passed { "pass" } else { "fail" };
                            fill(&mut row, &check);
                        }
                    }
                }
            }
            row.run_s = t.elapsed().as_secs_f64();
            if let Some(first) = &row.retry {
                row.note = format!("{} (2nd attempt; 1st: {first})", row.note);
            }
            eprintln!(
                "real-vllm sweep: {version} {shape}: {} {}",
                row.result, row.note
            );
            rows.push(row);
            write_sweep(
                &out,
                &rows,
                &releases,
                &date,
                started.elapsed().as_secs_f64(),
            )?;
        }
        let removed = !keep && !existed && venv.exists() && !venv.is_symlink();
        if removed {
            clean_cache(&venv);
            std::fs::remove_dir_all(&venv)
                .with_context(|| format!("removing {}", venv.display()))?;
        }
        releases.push(serde_json::json!({
            "version": version,
            "setup_s": (setup_s * 10.0).round() / 10.0,
            "total_s": (t0.elapsed().as_secs_f64()).round(),
            "venv_gib": venv_gib,
            "cache_gib": cache_gib,
            "cache_after_gib": gib(disk_kib(&[venvs_dir().join("cache")])),
            "venv_removed": removed,
        }));
        write_sweep(
            &out,
            &rows,
            &releases,
            &date,
            started.elapsed().as_secs_f64(),
        )?;
    }
    print!("{}", std::fs::read_to_string(out.join("sweep.md"))?);
    let failed = rows.iter().filter(|r| r.result == "fail").count();
    if failed > 0 {
        bail!("{failed} release × shape runs failed");
    }
    Ok(())
}

/// Counts from check_trace's `check` JSON.
fn fill(row: &mut SweepRow, check: &serde_json::Value) {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    row.note = check["engine_shape"].as_str().unwrap_or("").to_owned();
    let steps = &check["steps"];
    if let (Some(gt), Some(tracer)) = (
        steps["gt_steps_in_window"].as_u64(),
        steps["tracer_steps"].as_u64(),
    ) {
        row.steps = Some((gt, tracer));
    }
    if let Some(batch) = check["batch"].as_object() {
        row.batch_differ = Some(batch.values().map(|c| n(&c["differ"])).sum());
    }
    let req = &check["requests"];
    if req.is_object() {
        row.request_differ = Some(
            [
                "prompt_tokens",
                "output_tokens",
                "cached_tokens",
                "preemptions",
                "finish_status",
            ]
            .iter()
            .map(|k| n(&req[*k]["differ"]))
            .sum::<u64>()
                + n(&req["missing"]),
        );
    }
    if let Some(problems) = check["problems"].as_array().filter(|p| !p.is_empty()) {
        let problems: Vec<_> = problems.iter().filter_map(|p| p.as_str()).collect();
        row.note = format!("{}; {}", row.note, problems.join("; "));
    }
}

fn write_sweep(
    out: &Path,
    rows: &[SweepRow],
    releases: &[serde_json::Value],
    date: &str,
    total_s: f64,
) -> Result<()> {
    let opt = |v: Option<u64>| v.map_or("—".to_owned(), |v| v.to_string());
    let mut md = format!(
        "Sweep of {date} ({:.0} min so far)\n\n\
         | vLLM | engine shape | steps equal (tracer / ground truth) | batch cells differing | \
         request cells differing | result | note |\n|---|---|---|---|---|---|---|\n",
        total_s / 60.0
    );
    for r in rows {
        let steps = r.steps.map_or("—".to_owned(), |(gt, tracer)| {
            format!(
                "{} ({tracer} / {gt})",
                if gt == tracer { "yes" } else { "no" }
            )
        });
        md += &format!(
            "| {} | {} | {steps} | {} | {} | {} | {} |\n",
            r.version,
            r.shape,
            opt(r.batch_differ),
            opt(r.request_differ),
            r.result,
            r.note.replace('|', "\\|")
        );
    }
    md +=
        "\n| vLLM | setup s | release total s | venv GiB | uv cache GiB | cache after clean GiB | \
           venv removed |\n|---|---|---|---|---|---|---|\n";
    for r in releases {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r["version"].as_str().unwrap_or(""),
            r["setup_s"],
            r["total_s"],
            r["venv_gib"],
            r["cache_gib"],
            r["cache_after_gib"],
            r["venv_removed"]
        );
    }
    std::fs::write(out.join("sweep.md"), &md)?;
    let json = serde_json::json!({
        "date": date.trim(),
        "total_s": total_s.round(),
        "rows": rows.iter().map(|r| serde_json::json!({
            "version": r.version, "shape": r.shape, "result": r.result, "note": r.note,
            "tracer_steps": r.steps.map(|s| s.1), "gt_steps": r.steps.map(|s| s.0),
            "batch_cells_differ": r.batch_differ, "request_cells_differ": r.request_differ,
            "run_s": r.run_s.round(), "first_attempt_failed": r.retry,
        })).collect::<Vec<_>>(),
        "releases": releases,
    });
    std::fs::write(out.join("sweep.json"), serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}

fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars().take(300).collect()
}

/// KiB on disk under `paths`, hard links counted once (`du -sck`).
fn disk_kib(paths: &[PathBuf]) -> u64 {
    let existing: Vec<_> = paths.iter().filter(|p| p.exists()).collect();
    if existing.is_empty() {
        return 0;
    }
    crate::cmd_output(Command::new("du").arg("-sck").args(existing))
        .ok()
        .and_then(|out| out.lines().last()?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Cleans the uv cache of the venv's distributions of [`CLEAN_BYTES`] or more.
fn clean_cache(venv: &Path) {
    let script = format!(
        "import importlib.metadata as m\n\
         for d in m.distributions():\n    \
         n = sum((f.size or 0) for f in (d.files or []))\n    \
         if n >= {CLEAN_BYTES}: print(d.metadata['Name'])\n"
    );
    let big = crate::cmd_output(Command::new(venv.join("bin/python")).args(["-c", &script]))
        .unwrap_or_default();
    let big: Vec<&str> = big.split_whitespace().collect();
    if big.is_empty() {
        return;
    }
    eprintln!(
        "real-vllm sweep: cleaning from the uv cache: {}",
        big.join(" ")
    );
    if let Ok(uv) = uv() {
        let _ = exec(uv_cmd(&uv).args(["cache", "clean"]).args(&big));
    }
}

/// A top-level unsigned integer of a flat JSON object, by key.
fn json_uint(json: &str, key: &str) -> Option<u64> {
    let rest = &json[json.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A child killed if it is still running when dropped (a failed check must not leave an
/// engine or a tracer behind).
struct Kill(Child);

impl Kill {
    /// Waits up to `limit`, then kills it (SIGINT first: the tracer then writes its files).
    fn wait_for(&mut self, limit: std::time::Duration) -> Result<ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        bail!("{limit:?} passed and the child had not exited; sent SIGINT")
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: getpgid(2)/kill(2) on our own child: the harness leads its own group,
            // whose EngineCore child goes with it.
            if unsafe { libc::getpgid(pid) } == pid {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn base_python() -> Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let python = Path::new(&home).join(format!(".pyenv/versions/{PYTHON}/bin/python3"));
    if !python.exists() {
        bail!("real-vllm needs CPython {PYTHON} at {}", python.display());
    }
    Ok(python)
}

/// uv in its own small venv, installed once.
fn uv() -> Result<PathBuf> {
    let dir = venvs_dir().join("uv");
    let uv = dir.join("bin/uv");
    if !uv.exists() {
        eprintln!(
            "real-vllm: installing uv {UV_VERSION} into {}",
            dir.display()
        );
        exec(Command::new(base_python()?).args(["-m", "venv"]).arg(&dir))?;
        exec(Command::new(dir.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("uv=={UV_VERSION}"),
        ]))?;
    }
    Ok(uv)
}

fn uv_cmd(uv: &Path) -> Command {
    let mut cmd = Command::new(uv);
    cmd.env("UV_CACHE_DIR", venvs_dir().join("cache"));
    cmd
}

/// A week after the upload of `vllm==version`'s x86-64 wheel (PyPI's JSON simple index), as
/// YYYY-MM-DD.
fn exclude_newer(version: &str) -> Result<String> {
    let index = crate::cmd_output(Command::new("curl").args([
        "-sf",
        "-H",
        "Accept: application/vnd.pypi.simple.v1+json",
        "https://pypi.org/simple/vllm/",
    ]))?;
    let index: serde_json::Value = serde_json::from_str(&index)?;
    let prefix = format!("vllm-{version}-");
    let uploaded = index["files"]
        .as_array()
        .context("no files in the index")?
        .iter()
        .find(|f| {
            f["filename"]
                .as_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with("x86_64.whl"))
        })
        .and_then(|f| f["upload-time"].as_str())
        .context("no x86-64 wheel with an upload time")?
        .to_owned();
    let date = crate::cmd_output(Command::new("date").args([
        "-u",
        "-d",
        &format!("{} + 7 days", &uploaded[..10]),
        "+%Y-%m-%d",
    ]))?;
    Ok(date.trim().to_owned())
}

fn installed_metadata(venv: &Path, version: &str) -> Result<String> {
    let site = venv.join(format!(
        "lib/python{}/site-packages",
        PYTHON.rsplit_once('.').map_or(PYTHON, |(minor, _)| minor)
    ));
    let path = site.join(format!("vllm-{version}.dist-info/METADATA"));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// vLLM's unconditional requirements (markers kept: uv evaluates them), less [`DROPPED`], with
/// the bounds of [`UNPINNED`] removed; one per line.
fn requirements_of(metadata: &str) -> String {
    metadata
        .lines()
        .filter_map(|l| l.strip_prefix("Requires-Dist: "))
        .filter(|req| !req.contains("extra =="))
        .filter_map(|req| {
            let name = requirement_name(req);
            if DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name)) {
                None
            } else if UNPINNED.iter().any(|u| u.eq_ignore_ascii_case(name)) {
                let marker = req.split_once(';').map(|(_, m)| m);
                Some(marker.map_or(name.to_owned(), |m| format!("{name};{m}")))
            } else {
                Some(req.to_owned())
            }
        })
        .map(|req| req + "\n")
        .collect()
}

/// "torch==2.8.0" → "torch", "fastapi[standard]>=0.115" → "fastapi".
fn requirement_name(req: &str) -> &str {
    let end = req
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .unwrap_or(req.len());
    &req[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_harness_pid_from_ready() {
        let ready = r#"{"pid": 864, "tid": 864, "harness_pid": 30517, "startup_s": 30.6}"#;
        assert_eq!(json_uint(ready, "harness_pid"), Some(30517));
        assert_eq!(json_uint(ready, "pid"), Some(864));
        assert_eq!(json_uint(ready, "missing"), None);
    }

    #[test]
    fn requirements_drop_gpu_packages_extras_and_certifi_pin() {
        let metadata = "Name: vllm\n\
            Requires-Dist: regex\n\
            Requires-Dist: certifi>=2026.10.19\n\
            Requires-Dist: fastapi[standard]<0.137.0,>=0.133.0\n\
            Requires-Dist: flashinfer-python==0.7.2.post1\n\
            Requires-Dist: xformers==0.0.32.post1; platform_system == \"Linux\"\n\
            Requires-Dist: six>=1.16.0; python_version > \"3.11\"\n\
            Requires-Dist: pandas; extra == \"bench\"\n";
        assert_eq!(
            requirements_of(metadata),
            "regex\ncertifi\nfastapi[standard]<0.137.0,>=0.133.0\n\
             six>=1.16.0; python_version > \"3.11\"\n"
        );
    }
}
