//! Stage 1, discover: from a pid to the CPython runtime inside it.
//!
//! Finds the ELF file that holds the interpreter (the executable itself for static builds
//! such as Debian's and Ubuntu's, or a `libpython3.X.so`), where it is loaded, the
//! addresses of `_PyRuntime` and the builtin type objects from its dynamic symbols (present
//! even in stripped builds, since extension modules link against them), and the version.

use std::{
    fs,
    ops::Range,
    path::{Path, PathBuf},
};

use object::{
    elf::PF_W, Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef, SegmentFlags,
};

use crate::{
    inspect::{
        cpython::{
            layout::{self, LayoutCheck, DEBUG_COOKIE},
            Layout, TypeAddrs,
        },
        mapped,
        memory::{LiveProcess, ProcessMemory},
    },
    text::printable,
};

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("cannot read /proc/{pid}/maps: {source} (run as root, e.g. with sudo)")]
    Permission { pid: u32, source: std::io::Error },
    #[error("process {pid} ({exe}) is not a CPython process: no mapped file defines _PyRuntime")]
    NotPython { pid: u32, exe: String },
    #[error("process {pid} runs CPython {version}, which this tracer does not support (supported: {supported})")]
    UnsupportedVersion {
        pid: u32,
        version: String,
        supported: String,
    },
    #[error("reading the interpreter of process {pid}: {what}")]
    Other { pid: u32, what: String },
}

/// The traced process and the interpreter in it.
#[derive(Debug)]
pub struct Target {
    pub pid: u32,
    /// The executable's path and the command line, escaped for printing (the target's to
    /// choose, escape sequences included: see [`printable`]).
    pub exe: String,
    pub cmdline: String,
    pub python: PythonRuntime,
}

/// Where a CPython runtime lives in the target.
#[derive(Debug)]
pub struct PythonRuntime {
    /// The ELF that holds the interpreter, as the target sees it.
    pub binary: PathBuf,
    /// `major.minor.micro`.
    pub version: String,
    pub layout: &'static Layout,
    /// How the layout row compared with the offsets the interpreter states (3.13+).
    pub layout_check: LayoutCheck,
    /// Address of `_PyRuntime` in the target.
    pub runtime: u64,
    pub runtime_found_by: RuntimeSource,
    pub types: TypeAddrs,
    /// Where the code that executes bytecode is, which tells a hit that reads a watched
    /// instruction from one that rewrites it.
    pub eval_code: EvalCode,
}

/// The code that reads instructions to execute them, in the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvalCode {
    /// These functions, sorted: `_PyEval_EvalFrameDefault` (with its compiler-split parts
    /// where the symbol table names them), or in a tail-call build (3.14's
    /// `--with-tail-call-interp`) that and every instruction handler `_TAIL_CALL_<op>`, each
    /// a function of its own. Hits from elsewhere are rewrites (quickening).
    Functions {
        ranges: Vec<Range<u64>>,
        tail_call: bool,
    },
    /// Not known from the file: why. Hits are then not told apart by where they come from.
    Unknown(String),
}

impl EvalCode {
    /// For run.json: how hits are told from rewrites in this target.
    pub fn describe(&self) -> String {
        match self {
            EvalCode::Functions { ranges, tail_call } => format!(
                "hits from outside {} function(s) executing bytecode are rewrites{}",
                ranges.len(),
                if *tail_call {
                    " (tail-call interpreter: one function per instruction handler)"
                } else {
                    ""
                }
            ),
            EvalCode::Unknown(why) => {
                format!("off: {why}; a rewrite of a watched instruction is then a second hit on it, which the step assembly absorbs")
            }
        }
    }

    /// Whether a hit at `ip` may be an instruction being executed (true where unknown).
    pub fn executes(&self, ip: u64) -> bool {
        match self {
            EvalCode::Functions { ranges, .. } => {
                let i = ranges.partition_point(|r| r.end <= ip);
                ranges.get(i).is_some_and(|r| r.contains(&ip))
            }
            EvalCode::Unknown(_) => true,
        }
    }
}

/// `_PyEval_EvalFrameDefault` of a computed-goto or switch build holds every instruction
/// handler: 38-73 kB in the builds we test (pyenv 3.10-3.13, Debian 3.11, libpython3.14). Smaller, it is the entry of a tail-call build
/// whose handler symbols were stripped, or the visible part of a function the compiler
/// split (Debian's PGO + LTO static 3.14: 1 184 bytes, its handlers elsewhere).
const MIN_EVAL_LOOP: u64 = 16 << 10;

/// Finds the interpreter's bytecode-executing code among an ELF file's symbols
/// (`(name, link-time address, size)`), and moves it by `bias`.
pub fn eval_code<'a>(symbols: impl Iterator<Item = (&'a str, u64, u64)>, bias: u64) -> EvalCode {
    let mut main = None;
    let mut parts = Vec::new();
    let mut tail_call = false;
    for (name, addr, size) in symbols {
        if size == 0 {
            continue;
        }
        let range = bias.wrapping_add(addr)..bias.wrapping_add(addr).saturating_add(size);
        if name == "_PyEval_EvalFrameDefault" {
            main = Some(range);
        } else if name.starts_with("_PyEval_EvalFrameDefault.") {
            // GCC's split-off parts and clones: `.cold`, `.part.0`, `.lto_priv.0`.
            parts.push(range);
        } else if name.starts_with("_TAIL_CALL_") {
            tail_call = true;
            parts.push(range);
        }
    }
    let Some(main) = main else {
        return EvalCode::Unknown("no _PyEval_EvalFrameDefault symbol".into());
    };
    let size = main.end - main.start;
    if !tail_call && size < MIN_EVAL_LOOP && parts.is_empty() {
        return EvalCode::Unknown(format!(
            "_PyEval_EvalFrameDefault is {size} bytes and no symbol names the rest of the \
             interpreter (a tail-call build stripped of its handler symbols, or a split one)"
        ));
    }
    let mut ranges = parts;
    ranges.push(main);
    ranges.sort_by_key(|r| r.start);
    ranges.dedup();
    EvalCode::Functions { ranges, tail_call }
}

pub fn discover(pid: u32) -> Result<Target, DiscoverError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return Err(DiscoverError::NoSuchProcess(pid));
    }
    let maps = fs::read_to_string(proc_dir.join("maps")).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DiscoverError::NoSuchProcess(pid),
        _ => DiscoverError::Permission { pid, source },
    })?;
    let exe = fs::read_link(proc_dir.join("exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let cmdline = fs::read(proc_dir.join("cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let mappings = parse_maps(&maps);
    // The executable first (static builds), then any libpython.
    let mut candidates: Vec<&str> = Vec::new();
    for m in &mappings {
        let name = Path::new(m.path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if (m.path == exe || name.starts_with("libpython3")) && !candidates.contains(&m.path) {
            candidates.push(m.path);
        }
    }
    // Any mapped file may carry a libpython name (a decoy: a huge sparse file, a FIFO, a
    // broken ELF): one that fails is skipped, and named only if none succeeds.
    let mut failed: Vec<(String, DiscoverError)> = Vec::new();
    for path in candidates {
        match runtime_in(pid, path, &mappings) {
            Ok(Some(python)) => {
                return Ok(Target {
                    pid,
                    exe: printable(&exe).into_owned(),
                    cmdline: printable(&cmdline).into_owned(),
                    python,
                })
            }
            Ok(None) => {}
            Err(e) => failed.push((path.to_owned(), e)),
        }
    }
    let exe = printable(&exe).into_owned();
    // An unsupported interpreter says so; other failures are listed, one per file.
    if let Some(i) = failed
        .iter()
        .position(|(_, e)| matches!(e, DiscoverError::UnsupportedVersion { .. }))
    {
        return Err(failed.swap_remove(i).1);
    }
    match failed.len() {
        0 => Err(DiscoverError::NotPython { pid, exe }),
        1 => Err(failed.remove(0).1),
        _ => Err(DiscoverError::Other {
            pid,
            what: failed
                .iter()
                .map(|(_, e)| match e {
                    DiscoverError::Other { what, .. } => what.clone(),
                    e => e.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

struct Mapping<'a> {
    start: u64,
    end: u64,
    offset: u64,
    /// As maps shows it, less a ` (deleted)` suffix.
    path: &'a str,
}

/// The file-backed lines of /proc/PID/maps: `start-end perms offset dev inode path`, where
/// the path (everything after the inode) may hold spaces.
fn parse_maps(maps: &str) -> Vec<Mapping<'_>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, |c: char| c.is_ascii_whitespace());
            let (range, _perms, offset, _dev, _inode) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let path = fields.next()?.trim_start();
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            if !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path,
            })
        })
        .collect()
}

/// The runtime in one mapped ELF file, if it defines `_PyRuntime`.
fn runtime_in(
    pid: u32,
    path: &str,
    mappings: &[Mapping],
) -> Result<Option<PythonRuntime>, DiscoverError> {
    let shown = printable(path);
    let other = |what: String| DiscoverError::Other { pid, what };
    let first = mappings
        .iter()
        .find(|m| m.path == path && m.offset == 0)
        .ok_or_else(|| other(format!("{shown} has no mapping at file offset 0")))?;
    // Headers and symbol tables only, within a byte budget: never the whole file.
    let (file, _) = mapped::open_mapping(pid, first.start..first.end, path)
        .map_err(|e| other(format!("{shown}: {e}")))?;
    let data = mapped::Capped::new(file);
    let elf = object::File::parse(&data).map_err(|e| other(format!("{shown}: {e}")))?;
    let symbol = |name: &str| {
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| (s.address(), s.size()))
    };
    let Some((runtime, runtime_found_by)) = find_runtime(&elf) else {
        return Ok(None);
    };
    let load_base = first.start;
    let first_vaddr = elf.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
    // Addresses from the file are the file's to choose: wrapping, never a panic (a bad
    // one fails the reads that follow).
    let bias = load_base.wrapping_sub(first_vaddr);
    let at = |name: &str| {
        symbol(name)
            .map(|(addr, _)| bias.wrapping_add(addr))
            .unwrap_or(0)
    };

    let runtime = bias.wrapping_add(runtime);
    let read = |addr: u64, what: &str| read_word(pid, addr, what);
    // From 3.13 `_PyRuntime` starts with `_Py_DebugOffsets`: a cookie, then PY_VERSION_HEX.
    let debug_offsets = read(runtime, "_PyRuntime")?.to_ne_bytes() == *DEBUG_COOKIE;
    // PY_VERSION_HEX is 0xMMmmppLS.
    let hex_version =
        |hex: u64| format!("{}.{}.{}", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
    let version = match symbol("Py_Version") {
        // Py_Version: 3.11+.
        Some((addr, _)) => hex_version(read(bias.wrapping_add(addr), "Py_Version")? & 0xffff_ffff),
        None if debug_offsets => {
            hex_version(read(runtime.wrapping_add(8), "_Py_DebugOffsets.version")?)
        }
        None => version_from_name(path)
            .ok_or_else(|| other(format!("cannot tell the Python version of {shown}")))?,
    };
    let (layout, layout_check) = checked_layout(pid, &version, runtime, debug_offsets)?;
    Ok(Some(PythonRuntime {
        binary: PathBuf::from(path),
        version,
        layout,
        layout_check,
        runtime,
        runtime_found_by,
        types: type_addrs(at),
        eval_code: eval_code(
            elf.dynamic_symbols()
                .chain(elf.symbols())
                .filter(|s| s.kind() == object::SymbolKind::Text)
                .filter_map(|s| Some((s.name().ok()?, s.address(), s.size()))),
            bias,
        ),
    }))
}

/// A word of the target, or an error that says what was read where.
fn read_word(pid: u32, addr: u64, what: &str) -> Result<u64, DiscoverError> {
    LiveProcess { pid }
        .read_u64(addr)
        .map_err(|e| DiscoverError::Other {
            pid,
            what: format!("reading {what} at {addr:#x}: {e}"),
        })
}

/// The layout of CPython `version`, checked against the `_Py_DebugOffsets` at `runtime` when
/// it starts with them. A free-threaded build is refused: its objects are laid out otherwise.
fn checked_layout(
    pid: u32,
    version: &str,
    runtime: u64,
    debug_offsets: bool,
) -> Result<(&'static Layout, LayoutCheck), DiscoverError> {
    let unsupported = |version: String| DiscoverError::UnsupportedVersion {
        pid,
        version,
        supported: layout::supported_versions(),
    };
    let mut parts = version.split('.').map(|p| p.parse::<u8>().unwrap_or(0));
    let minor_version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let layout = layout::for_version(minor_version).ok_or_else(|| unsupported(version.into()))?;
    let read = |offset: u64, what: &str| read_word(pid, runtime.wrapping_add(offset), what);
    if let Some(debug) = layout.debug_offsets.filter(|_| debug_offsets) {
        if read(debug.free_threaded, "_Py_DebugOffsets.free_threaded")? != 0 {
            return Err(unsupported(format!("{version} (free-threaded build)")));
        }
    }
    if debug_offsets {
        layout.checked(|offset| read(offset, "_Py_DebugOffsets"))
    } else {
        Ok((layout, LayoutCheck::Unavailable))
    }
}

/// The builtin type objects and singletons, by their symbols' load addresses (`at`: 0
/// where a symbol is missing).
fn type_addrs(at: impl Fn(&str) -> u64) -> TypeAddrs {
    TypeAddrs {
        str: at("PyUnicode_Type"),
        dict: at("PyDict_Type"),
        tuple: at("PyTuple_Type"),
        module: at("PyModule_Type"),
        function: at("PyFunction_Type"),
        code: at("PyCode_Type"),
        int: at("PyLong_Type"),
        float: at("PyFloat_Type"),
        bool: at("PyBool_Type"),
        list: at("PyList_Type"),
        set: at("PySet_Type"),
        frozenset: at("PyFrozenSet_Type"),
        bytes: at("PyBytes_Type"),
        member_descr: at("PyMemberDescr_Type"),
        type_: at("PyType_Type"),
        none: at("_Py_NoneStruct"),
        true_: at("_Py_TrueStruct"),
        false_: at("_Py_FalseStruct"),
    }
}

/// How `_PyRuntime` was found in an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeSource {
    /// Its symbol (dynamic symbols survive stripping: extension modules link against them).
    Symbol,
    /// The `.PyRuntime` section CPython puts it in (section headers survive stripping).
    Section,
    /// The `_Py_DebugOffsets` cookie it starts with (3.13+), in the file's writable data.
    Cookie,
}

/// Largest writable segment searched for the `_Py_DebugOffsets` cookie (libpython's data
/// is a few hundred kB).
const MAX_COOKIE_SCAN: u64 = 16 << 20;

/// `_PyRuntime`'s link-time address in an ELF file and how it was found: by symbol, else
/// by section, else by cookie.
pub fn find_runtime<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
) -> Option<(u64, RuntimeSource)> {
    runtime_by(elf, RuntimeSource::Symbol)
        .or_else(|| runtime_by(elf, RuntimeSource::Section))
        .or_else(|| runtime_by(elf, RuntimeSource::Cookie))
}

/// `_PyRuntime`'s link-time address by one method.
pub fn runtime_by<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    method: RuntimeSource,
) -> Option<(u64, RuntimeSource)> {
    let addr = match method {
        RuntimeSource::Symbol => elf
            .dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.name() == Ok("_PyRuntime"))
            .map(|s| s.address()),
        RuntimeSource::Section => elf.section_by_name(".PyRuntime").map(|s| s.address()),
        RuntimeSource::Cookie => {
            // Exactly one 8-aligned cookie in writable segments (the code that checks it
            // holds the bytes too, in a read-only one). A segment larger than any
            // interpreter's data is not scanned (its read would fail the byte budget anyway).
            let mut found = elf
                .segments()
                .filter(
                    |s| matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_W != 0),
                )
                .filter(|s| s.file_range().1 <= MAX_COOKIE_SCAN)
                .filter_map(|s| Some((s.address(), s.data().ok()?)))
                .flat_map(|(base, data)| {
                    data.windows(DEBUG_COOKIE.len())
                        .enumerate()
                        .filter(|(i, w)| {
                            *w == DEBUG_COOKIE && base.wrapping_add(*i as u64).is_multiple_of(8)
                        })
                        .map(move |(i, _)| base.wrapping_add(i as u64))
                        .collect::<Vec<_>>()
                });
            let first = found.next();
            first.filter(|_| found.next().is_none())
        }
    }?;
    Some((addr, method))
}

/// `3.10` from `.../libpython3.10.so.1.0` or `.../python3.10`, for builds without `Py_Version`.
fn version_from_name(path: &str) -> Option<String> {
    let name = Path::new(path).file_name()?.to_str()?;
    let rest = &name[name.find("python3.")? + "python".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    Some(rest[..end].trim_end_matches('.').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_file_names() {
        assert_eq!(
            version_from_name("/usr/lib/libpython3.10.so.1.0").as_deref(),
            Some("3.10")
        );
        assert_eq!(
            version_from_name("/opt/py/bin/python3.12").as_deref(),
            Some("3.12")
        );
        assert_eq!(version_from_name("/usr/bin/node"), None);
    }

    #[test]
    fn eval_code_of_each_kind_of_build() {
        let bias = 0x1000;
        // Computed gotos: one big function (plus GCC's cold part where named).
        let plain = [
            ("_PyEval_EvalFrameDefault", 0x10000, 60_000),
            ("_PyEval_EvalFrameDefault.cold", 0x500, 900),
            ("PyObject_GetAttr", 0x40000, 300),
        ];
        let code = eval_code(plain.into_iter(), bias);
        assert_eq!(
            code,
            EvalCode::Functions {
                ranges: vec![0x1500..0x1500 + 900, 0x11000..0x11000 + 60_000],
                tail_call: false
            }
        );
        assert!(code.executes(0x11000 + 59_999) && code.executes(0x1600));
        assert!(!code.executes(0x41000) && !code.executes(0x11000 + 60_000));
        // Tail calls (clang --with-tail-call-interp): a small entry, a function per handler.
        let tail = [
            ("_PyEval_EvalFrameDefault", 0x20000, 700),
            ("_TAIL_CALL_RESUME_CHECK", 0x30000, 120),
            ("_TAIL_CALL_LOAD_FAST", 0x30100, 80),
            ("_TAIL_CALL_error", 0x30200, 300),
            ("_Py_Specialize_LoadAttr", 0x50000, 2000),
        ];
        let code = eval_code(tail.into_iter(), bias);
        assert!(
            matches!(&code, EvalCode::Functions { ranges, tail_call: true } if ranges.len() == 4)
        );
        assert!(
            code.executes(0x31000 + 10) && code.executes(0x31100 + 79) && code.executes(0x21000)
        );
        assert!(
            !code.executes(0x51000 + 10),
            "the specializer rewrites, never executes"
        );
        // Stripped to dynamic symbols, and the exported function is not the loop: unknown.
        let stripped = [("_PyEval_EvalFrameDefault", 0x20000, 1184)];
        let code = eval_code(stripped.into_iter(), bias);
        assert!(
            matches!(&code, EvalCode::Unknown(why) if why.contains("1184 bytes")),
            "{code:?}"
        );
        assert!(code.executes(0x99999));
        assert!(matches!(
            eval_code([].into_iter(), bias),
            EvalCode::Unknown(_)
        ));
    }

    #[test]
    fn maps_lines() {
        let maps = "5581a000-5581b000 r--p 00000000 08:01 123 /usr/bin/python3.11\n\
                    7f00-7f10 rw-p 00000000 00:00 0 \n\
                    7f20-7f30 r-xp 00001000 08:01 9 /lib/libc.so.6\n";
        let m = parse_maps(maps);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].start, m[0].offset, m[0].path),
            (0x5581a000, 0, "/usr/bin/python3.11")
        );
        assert_eq!((m[1].offset, m[1].path), (0x1000, "/lib/libc.so.6"));
    }
}
