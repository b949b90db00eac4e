//! `cargo xtask python <minor>` (e.g. `cargo xtask python 3.14`): puts a CPython that the
//! machine lacks, once, into `.pythons/<minor>/` (ignored by git), from Debian: our machines
//! reach Debian's archive but not python.org, and PyPI has no CPython sources.
//!
//! apt works with a private sources list, state and cache directory (nothing system-wide
//! changes) and checks what it fetches against the archive's signed index.
//!
//! 1. The source package `python<minor>`, built plain upstream from its `.orig` tarball
//!    (`configure && make`, no Debian patches, no PGO), the shape of pyenv's.
//! 2. If the archive lists the source but does not serve its files (seen for `python3.14`:
//!    `apt-cache showsrc` lists 3.14.9 and 3.14.10, their files answer 404, while the binary
//!    packages are served), Debian's own binary packages of the same suite, unpacked: the
//!    statically linked, stripped `bin/python<minor>` (PGO + LTO, GCC), and
//!    `bin/python<minor>-shared`, CPython's own `Programs/python.c` main (`Py_BytesMain`)
//!    linked here against Debian's `libpython<minor>.so.1.0`. They need the suite's newer
//!    glibc, unpacked beside them: the executables' ELF interpreter and run path are set to
//!    it (`patchelf`, from apt; the interpreter's code is untouched). The interpreter path
//!    is absolute, so a moved tree is re-pointed by running this again.
//!
//! `.pythons/<minor>/BUILD` says which of the two it is, and the time it took.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd_output, exec, workspace_root};

/// Suites searched, newest first.
const SUITES: &[&str] = &["sid", "trixie"];

/// The archive: the Debian mirror apt uses on our machines (`/etc/apt/sources.list.d/
/// debian.sources`, `URIs:`).
const MIRROR: &str = "http://deb.debian.org/debian";

/// The interpreter `cargo xtask python <minor>` makes: `.pythons/<minor>/bin/python<minor>`.
pub fn built_python(minor: &str) -> PathBuf {
    workspace_root()
        .join(".pythons")
        .join(minor)
        .join(format!("bin/python{minor}"))
}

/// Minor versions whose interpreters `cargo xtask test` makes (if it can) for the CPython
/// matrix; 3.15 is made only by hand (`cargo xtask python 3.15`), for the refusal test.
const FOR_TESTS: &[&str] = &["3.14"];

/// Makes the matrix's interpreters where missing; one line per version for the test
/// summary: which interpreter its rows run on, or why they are skipped.
pub fn for_tests() -> Vec<String> {
    FOR_TESTS
        .iter()
        .map(|minor| {
            let prefix = workspace_root().join(".pythons").join(minor);
            match ensure(minor) {
                Ok(()) => {
                    let how = std::fs::read_to_string(prefix.join("BUILD")).unwrap_or_default();
                    format!(
                        "CPython {minor} rows: ran on .pythons/{minor} ({})",
                        how.lines().next().unwrap_or("made earlier")
                    )
                }
                Err(e) => format!(
                    "CPython {minor} rows: SKIPPED, .pythons/{minor} could not be made \
                     (`cargo xtask python {minor}`): {e:#}"
                ),
            }
        })
        .collect()
}

/// Makes `.pythons/<minor>` unless a working one is there.
pub fn ensure(minor: &str) -> Result<()> {
    let python = built_python(minor);
    let prefix = workspace_root().join(".pythons").join(minor);
    if runs(&python) {
        eprintln!("python: {} is there", python.display());
        return Ok(());
    }
    if prefix.join("DEBIAN-BINARY").exists() {
        // Unpacked here before, then moved: point it at its glibc again.
        eprintln!("python: {} moved; re-pointing it", prefix.display());
        link_debian(minor, &prefix)?;
        if runs(&python) {
            return Ok(());
        }
    }
    let started = Instant::now();
    let work = workspace_root().join(format!(".pythons/build-{minor}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let apt = Apt::new(&work)?;
    let how = match apt.fetch_source(minor)? {
        Some(orig) => {
            build_source(&orig, &work, &prefix)?;
            "built from Debian's source package (configure && make)".to_owned()
        }
        None => {
            let version = apt.fetch_binaries(minor, &work.join("debs"))?;
            unpack_debian(&work.join("debs"), &work.join("root"), &prefix)?;
            link_debian(minor, &prefix)?;
            format!("Debian's binary packages {version} (the archive serves no source here)")
        }
    };
    if !runs(&python) {
        bail!("{} does not run", python.display());
    }
    std::fs::remove_dir_all(&work)?;
    let secs = started.elapsed().as_secs_f64();
    std::fs::write(
        prefix.join("BUILD"),
        format!("{how}\nmade in {secs:.0} s by `cargo xtask python {minor}`\n"),
    )?;
    eprintln!("python: {} made in {secs:.0} s: {how}", python.display());
    Ok(())
}

fn runs(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import sys"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn build_source(orig: &Path, work: &Path, prefix: &Path) -> Result<()> {
    exec(Command::new("tar").arg("xf").arg(orig).current_dir(work))?;
    let src = std::fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("configure").exists())
        .context("no configure script in the source tarball")?;
    eprintln!("python: building {}", src.display());
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
    exec(Command::new("make").arg("install").current_dir(&src))
}

/// apt with a private sources list, state and cache under `work/apt`.
struct Apt {
    dir: PathBuf,
    sources: PathBuf,
    work: PathBuf,
}

impl Apt {
    fn new(work: &Path) -> Result<Self> {
        let dir = work.join("apt");
        std::fs::create_dir_all(dir.join("lists/partial"))?;
        std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let sources = dir.join("sources.list");
        let lines: String = SUITES
            .iter()
            .map(|s| format!("deb-src {MIRROR} {s} main\ndeb {MIRROR} {s} main\n"))
            .collect();
        std::fs::write(&sources, lines)?;
        let apt = Self {
            dir,
            sources,
            work: work.to_owned(),
        };
        eprintln!("python: reading Debian's {SUITES:?} indexes");
        exec(apt.cmd("apt-get").args(["-q", "update"]))?;
        Ok(apt)
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.arg(format!("-oDir::Etc::SourceList={}", self.sources.display()))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg(format!(
                "-oDir::State::Lists={}",
                self.dir.join("lists").display()
            ))
            .arg(format!("-oDir::Cache={}", self.dir.join("cache").display()))
            .arg("-oDir::State::status=/dev/null")
            // root downloads into a root-owned directory that _apt cannot write.
            .arg("-oAPT::Sandbox::User=root")
            .current_dir(&self.work);
        cmd
    }

    /// Versions of a package that apt lists (`showsrc` for a source package, `policy`'s
    /// table otherwise), newest first.
    fn versions(&self, package: &str, source: bool) -> Result<Vec<String>> {
        let mut versions: Vec<String> = if source {
            cmd_output(self.cmd("apt-cache").args(["showsrc", package]))?
                .lines()
                .filter_map(|l| l.strip_prefix("Version: "))
                .map(str::to_owned)
                .collect()
        } else {
            cmd_output(self.cmd("apt-cache").args(["madison", package]))?
                .lines()
                .filter_map(|l| l.split('|').nth(1))
                .map(|v| v.trim().to_owned())
                .collect()
        };
        // dpkg order agrees with this for the versions of one minor release.
        versions.sort_by_key(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u32>().ok())
                .collect::<Vec<_>>()
        });
        versions.dedup();
        versions.reverse();
        Ok(versions)
    }

    /// The newest `python<minor>` source whose files the archive serves: its `.orig`
    /// tarball, or `None` if none is served (an error if none is even listed).
    fn fetch_source(&self, minor: &str) -> Result<Option<PathBuf>> {
        let package = format!("python{minor}");
        let versions = self.versions(&package, true)?;
        if versions.is_empty() {
            bail!("no Debian suite of {SUITES:?} has a {package} source package");
        }
        for version in &versions {
            let fetched = self
                .cmd("apt-get")
                .args(["-q", "source", "--download-only"])
                .arg(format!("{package}={version}"))
                .status()?;
            if fetched.success() {
                return std::fs::read_dir(&self.work)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.to_string_lossy().contains(".orig.tar"))
                    .context("apt-get source gave no .orig tarball")
                    .map(Some);
            }
            eprintln!("python: the archive does not serve the source of {package} {version}");
        }
        Ok(None)
    }

    /// Downloads the newest served version of Debian's `python<minor>` binary packages and
    /// the libraries they run on, into `dest`; returns the version.
    fn fetch_binaries(&self, minor: &str, dest: &Path) -> Result<String> {
        std::fs::create_dir_all(dest)?;
        let python = [
            format!("python{minor}-minimal"),
            format!("libpython{minor}-minimal"),
            format!("libpython{minor}-stdlib"),
            format!("libpython{minor}"),
            format!("libpython{minor}-dev"),
        ];
        let versions = self.versions(&python[0], false)?;
        if versions.is_empty() {
            bail!("no Debian suite of {SUITES:?} has a {} package", python[0]);
        }
        for version in &versions {
            eprintln!("python: fetching Debian's python{minor} {version} binary packages");
            let ok = self
                .cmd("apt-get")
                .args(["-q", "download"])
                .args(python.iter().map(|p| format!("{p}={version}")))
                // What they link against, at the suite's versions (glibc first of all).
                .args(RUNTIME_LIBS)
                .current_dir(dest)
                .status()?
                .success();
            if ok {
                return Ok(version.clone());
            }
            eprintln!("python: python{minor} {version}'s packages are not all served");
        }
        bail!(
            "the archive serves neither the source nor the binary packages of any python{minor} \
             of {versions:?}"
        )
    }
}

/// Libraries Debian's interpreter and its standard library's extension modules link
/// against (sid's and trixie's names), glibc first.
const RUNTIME_LIBS: &[&str] = &[
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libzstd1",
    "liblzma5",
    "libbz2-1.0",
    "libssl3t64",
    "libsqlite3-0",
    "libuuid1",
];

/// Unpacks every `.deb` in `debs` into `root` and moves its `usr/` (Debian is usr-merged)
/// to `prefix`, so that `prefix` is the interpreter's `sys.prefix`.
fn unpack_debian(debs: &Path, root: &Path, prefix: &Path) -> Result<()> {
    for deb in std::fs::read_dir(debs)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
        }
    }
    let _ = std::fs::remove_dir_all(prefix);
    std::fs::rename(root.join("usr"), prefix)?;
    std::fs::write(prefix.join("DEBIAN-BINARY"), "")?;
    Ok(())
}

/// Points Debian's executables at the glibc unpacked beside them, makes the shared-library
/// one, and makes the headers usable without Debian's multiarch include directory.
fn link_debian(minor: &str, prefix: &Path) -> Result<()> {
    if Command::new("patchelf").arg("--version").output().is_err() {
        eprintln!("python: installing patchelf (apt)");
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-q", "patchelf"])
                .status()
                .is_ok_and(|s| s.success())
        };
        // A fresh machine's apt has no package lists yet.
        if !install() {
            exec(Command::new("apt-get").args(["-q", "update"]))?;
            exec(Command::new("apt-get").args(["install", "-y", "-q", "patchelf"]))?;
        }
    }
    let prefix = prefix.canonicalize()?;
    let libdir = prefix.join("lib/x86_64-linux-gnu");
    let loader = libdir.join("ld-linux-x86-64.so.2");
    let include = prefix.join(format!("include/python{minor}"));
    // Debian's pyconfig.h includes <x86_64-linux-gnu/python3.X/pyconfig.h>: put that one
    // in its place.
    let arch_config = prefix.join(format!("include/x86_64-linux-gnu/python{minor}/pyconfig.h"));
    if arch_config.exists() {
        std::fs::copy(&arch_config, include.join("pyconfig.h"))?;
    }
    let python = prefix.join(format!("bin/python{minor}"));
    // DT_RPATH, not RUNPATH: it also serves the libraries of dlopened extension modules.
    exec(
        Command::new("patchelf")
            .arg("--set-interpreter")
            .arg(&loader)
            .args([
                "--force-rpath",
                "--set-rpath",
                "$ORIGIN/../lib/x86_64-linux-gnu",
            ])
            .arg(&python),
    )?;
    // CPython's Programs/python.c, against the shared library.
    let main = prefix.join("lib/python-main.c");
    std::fs::write(
        &main,
        "#include \"Python.h\"\nint main(int argc, char **argv) { return Py_BytesMain(argc, argv); }\n",
    )?;
    exec(
        Command::new("gcc")
            .arg("-O2")
            .arg(format!("-I{}", include.display()))
            .arg(&main)
            .arg("-o")
            .arg(prefix.join(format!("bin/python{minor}-shared")))
            .arg(format!("-L{}", libdir.display()))
            .arg(format!("-lpython{minor}"))
            .arg(format!("-Wl,--dynamic-linker={}", loader.display()))
            .arg("-Wl,-rpath,$ORIGIN/../lib/x86_64-linux-gnu")
            .arg("-Wl,--disable-new-dtags")
            // libpython needs the newer glibc's symbols, present at run time.
            .arg("-Wl,--allow-shlib-undefined"),
    )?;
    let python3 = prefix.join("bin/python3");
    if !python3.exists() {
        std::os::unix::fs::symlink(format!("python{minor}"), &python3)?;
    }
    Ok(())
}
