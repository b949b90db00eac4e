//! `tracer run -o DIR -- <command…>`: start a command (`vllm serve …`, a script that starts
//! the server and a benchmark client, the fixture engine), wait until vLLM has loaded and its
//! engine loop runs, and trace every engine from then on; and [`trace_engines`], which
//! `attach` shares: one trace per engine, data-parallel engines side by side.
//!
//! The command runs in its own process group, so everything it starts can be stopped
//! together: when the trace ends (the engines exited, Ctrl-C, `--duration`, an error),
//! whatever is left of the command gets SIGTERM, then SIGKILL after [`STOP_GRACE`]. If the
//! tracer itself dies (`kill -9`, a crash), a watchdog process kills the group at once, and
//! the command's first process gets SIGKILL from the kernel (`PR_SET_PDEATHSIG`).
//!
//! Under sudo the command runs as the invoking user (`SUDO_UID`, `SUDO_GID` and that user's
//! groups, `HOME`/`USER`/`LOGNAME` of that user), not as root: the tracer needs root, vLLM,
//! model code and benchmark clients do not. `--as-root` keeps root.

use std::{
    collections::HashMap,
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStringExt as _, process::CommandExt as _},
    },
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::live::{
    discover::{self, DiscoverError, Target},
    engines::{self, Engine, Role},
    resolve::{self, ResolveError},
    session,
    sinks::{out_dir::Invoker, OutDir},
    status::say,
};

/// How often the command's processes are searched for an engine while vLLM loads.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a process whose discovery failed is left alone before it is looked at again
/// (sooner if its executable changes): a shared-library interpreter right after its exec
/// has not mapped libpython yet.
const RETRY_FAILED: Duration = Duration::from_millis(500);
/// How long the command gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// Set by SIGINT/SIGTERM/SIGHUP while waiting for the engine (the trace has its own handling).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The user a command runs as, looked up before the fork (the child may only make system
/// calls).
struct Credentials {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    name: Option<String>,
    home: Option<OsString>,
}

impl Credentials {
    /// The invoking user's, when running as root under sudo for another user; `None`: the
    /// command keeps the tracer's own ids.
    fn for_command(as_root: bool) -> Result<Option<Self>> {
        let invoker = Invoker::get()?;
        if as_root || !invoker.sudo || invoker.uid == 0 || !rustix::process::geteuid().is_root() {
            return Ok(None);
        }
        let (pw_name, home) = passwd(invoker.uid).unzip();
        let name = std::env::var("SUDO_USER").ok().or(pw_name);
        let groups = match &name {
            Some(name) => group_list(name, invoker.gid)
                .with_context(|| format!("reading the groups of user {name}"))?,
            None => vec![invoker.gid],
        };
        Ok(Some(Self {
            uid: invoker.uid,
            gid: invoker.gid,
            groups,
            name,
            home,
        }))
    }

    /// Runs in the forked child before exec: groups, then gid, then uid (after setuid the
    /// others can no longer be changed), then a check that root cannot be regained.
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on values prepared before the fork.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setuid(0) == 0 || libc::geteuid() != self.uid || libc::getegid() != self.gid {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(())
    }
}

/// Name and home directory of `uid` from the user database.
fn passwd(uid: u32) -> Option<(String, OsString)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter; getpwuid_r fills it with pointers into
    // `buf`, which outlives their use below.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: non-null result: pw_name and pw_dir are NUL-terminated strings in `buf`.
    let (name, dir) = unsafe {
        (
            std::ffi::CStr::from_ptr(pw.pw_name),
            std::ffi::CStr::from_ptr(pw.pw_dir),
        )
    };
    Some((
        name.to_string_lossy().into_owned(),
        OsString::from_vec(dir.to_bytes().to_vec()),
    ))
}

/// `user`'s supplementary groups plus `gid` (what `initgroups` would set).
fn group_list(user: &str, gid: libc::gid_t) -> Result<Vec<libc::gid_t>> {
    let name = CString::new(user)?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many
        // and sets `n` to the count (or the count needed, returning -1).
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return Ok(groups);
        }
        if n as usize <= groups.len() || groups.len() > 1 << 16 {
            bail!("getgrouplist failed");
        }
        groups.resize(n as usize, 0);
    }
}

/// A forked process that kills the command's process group when the tracer goes away
/// without stopping it (`kill -9`, a crash, an abort): it blocks on a pipe whose only
/// writer is the tracer, and the kernel closes that when the tracer dies, however it dies.
/// `PR_SET_PDEATHSIG` alone reaches only the command's first process, not what it started.
struct Watchdog {
    pid: libc::pid_t,
    pipe: OwnedFd,
}

impl Watchdog {
    fn start(pgid: libc::pid_t) -> std::io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new descriptors into `fds`. Close-on-exec: no command the
        // tracer starts may hold the write end, or the pipe would never close.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fork; the child below makes only async-signal-safe calls and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => unsafe { watch(read.as_raw_fd(), pgid) },
            pid => Ok(Self { pid, pipe: write }),
        }
    }

    /// The group is stopped: let the watchdog exit without killing anything, and reap it.
    fn disarm(self) {
        // SAFETY: a one-byte write to our pipe, then waitpid on our own child.
        unsafe {
            libc::write(self.pipe.as_raw_fd(), b"x".as_ptr().cast(), 1);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The watchdog's body, in the forked child: only system calls (the tracer may have other
/// threads, whose locks are frozen in this copy). Closes every descriptor but the pipe (a
/// reader of the tracer's stderr must see it close when the tracer exits), leaves the
/// tracer's process group (a signal to that group must not take the watchdog with it),
/// ignores terminal signals, waits for the pipe: a byte means disarmed, end of file means
/// the tracer is gone.
unsafe fn watch(pipe: libc::c_int, pgid: libc::pid_t) -> ! {
    if pipe > 0 {
        libc::syscall(libc::SYS_close_range, 0u32, (pipe - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (pipe + 1) as u32, u32::MAX, 0u32);
    libc::setpgid(0, 0);
    for signal in [
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGQUIT,
        libc::SIGPIPE,
    ] {
        libc::signal(signal, libc::SIG_IGN);
    }
    let mut byte = 0u8;
    let n = loop {
        let n = libc::read(pipe, (&raw mut byte).cast(), 1);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        break n;
    };
    if n != 1 {
        libc::kill(-pgid, libc::SIGKILL);
    }
    libc::_exit(0)
}

/// A started command and its process group. Dropping it stops the group (an error or a
/// panic on the way must not leave the command running).
pub struct Launched {
    pub child: Child,
    /// Who the command runs as, for messages.
    pub user: String,
    watchdog: Option<Watchdog>,
    status: Option<ExitStatus>,
}

impl Launched {
    /// Starts `command` in a new process group, as the invoking user under sudo unless
    /// `as_root`. Call it from the thread that will outlive the command (the main thread):
    /// `PR_SET_PDEATHSIG` fires when the thread that forked the child exits.
    pub fn start(command: &[String], as_root: bool) -> Result<Self> {
        let (program, args) = command.split_first().context("no command given after --")?;
        let credentials = Credentials::for_command(as_root)?;
        let mut cmd = Command::new(program);
        cmd.args(args).process_group(0);
        let user = match &credentials {
            Some(c) => {
                if let Some(home) = &c.home {
                    cmd.env("HOME", home);
                }
                if let Some(name) = &c.name {
                    cmd.env("USER", name).env("LOGNAME", name);
                }
                format!("uid {} ({})", c.uid, c.name.as_deref().unwrap_or("?"))
            }
            None => format!("uid {}", rustix::process::geteuid().as_raw()),
        };
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and makes only system
        // calls on values prepared here.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(c) = &credentials {
                    c.apply()?;
                }
                // After the uid switch, which clears the parent-death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The tracer died before the prctl: nobody would kill us later.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {program} as {user}"))?;
        let watchdog = match Watchdog::start(child.id() as libc::pid_t) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: kill(2) on the group we just created.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(e).context("starting the watchdog of the command");
            }
        };
        Ok(Self {
            child,
            user,
            watchdog: Some(watchdog),
            status: None,
        })
    }

    /// Stops the command's process group: SIGTERM, then waits until its first process has
    /// exited and no other process of the group is left, SIGKILL to the group after
    /// [`STOP_GRACE`]. Returns the first process's exit status. Idempotent.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the group we created; ESRCH (nothing left) is fine.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                if group_members(pgid).is_empty() {
                    break status;
                }
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.status = Some(status);
        if let Some(watchdog) = self.watchdog.take() {
            if group_members(pgid).is_empty() {
                watchdog.disarm();
            }
            // Else dropped: the watchdog sees the pipe close and kills what is left.
        }
        Ok(status)
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, … (`stat(5)`
/// numbering minus 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Processes of group `pgid` that still run (zombies excluded: they are dead, waiting for a
/// parent that may never reap them).
fn group_members(pgid: libc::pid_t) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.first().is_some_and(|s| s != "Z")
                    && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
            })
        })
        .collect()
}

/// What one process of the command was when last looked at.
struct Seen {
    /// Executable and start time: when either changes (an exec, a reused pid), the process
    /// is discovered afresh.
    key: (String, u64),
    title: String,
    /// Its CPython runtime, once discovered.
    target: Option<Target>,
    /// When a failed discovery may be retried.
    retry_at: Instant,
    /// What the last look found, for the message if no engine ever runs.
    note: String,
    /// vLLM was imported in it.
    vllm: bool,
    gone: bool,
}

impl Seen {
    fn new(key: (String, u64), title: &str, now: Instant) -> Self {
        Self {
            key,
            title: title.to_owned(),
            target: None,
            retry_at: now,
            note: "not looked at yet".into(),
            vllm: false,
            gone: false,
        }
    }

    fn line(&self, pid: u32) -> String {
        format!(
            "pid {pid}{} {:?} ({}): {}",
            if self.gone { " (exited)" } else { "" },
            self.title,
            self.key.0,
            self.note
        )
    }
}

/// Looks at process `p` of the command: discovers its runtime if that is new (or its
/// executable changed since), then tries to resolve the engine. Returns the engine once
/// found.
fn look_at(p: &engines::Process, seen: &mut HashMap<u32, Seen>) -> Option<Engine> {
    let start_time = stat_fields(p.pid)
        .and_then(|f| f.get(19)?.parse().ok())
        .unwrap_or(0);
    let key = (p.exe.clone(), start_time);
    let now = Instant::now();
    let entry = seen
        .entry(p.pid)
        .or_insert_with(|| Seen::new(key.clone(), &p.title, now));
    entry.gone = false;
    entry.title.clone_from(&p.title);
    if entry.key != key {
        // An exec (a wrapper such as pyenv's shim, or `sh -c '… exec python …'`): what was
        // found about the old program says nothing about the new one.
        *entry = Seen::new(key, &p.title, now);
    }
    if entry.target.is_none() {
        if now < entry.retry_at {
            return None;
        }
        match discover::discover(p.pid) {
            Ok(target) => entry.target = Some(target),
            Err(e) => {
                entry.retry_at = now + RETRY_FAILED;
                entry.note = match e {
                    DiscoverError::NotPython { .. } => "not CPython".into(),
                    e => e.to_string(),
                };
                return None;
            }
        }
    }
    let target = entry.target.as_ref()?;
    let version = target.python.version.clone();
    match resolve::resolve(target, None) {
        Ok(resolved) => {
            let target = entry.target.take()?;
            entry.note = format!("CPython {version}, vLLM's engine loop found");
            Some(Engine {
                dp_rank: p.role().and_then(|(_, rank)| rank),
                process: p.clone(),
                target,
                resolved,
            })
        }
        // The latest look decides: an earlier one may have failed on an interpreter still
        // starting (a read error is not a sign of vLLM).
        Err(e) => {
            (entry.vllm, entry.note) = not_an_engine(target, e);
            None
        }
    }
}

/// Whether vLLM is imported in a process where no engine resolved, and what to say of it.
fn not_an_engine(target: &Target, error: ResolveError) -> (bool, String) {
    let version = &target.python.version;
    let vllm = resolve::vllm_version(target);
    let note = match (error, &vllm) {
        (ResolveError::NoVllm { module, .. }, Some(v)) => {
            format!("CPython {version}, vLLM {v} imported, {module} not (yet)")
        }
        (ResolveError::NoVllm { .. }, None) => format!("CPython {version}, vLLM not imported"),
        (e, Some(_)) => format!("CPython {version}, vLLM imported, no engine loop: {e}"),
        (e, None) => format!("CPython {version}, no engine loop: {e}"),
    };
    (vllm.is_some(), note)
}

/// Waits until every engine of the command runs its loop (or `timeout`). Engines are
/// expected per EngineCore title seen (data parallel starts several); untitled (older vLLM,
/// the fixture): the first engine found.
pub fn wait_for_engines(launched: &mut Launched, timeout: Duration) -> Result<Vec<Engine>> {
    let handler = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler) };
    }
    let root = launched.child.id();
    let started = Instant::now();
    let mut seen: HashMap<u32, Seen> = HashMap::new();
    let mut found: Vec<Engine> = Vec::new();
    loop {
        if STOP.load(Ordering::SeqCst) {
            launched.stop()?;
            bail!("interrupted while waiting for vLLM's engine to start");
        }
        if let Some(status) = launched.child.try_wait()? {
            bail!(
                "the command exited ({status}) before a vLLM engine loop started{}",
                seen_text(&seen)
            );
        }
        let tree = engines::process_tree();
        let processes = engines::descendants(&tree, root);
        let expected = processes
            .iter()
            .filter(|p| matches!(p.role(), Some((Role::Engine, _))))
            .count()
            .max(1);
        for s in seen.values_mut() {
            s.gone = true;
        }
        for p in processes {
            if found.iter().any(|e| e.process.pid == p.pid) {
                seen.entry(p.pid).and_modify(|s| s.gone = false);
                continue;
            }
            found.extend(look_at(p, &mut seen));
        }
        if found.len() >= expected {
            return Ok(engines::sorted(found));
        }
        if started.elapsed() > timeout {
            launched.stop()?;
            let hint = if seen.values().any(|s| s.vllm) {
                " (vLLM was imported: if it is still loading the model, raise --wait)"
            } else if seen.values().all(|s| !s.note.starts_with("CPython")) {
                " (none of the command's processes ran a CPython the tracer could read)"
            } else {
                " (its Python processes never imported vLLM)"
            };
            bail!(
                "no vLLM engine loop started within {:.0} s{hint}{}",
                timeout.as_secs_f64(),
                seen_text(&seen)
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The processes seen, for an error message: pids, executables, what was found in them.
fn seen_text(seen: &HashMap<u32, Seen>) -> String {
    if seen.is_empty() {
        return String::new();
    }
    let mut pids: Vec<&u32> = seen.keys().collect();
    pids.sort();
    let shown = 20;
    let mut lines: Vec<String> = pids
        .iter()
        .take(shown)
        .map(|pid| format!("  {}", seen[pid].line(**pid)))
        .collect();
    if pids.len() > shown {
        lines.push(format!("  … and {} more", pids.len() - shown));
    }
    format!(
        "; what the command's processes were when last looked at:\n{}",
        lines.join("\n")
    )
}

/// Traces `engines`, one [`session::run`] each: one engine writes into `out_dir`, several
/// into `out_dir/<tag>/` (`dp0`, `dp1`, … or `engine-<pid>`), concurrently. Returns the
/// engine directories.
pub fn trace_engines(
    engines: &[Engine],
    out_dir: &OutDir,
    options: &session::Options,
) -> Result<Vec<OutDir>> {
    if let [engine] = engines {
        session::run(engine, out_dir.try_clone()?, options)?;
        return Ok(vec![out_dir.try_clone()?]);
    }
    let dirs = engines
        .iter()
        .map(|engine| out_dir.subdir(&engine.tag()))
        .collect::<Result<Vec<_>>>()?;
    let results: Vec<(String, Result<()>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .iter()
            .zip(&dirs)
            .map(|(engine, dir)| {
                let dir = dir.try_clone();
                (
                    engine.tag(),
                    scope.spawn(move || session::run(engine, dir?, options).map(|_| ())),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(tag, h)| {
                let result = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the trace thread panicked")));
                (tag, result)
            })
            .collect()
    });
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(tag, r)| r.err().map(|e| format!("{tag}: {e:#}")))
        .collect();
    if !failed.is_empty() {
        bail!("tracing failed for {}", failed.join("; "));
    }
    Ok(dirs)
}

/// `--label key=value`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {text:?}")),
    }
}

/// The user's `--label`s go into each engine's run.json (`labels`), where report and
/// compare read them. Merged after the trace, so they never depend on the capture path.
fn add_labels(dir: &OutDir, labels: &[(String, String)]) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let path = dir.join("run.json");
    let text = dir.read_to_string("run.json")?;
    let mut info: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let map = info
        .as_object_mut()
        .context("run.json is not an object")?
        .entry("labels")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(map) = map.as_object_mut() {
        for (k, v) in labels {
            map.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
    }
    dir.write(
        "run.json",
        (serde_json::to_string_pretty(&info)? + "\n").as_bytes(),
    )
}

/// Traces `engines` into `out_dir`, then adds the labels and writes trace.json.
pub fn trace_and_finish(
    engines: &[Engine],
    out_dir: &OutDir,
    labels: &[(String, String)],
    quiet: bool,
    options: &session::Options,
) -> Result<()> {
    if engines.len() > 1 && !quiet {
        say(&format!(
            "tracer: {} engines: {}",
            engines.len(),
            engines
                .iter()
                .map(|e| format!("{} (pid {}, {})", e.tag(), e.process.pid, e.process.title))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for dir in trace_engines(engines, out_dir, options)? {
        add_labels(&dir, labels)?;
    }
    // The CSVs are the product; a failed export is reported, not fatal.
    match crate::offline::perfetto::export_into(out_dir.path(), out_dir, "trace.json") {
        Ok(exported) if !quiet => say(&format!(
            "tracer: wrote {} (open it in ui.perfetto.dev)",
            exported.path.display()
        )),
        Ok(_) => {}
        Err(e) => say(&format!("tracer: warning: trace.json not written: {e:#}")),
    }
    Ok(())
}

/// `tracer run`: start `command` (as the invoking user under sudo, unless `as_root`), wait
/// for its engines, trace them, stop what is left.
#[allow(clippy::too_many_arguments)]
pub fn run(
    command: &[String],
    as_root: bool,
    wait: Duration,
    out_dir: &OutDir,
    labels: &[(String, String)],
    quiet: bool,
    options: &session::Options,
) -> Result<()> {
    let mut launched = Launched::start(command, as_root)?;
    if !quiet {
        say(&format!(
            "tracer: started {} (pid {}, {}); waiting for vLLM's engine loop",
            command.join(" ").escape_debug(),
            launched.child.id(),
            launched.user
        ));
    }
    let engines = wait_for_engines(&mut launched, wait)?;
    let traced = trace_and_finish(&engines, out_dir, labels, quiet, options);
    let status = launched.stop()?;
    if !quiet {
        say(&format!("tracer: the command ended ({status})"));
    }
    traced
}
