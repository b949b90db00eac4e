//! `cargo xtask real-vllm`: released vLLM wheels from PyPI, each in its own cached venv, and the
//! harness in tests/real_vllm that runs their real V1 engine around a stand-in executor.
//!
//! - `cargo xtask real-vllm setup [--version V | --all]`  create `.venvs/vllm-<V>` (idempotent)
//! - `cargo xtask real-vllm run [--version V] [-- harness args]`  setup, then run the harness;
//!   with no harness args, the self-check: 200 requests whose KV blocks run out (preemption
//!   required), ground truth and vLLM's stats checked against each other
//!
//! `pip install vllm==V` does not work here: 0.33.0 pins a `certifi` newer than any on PyPI and
//! pulls GPU-only packages. So each venv gets vLLM with `--no-deps`, then vLLM's own requirements
//! (from its installed METADATA) with those pins relaxed and those packages dropped. Installs go
//! through uv (from PyPI) with one cache under `.venvs/cache`: uv hard-links installed files from
//! its cache, so versions pinning the same torch (0.10.2 and 0.11.0: 2.8.0) share its gigabytes.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{exec, workspace_root};

/// vLLM releases we install, newest first (the default). Each has the V1 engine.
const VERSIONS: &[&str] = &["0.33.0", "0.11.0", "0.10.2"];

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
    let mut rest = ours.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--version" => version = rest.next().context("--version needs a value")?.clone(),
            "--all" => all = true,
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
        Some("run") => run(&version, harness),
        _ => bail!("{USAGE}"),
    }
}

const USAGE: &str = "usage: cargo xtask real-vllm setup [--version V | --all]\n       \
                     cargo xtask real-vllm run [--version V] [-- harness args]";

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

/// Sets up the venv, then runs the harness in it; `--out` and `--model-dir` get defaults.
fn run(version: &str, harness: &[String]) -> Result<()> {
    let python = setup(version)?;
    let root = workspace_root();
    let mut cmd = Command::new(python);
    cmd.args(["-m", "real_vllm_harness"])
        .args(harness)
        .env("PYTHONPATH", root.join("tests/real_vllm"))
        .current_dir(&root);
    if !harness.iter().any(|a| a == "--out") {
        cmd.arg("--out")
            .arg(root.join("out/real-vllm").join(version));
    }
    if !harness.iter().any(|a| a == "--model-dir") {
        cmd.arg("--model-dir")
            .arg(venvs_dir().join("model/tiny-llama"));
    }
    if harness.is_empty() {
        // The harness defaults (200 requests, 128 KV blocks) are sized to preempt.
        cmd.arg("--expect-preemption");
    }
    let started = Instant::now();
    exec(&mut cmd)?;
    eprintln!(
        "real-vllm: vllm {version} harness finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
