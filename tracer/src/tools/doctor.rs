//! `tracer doctor [--pid N]`: can this machine (and this target) be traced, and if not,
//! what to do about it.
//!
//! Every check is a row of [`CHECKS`]: what it looks at, why the tracer needs it, how to fix
//! it, and the function that looks. The README's troubleshooting section is generated from
//! the same rows (`tracer doctor --markdown`), so the two cannot drift.

use std::{fmt::Write as _, fs, path::Path};

use crate::{
    live::{engines, plan, resolve},
    text::printable,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    /// Tracing works, but something is missing or odd.
    Warn(String),
    /// Tracing will fail.
    Fail(String),
    /// Not applicable (e.g. a target check without `--pid`).
    Skip(String),
}

/// What a check sees: the target's engines, found once for all the target checks.
pub struct Context {
    pub pid: Option<u32>,
    engines: Option<Result<Vec<engines::Engine>, String>>,
}

pub struct Check {
    pub name: &'static str,
    /// What is checked and why the tracer needs it.
    pub why: &'static str,
    /// What to do when it fails.
    pub fix: &'static str,
    pub run: fn(&Context) -> Outcome,
}

/// Oldest kernel with BPF ring buffers (5.8); perf-event programs on breakpoints are older.
const MIN_KERNEL: (u32, u32) = (5, 8);
/// Oldest kernel with `bpf_loop`, over which the scheduler snapshots walk the queues.
const MIN_SNAPSHOT_KERNEL: (u32, u32) = (5, 17);
/// Capability bits (linux/capability.h).
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub const CHECKS: &[Check] = &[
    Check {
        name: "kernel",
        why: "Linux 5.17 or newer: the probes report through a BPF ring buffer (5.8+) from a BPF program on hardware-breakpoint perf events, and the scheduler snapshots walk the queues with bpf_loop (5.17+).",
        fix: "Run on a newer kernel (any distribution kernel from 2022 on); on 5.8-5.16, `--phases-only` traces the phases without the snapshots.",
        run: check_kernel,
    },
    Check {
        name: "privileges",
        why: "Loading BPF programs, opening breakpoint perf events on another process's thread and reading its memory need root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE.",
        fix: "Run with sudo, or grant the capabilities once to a binary only a group you trust can run (with them it reads any process's memory): `t=$(command -v tracer); sudo groupadd -f tracing && sudo chgrp tracing $t && sudo chmod 0750 $t && sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $t`, then `sudo usermod -aG tracing $USER` and log in again. setcap comes last: chgrp clears a file's capabilities.",
        run: check_privileges,
    },
    Check {
        name: "bpf",
        why: "The bpf() system call, with ring-buffer maps: the tracer creates one to carry probe hits.",
        fix: "A kernel built without CONFIG_BPF_SYSCALL cannot be traced. `Operation not permitted` as root: a container without CAP_BPF/CAP_SYS_ADMIN (run it --privileged or add the capabilities) or a security module denying bpf().",
        run: check_bpf,
    },
    Check {
        name: "btf",
        why: "Kernel type information (/sys/kernel/btf/vmlinux). The current probes do not need it; it is reported because most eBPF tooling does.",
        fix: "Nothing to do for this tracer. Kernels built with CONFIG_DEBUG_INFO_BTF=y provide it.",
        run: check_btf,
    },
    Check {
        name: "perf_event_paranoid",
        why: "/proc/sys/kernel/perf_event_paranoid limits perf events for users without CAP_PERFMON; root is not limited.",
        fix: "Run as root (or with CAP_PERFMON), or `sudo sysctl kernel.perf_event_paranoid=1`.",
        run: check_paranoid,
    },
    Check {
        name: "watchpoints",
        why: "Hardware watchpoints (debug registers, PERF_TYPE_BREAKPOINT, 1-byte read/write): the probes on the engine's bytecode are watchpoints. This opens one on the tracer's own thread.",
        fix: "ENOSPC: the thread's 4 debug registers are taken (a debugger or another tracer attached: detach it). ENOENT/EOPNOTSUPP/EINVAL: this kernel or hypervisor offers no hardware breakpoints (some cloud VMs do not virtualize debug registers): use bare metal or another instance type.",
        run: check_watchpoints,
    },
    Check {
        name: "uprobes",
        why: "Uprobes (/sys/bus/event_source/devices/uprobe): the CUDA probes on libcuda use them. Step phases do not.",
        fix: "A kernel built with CONFIG_UPROBE_EVENTS=y; without it, trace with `--cuda off`.",
        run: check_uprobes,
    },
    Check {
        name: "lockdown",
        why: "Kernel lockdown (/sys/kernel/security/lockdown): `confidentiality` mode forbids BPF programs reading memory.",
        fix: "Boot with lockdown=integrity or none (on Secure Boot machines lockdown may follow from it; check your distribution's docs).",
        run: check_lockdown,
    },
    Check {
        name: "ptrace_scope",
        why: "Yama's /proc/sys/kernel/yama/ptrace_scope: reading the target's memory (process_vm_readv) needs ptrace access; scope 3 denies it to everyone, root included.",
        fix: "`sudo sysctl kernel.yama.ptrace_scope=1` (scope 3 can only be lowered by a reboot).",
        run: check_ptrace_scope,
    },
    Check {
        name: "engine",
        why: "With --pid: the vLLM engine process(es) around that pid (API server, EngineCore or worker): a CPython process that imported vllm.v1.engine.core and has a thread in EngineCoreProc.run_busy_loop.",
        fix: "Pass the pid of `vllm serve`, an EngineCore or a worker (`pgrep -af EngineCore`). If vLLM is still loading, wait until it serves. Engines that run in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) are the server's pid itself.",
        run: check_engine,
    },
    Check {
        name: "python",
        why: "With --pid: the engine's CPython version: the tracer reads the interpreter's memory with a layout table per CPython minor version (an unsupported one is named with the supported list).",
        fix: "Run vLLM on a supported CPython, or add the version's layout table (`cargo xtask codegen`).",
        run: check_python,
    },
    Check {
        name: "vllm",
        why: "With --pid: the engine's vllm.__version__ (recorded in run.json; the engine code's shape is checked by the probes check).",
        fix: "Informational: a version that cannot be read does not stop tracing.",
        run: check_vllm,
    },
    Check {
        name: "probes",
        why: "With --pid: every probe point resolves: the step function's code object, and in its bytecode the entry and the return points of schedule(), execute_model() and update_from_output().",
        fix: "This vLLM version's engine step has a shape the tracer does not know: open an issue with the output of `tracer probes --pid N` and the vLLM version.",
        run: check_probes,
    },
];

impl Context {
    pub fn new(pid: Option<u32>) -> Self {
        Self {
            engines: pid.map(|pid| engines::find(pid, None).map_err(|e| e.to_string())),
            pid,
        }
    }

    /// The target's engines, or the outcome that says why there are none.
    fn engines(&self) -> Result<&[engines::Engine], Outcome> {
        match &self.engines {
            None => Err(Outcome::Skip("no --pid given".into())),
            Some(Err(e)) => Err(Outcome::Fail(e.clone())),
            Some(Ok(engines)) => Ok(engines),
        }
    }

    /// The target checks after `engine`: skipped when there is no engine (the engine check
    /// already says why).
    fn each_engine(&self, f: impl Fn(&engines::Engine) -> Outcome) -> Outcome {
        let engines = match self.engines() {
            Ok(engines) => engines,
            Err(Outcome::Fail(_)) => return Outcome::Skip("no engine found".into()),
            Err(other) => return other,
        };
        let outcomes: Vec<(String, Outcome)> = engines.iter().map(|e| (e.tag(), f(e))).collect();
        let text = |o: &Outcome| match o {
            Outcome::Ok(t) | Outcome::Warn(t) | Outcome::Fail(t) | Outcome::Skip(t) => t.clone(),
        };
        let joined = if outcomes.len() == 1 {
            text(&outcomes[0].1)
        } else {
            outcomes
                .iter()
                .map(|(tag, o)| format!("{tag}: {}", text(o)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if outcomes.iter().any(|(_, o)| matches!(o, Outcome::Fail(_))) {
            Outcome::Fail(joined)
        } else if outcomes.iter().any(|(_, o)| matches!(o, Outcome::Warn(_))) {
            Outcome::Warn(joined)
        } else {
            Outcome::Ok(joined)
        }
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn check_kernel(_: &Context) -> Outcome {
    let release = kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= MIN_SNAPSHOT_KERNEL {
        Outcome::Ok(format!("Linux {release}"))
    } else if version >= MIN_KERNEL {
        Outcome::Warn(format!(
            "Linux {release} is older than {}.{}: trace with --phases-only",
            MIN_SNAPSHOT_KERNEL.0, MIN_SNAPSHOT_KERNEL.1
        ))
    } else {
        Outcome::Fail(format!(
            "Linux {release} is older than {}.{}",
            MIN_KERNEL.0, MIN_KERNEL.1
        ))
    }
}

/// Effective capabilities of this process.
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn privileged() -> bool {
    let caps = effective_caps();
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_BPF) && has(CAP_PERFMON) && has(CAP_SYS_PTRACE)
}

fn check_privileges(_: &Context) -> Outcome {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if privileged() {
        Outcome::Ok(if euid == 0 {
            "root".into()
        } else {
            format!("uid {euid} with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE")
        })
    } else {
        Outcome::Fail(format!(
            "uid {euid} without CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (effective capabilities {:#x})",
            effective_caps()
        ))
    }
}

/// `bpf(BPF_MAP_CREATE)` of a small ring buffer; the fd is closed again.
fn check_bpf(_: &Context) -> Outcome {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    // union bpf_attr, map-create part: map_type, key_size, value_size, max_entries, then
    // fields left zero.
    let mut attr = [0u32; 32];
    attr[0] = BPF_MAP_TYPE_RINGBUF;
    attr[3] = 4096; // one page: a ring buffer's size must be a power-of-2 number of pages
                    // SAFETY: bpf(2) reads `size` bytes of attr, which lives until the call returns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
        return Outcome::Ok("bpf() works; ring-buffer maps supported".into());
    }
    let error = std::io::Error::last_os_error();
    Outcome::Fail(match error.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no bpf() system call".into(),
        Some(libc::EINVAL) => "this kernel has no BPF ring buffers (Linux 5.8+)".into(),
        Some(libc::EPERM) => format!("creating a BPF map: {error} (privileges?)"),
        _ => format!("creating a BPF ring buffer: {error}"),
    })
}

fn check_btf(_: &Context) -> Outcome {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Outcome::Ok("/sys/kernel/btf/vmlinux present".into())
    } else {
        Outcome::Warn("no /sys/kernel/btf/vmlinux (not needed by the current probes)".into())
    }
}

fn check_paranoid(_: &Context) -> Outcome {
    let Ok(text) = fs::read_to_string("/proc/sys/kernel/perf_event_paranoid") else {
        return Outcome::Fail(
            "no /proc/sys/kernel/perf_event_paranoid: kernel without perf events".into(),
        );
    };
    let value: i32 = text.trim().parse().unwrap_or(i32::MAX);
    if privileged() {
        Outcome::Ok(format!("{value} (does not apply: privileged)"))
    } else if value <= 1 {
        Outcome::Ok(value.to_string())
    } else {
        Outcome::Fail(format!(
            "{value}: unprivileged users cannot watch other processes"
        ))
    }
}

/// The start of `struct perf_event_attr` (PERF_ATTR_SIZE_VER5 = 112 bytes) for a breakpoint.
#[repr(C)]
#[derive(Default)]
struct BreakpointAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    bp_addr: u64,
    bp_len: u64,
    rest: [u64; 5],
}

/// A byte for the doctor's test watchpoint to watch.
static WATCHED: u8 = 0;

fn check_watchpoints(_: &Context) -> Outcome {
    const PERF_TYPE_BREAKPOINT: u32 = 5;
    const HW_BREAKPOINT_RW: u32 = 3;
    const DISABLED: u64 = 1;
    let attr = BreakpointAttr {
        type_: PERF_TYPE_BREAKPOINT,
        size: std::mem::size_of::<BreakpointAttr>() as u32,
        sample_period: 1,
        flags: DISABLED,
        bp_type: HW_BREAKPOINT_RW,
        bp_addr: std::ptr::addr_of!(WATCHED) as u64,
        bp_len: 1,
        ..Default::default()
    };
    // SAFETY: perf_event_open reads attr (size bytes) during the call; pid 0 = this thread.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const BreakpointAttr,
            0,
            -1,
            -1,
            0,
        )
    };
    if fd >= 0 {
        // SAFETY: fd was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
        return Outcome::Ok("a 1-byte read/write hardware watchpoint opens".into());
    }
    let error = std::io::Error::last_os_error();
    Outcome::Fail(match error.raw_os_error() {
        Some(libc::ENOSPC) => format!("{error}: no free debug register"),
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV) => {
            format!("{error}: no hardware breakpoints on this kernel or VM")
        }
        Some(libc::EACCES | libc::EPERM) => format!("{error}: not permitted"),
        _ => error.to_string(),
    })
}

fn check_uprobes(_: &Context) -> Outcome {
    if Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        Outcome::Ok("uprobe PMU present".into())
    } else {
        Outcome::Warn("no uprobe PMU: CUDA probes unavailable".into())
    }
}

fn check_lockdown(_: &Context) -> Outcome {
    match fs::read_to_string("/sys/kernel/security/lockdown") {
        Err(_) => Outcome::Ok("no lockdown support in this kernel".into()),
        Ok(text) if text.contains("[confidentiality]") => {
            Outcome::Fail("lockdown=confidentiality".into())
        }
        Ok(text) => {
            let mode = text
                .split_whitespace()
                .find(|w| w.starts_with('['))
                .unwrap_or("?");
            Outcome::Ok(format!("lockdown {mode}"))
        }
    }
}

fn check_ptrace_scope(_: &Context) -> Outcome {
    match fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Err(_) => Outcome::Ok("no Yama".into()),
        Ok(text) => match text.trim() {
            "3" => Outcome::Fail("3: no process may read another's memory".into()),
            scope if privileged() || scope == "0" => Outcome::Ok(scope.to_owned()),
            scope => Outcome::Warn(format!("{scope}: needs CAP_SYS_PTRACE")),
        },
    }
}

fn check_engine(ctx: &Context) -> Outcome {
    match ctx.engines() {
        Err(outcome) => outcome,
        Ok(engines) => Outcome::Ok(
            engines
                .iter()
                .map(|e| {
                    format!(
                        "pid {} ({}) runs the engine loop on thread {}",
                        e.process.pid, e.process.title, e.resolved.tid
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

fn check_python(ctx: &Context) -> Outcome {
    ctx.each_engine(|e| {
        let py = &e.target.python;
        let interpreter = match &py.eval_code {
            crate::live::discover::EvalCode::Functions {
                tail_call: true, ..
            } => "; tail-call interpreter",
            crate::live::discover::EvalCode::Functions { .. } => "",
            crate::live::discover::EvalCode::Unknown(_) => {
                "; its bytecode loop is not one named function: rewrites not filtered by address"
            }
        };
        Outcome::Ok(format!(
            "CPython {} ({}){interpreter}",
            py.version,
            printable(&py.binary.to_string_lossy())
        ))
    })
}

fn check_vllm(ctx: &Context) -> Outcome {
    ctx.each_engine(|e| match resolve::vllm_version(&e.target) {
        Some(v) => Outcome::Ok(format!("vLLM {v}")),
        None => Outcome::Warn("vllm.__version__ not readable".into()),
    })
}

fn check_probes(ctx: &Context) -> Outcome {
    ctx.each_engine(|e| match plan::plan(&e.resolved, e.target.python.layout) {
        Ok(plan) => Outcome::Ok(format!(
            "{} probe points in {}: {}",
            plan.watches.len(),
            e.resolved.step.qualname,
            plan.watches
                .iter()
                .map(|w| format!("{} at +{}", w.mark, w.offset))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(error) => Outcome::Fail(error.to_string()),
    })
}

/// Runs every check; returns the printed report and whether any failed.
pub fn run(pid: Option<u32>) -> (String, bool) {
    let ctx = Context::new(pid);
    let mut out = String::new();
    let mut failed = false;
    for check in CHECKS {
        let outcome = (check.run)(&ctx);
        let (mark, text) = match &outcome {
            Outcome::Ok(t) => ("ok  ", t),
            Outcome::Warn(t) => ("warn", t),
            Outcome::Fail(t) => ("FAIL", t),
            Outcome::Skip(t) => ("skip", t),
        };
        let _ = writeln!(out, "{mark} {:<20} {text}", check.name);
        if let Outcome::Fail(_) = outcome {
            failed = true;
            let _ = writeln!(out, "     {:<20} fix: {}", "", check.fix);
        }
    }
    if failed {
        out.push_str("\nSome checks failed: tracing will not work until they are fixed.\n");
    } else if pid.is_some() {
        out.push_str("\nAll checks passed: this target can be traced.\n");
    } else {
        out.push_str("\nThis machine can trace; add --pid N to check a target.\n");
    }
    (out, failed)
}

/// The README's troubleshooting section: every check, why it matters, how to fix it.
pub fn markdown() -> String {
    let mut out = String::from(
        "Generated from `tracer doctor`'s checks (`tracer doctor --markdown`); run \
         `sudo tracer doctor --pid N` to see which of them fail here.\n\n",
    );
    for check in CHECKS {
        let _ = writeln!(
            out,
            "- **{}**: {}\n  Fix: {}",
            check.name, check.why, check.fix
        );
    }
    out
}
