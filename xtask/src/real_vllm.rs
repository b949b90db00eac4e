//! `cargo xtask real-vllm`: released vLLM wheels from PyPI, each in its own cached venv, and the
//! harness in tests/real_vllm that runs their real V1 engine around a stand-in executor.
//!
//! - `cargo xtask real-vllm setup [--version V | --all]`  create `.venvs/vllm-<V>` (idempotent)
//! - `cargo xtask real-vllm run [--version V] [--phases-only] [-- harness args]`  setup, then
//!   run the harness with `tracer attach` on it and check the trace (see [`run`]); with no
//!   harness args, 200 requests whose KV blocks run out (preemption required)
//!
//! `pip install vllm==V` does not work here: 0.33.0 pins a `certifi` newer than any on PyPI and
//! pulls GPU-only packages. So each venv gets vLLM with `--no-deps`, then vLLM's own requirements
//! (from its installed METADATA) with those pins relaxed and those packages dropped. Installs go
//! through uv (from PyPI) with one cache under `.venvs/cache`: uv hard-links installed files from
//! its cache, so versions pinning the same torch (0.10.2 and 0.11.0: 2.8.0) share its gigabytes.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{exec, tracer_bin, workspace_root};

/// vLLM releases we install, newest first (the default). Each has the V1 engine.
const VERSIONS: &[&str] = &["0.34.0", "0.33.0", "0.11.0", "0.10.2"];

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

pub fn main(args: &[String]) -> Result<()> {
    let (ours, harness) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut version = VERSIONS[0].to_owned();
    let mut all = false;
    let mut phases_only = false;
    let mut rest = ours.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--version" => version = rest.next().context("--version needs a value")?.clone(),
            "--all" => all = true,
            "--phases-only" => phases_only = true,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !VERSIONS.contains(&version.as_str()) {
        bail!(
            "vLLM {version} is not one we install; known: {}",
            VERSIONS.join(", ")
        );
    }
    match ours.first().map(String::as_str) {
        Some("setup") if all => VERSIONS.iter().try_for_each(|v| setup(v).map(drop)),
        Some("setup") => setup(&version).map(drop),
        Some("run") if all => bail!("run takes one --version, not --all"),
        Some("run") => run(&version, phases_only, harness),
        _ => bail!("{USAGE}"),
    }
}

const USAGE: &str = "usage: cargo xtask real-vllm setup [--version V | --all]\n       \
                     cargo xtask real-vllm run [--version V] [--phases-only] [-- harness args]";

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
    exec(
        uv_cmd(&uv)
            .args(["pip", "install", "--python"])
            .arg(&python)
            .arg("-r")
            .arg(&requirements),
    )?;
    std::fs::write(venv.join(MARKER), format!("vllm {version}\n"))?;
    eprintln!(
        "real-vllm: vllm {version} installed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(python)
}

/// Sets up the venv and the tracer, starts the harness (`--wait-go`, after a warm-up), attaches
/// `tracer attach --pid <harness pid>` (the tracer finds the EngineCore child itself, or the
/// harness process for `--in-process`, where the load starts first), lets the load go, and
/// checks the trace against the ground truth (check_trace.py). Outputs under
/// `out/real-vllm/<V>/{harness,trace}`. `--async-scheduling` runs `step_with_batch_queue`
/// (per-batch records).
fn run(version: &str, phases_only: bool, harness: &[String]) -> Result<()> {
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
        .stdout(Stdio::piped());
    if harness.is_empty() {
        // The harness defaults (200 requests, 128 KV blocks) are sized to preempt.
        cmd.arg("--expect-preemption");
    }
    let mut child = Kill(cmd.spawn().context("starting the harness")?);
    let mut lines = BufReader::new(child.0.stdout.take().expect("piped")).lines();
    let ready = loop {
        let line = lines
            .next()
            .context("the harness exited before `ready`")??;
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
    tracer
        .args([
            "attach",
            "--cuda",
            "off",
            "--pid",
            &harness_pid.to_string(),
            "-o",
        ])
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
    let mut said = String::new();
    loop {
        let Some(line) = tracer_err.next().transpose()? else {
            break;
        };
        eprintln!("{line}");
        if line.contains("tracer: attached") {
            break;
        }
        said += &line;
    }
    if said.contains("error") || tracer.0.try_wait()?.is_some() {
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
        bail!("the harness failed ({status})");
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
        .env("PYTHONPATH", root.join("tests/real_vllm"));
    if phases_only {
        check.arg("--phases-only");
    }
    exec(&mut check)?;
    eprintln!(
        "real-vllm: vllm {version} traced and checked in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
        if let Ok(None) = self.0.try_wait() {
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
