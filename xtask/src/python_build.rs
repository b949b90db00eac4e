//! `cargo xtask python <minor>` (e.g. `cargo xtask python 3.14`): builds a CPython that the
//! machine lacks, once, into `.pythons/<minor>/` (ignored by git), from Debian's source
//! package `python<minor>`: our machines reach Debian's archive but not python.org, and
//! PyPI has no CPython sources.
//!
//! apt fetches the source with a private sources list and state directory (nothing
//! system-wide changes) and checks it against the archive's signed index. The build is the
//! plain upstream one from the `.orig` tarball (`configure && make`, no Debian patches, no
//! PGO), the shape of pyenv's.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd_output, exec, workspace_root};

/// Suites searched for the source package, newest first.
const SUITES: &[&str] = &["sid", "trixie"];

/// The interpreter `cargo xtask python <minor>` builds: `.pythons/<minor>/bin/python<minor>`.
pub fn built_python(minor: &str) -> PathBuf {
    workspace_root()
        .join(".pythons")
        .join(minor)
        .join(format!("bin/python{minor}"))
}

pub fn run(args: &[String]) -> Result<()> {
    let minor = args.first().map(String::as_str).unwrap_or("3.14");
    let python = built_python(minor);
    if python.exists() {
        eprintln!("python: {} is built", python.display());
        return Ok(());
    }
    let started = Instant::now();
    let work = workspace_root().join(format!(".pythons/build-{minor}"));
    let _ = std::fs::remove_dir_all(&work);
    let orig = fetch_source(minor, &work)?;
    exec(Command::new("tar").arg("xf").arg(&orig).current_dir(&work))?;
    let src = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("configure").exists())
        .context("no configure script in the source tarball")?;
    eprintln!("python: building {}", src.display());
    let prefix = workspace_root().join(".pythons").join(minor);
    exec(
        Command::new("./configure")
            .arg(format!("--prefix={}", prefix.display()))
            .args(["--without-ensurepip", "--disable-test-modules"])
            .current_dir(&src),
    )?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    exec(
        Command::new("make")
            .arg(format!("-j{jobs}"))
            .current_dir(&src),
    )?;
    exec(Command::new("make").arg("install").current_dir(&src))?;
    if !python.exists() {
        bail!("make install did not produce {}", python.display());
    }
    std::fs::remove_dir_all(&work)?;
    eprintln!(
        "python: built {} in {:.0} s",
        python.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Downloads the newest `python<minor>` source package any suite offers whose files the
/// archive serves, into `work`; returns its `.orig` tarball.
fn fetch_source(minor: &str, work: &Path) -> Result<PathBuf> {
    let apt = work.join("apt");
    std::fs::create_dir_all(apt.join("lists/partial"))?;
    let sources = apt.join("sources.list");
    let lines: String = SUITES
        .iter()
        .map(|s| format!("deb-src http://deb.debian.org/debian {s} main\n"))
        .collect();
    std::fs::write(&sources, lines)?;
    let apt_cmd = |tool: &str| {
        let mut cmd = Command::new(tool);
        cmd.arg(format!("-oDir::Etc::SourceList={}", sources.display()))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg(format!(
                "-oDir::State::Lists={}",
                apt.join("lists").display()
            ))
            .current_dir(work);
        cmd
    };
    let package = format!("python{minor}");
    eprintln!("python: looking for Debian's {package} source package");
    exec(apt_cmd("apt-get").arg("update"))?;
    let showsrc = cmd_output(apt_cmd("apt-cache").args(["showsrc", &package]))?;
    let mut versions: Vec<&str> = showsrc
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .collect();
    // Newest first (dpkg order agrees with this for the versions of one minor release).
    versions.sort_by_key(|v| {
        v.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u32>().ok())
            .collect::<Vec<_>>()
    });
    versions.reverse();
    if versions.is_empty() {
        bail!("no Debian suite of {SUITES:?} has a {package} source package");
    }
    for version in &versions {
        let fetched = apt_cmd("apt-get")
            .args(["source", "--download-only", &format!("{package}={version}")])
            .status()?;
        if fetched.success() {
            return std::fs::read_dir(work)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().contains(".orig.tar"))
                .context("apt-get source gave no .orig tarball");
        }
        eprintln!("python: {package} {version} could not be fetched; trying an older one");
    }
    bail!("none of {package} {versions:?} could be fetched from Debian's archive")
}
