//! `cargo xtask setup`: everything the build needs that a fresh machine of ours lacks,
//! installed idempotently under `.tools/` (ignored by git), then a release build.
//!
//! The eBPF crate builds with the image's nightly (it needs `-Z build-std=core`), linked by
//! bpf-linker, which must be built against that nightly's own LLVM: a directory whose
//! `lib/libLLVM.so` points at the nightly's `libLLVM.so.<ver>-rust-…-nightly` is its
//! `LLVM_PREFIX` (DESIGN.md §6).

use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, cmd_output, exec, tools_dir};

/// The bpf-linker release known to build against LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Tools, then a release build of the tracer.
pub fn run() -> Result<()> {
    let started = Instant::now();
    tools()?;
    eprintln!("setup: building tracer (release)");
    exec(cargo().args(["build", "--release", "--package", "tracer"]))?;
    eprintln!("setup: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Installs what building the eBPF object needs.
pub fn tools() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

fn rust_src() -> Result<()> {
    let installed = cmd_output(std::process::Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is needed to build the eBPF programs")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: installing rust-src for nightly");
        exec(std::process::Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let tools = tools_dir();
    if tools.join("bin/bpf-linker").exists() {
        return Ok(());
    }
    let sysroot =
        cmd_output(std::process::Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = std::path::Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    // "libLLVM.so.22.1-rust-1.97.0-nightly" → 22
    let major = llvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    if major.parse::<u32>().is_err() {
        bail!("cannot tell the LLVM version of {llvm}");
    }
    let prefix = tools.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (1.5 minutes on 2 busy cores)");
    exec(
        std::process::Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&tools)
            .env("LLVM_PREFIX", &prefix),
    )
}
