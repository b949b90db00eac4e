//! `tracer run -o DIR -- <command…>`: start a command (`vllm serve …`, a script that starts
//! the server and a benchmark client, the fixture engine), wait until vLLM has loaded and its
//! engine loop runs, and trace every engine from then on; and [`trace_engines`], which
//! `attach` shares: one trace per engine, data-parallel engines side by side.
//!
//! The command runs in its own process group, so everything it starts can be stopped
//! together: when the trace ends (the engines exited, Ctrl-C, `--duration`), whatever is
//! left of the command gets SIGTERM, then SIGKILL after [`STOP_GRACE`].

use std::{
    collections::HashMap,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    discover::{self, Target},
    engines::{self, Engine, Role},
    resolve, trace,
};

/// How often the command's processes are searched for an engine while vLLM loads.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long the command gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// Set by SIGINT/SIGTERM/SIGHUP while waiting for the engine (the trace has its own handling).
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A started command and its process group.
pub struct Launched {
    pub child: Child,
}

impl Launched {
    pub fn start(command: &[String]) -> Result<Self> {
        let (program, args) = command.split_first().context("no command given after --")?;
        let child = Command::new(program)
            .args(args)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        Ok(Self { child })
    }

    /// SIGTERM to the command's process group if any of it still runs, SIGKILL after
    /// [`STOP_GRACE`]. Returns the command's exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let pgid = self.child.id() as libc::pid_t;
        if let Some(status) = self.child.try_wait()? {
            // The leader is gone; its children may not be.
            // SAFETY: kill(2) on the group we created; ESRCH (nothing left) is fine.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            return Ok(status);
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
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
    // Discovery reads the interpreter's ELF file: once per process image, not per poll. A
    // process that execs (a pyenv shim, `sh -c '…; exec python …'`) is looked at again, and
    // so is one whose look failed a while ago (looked at before its interpreter was up).
    let mut targets: HashMap<u32, Look> = HashMap::new();
    let mut found: Vec<Engine> = Vec::new();
    let mut last_why: HashMap<u32, String> = HashMap::new();
    loop {
        if STOP.load(Ordering::SeqCst) {
            launched.stop()?;
            bail!("interrupted while waiting for vLLM's engine to start");
        }
        if let Some(status) = launched.child.try_wait()? {
            bail!(
                "the command exited ({status}) before a vLLM engine loop started{}",
                why_text(&last_why)
            );
        }
        let tree = engines::process_tree();
        let processes = engines::descendants(&tree, root);
        let expected = processes
            .iter()
            .filter(|p| matches!(p.role(), Some((Role::Engine, _))))
            .count()
            .max(1);
        for p in processes {
            if found.iter().any(|e| e.process.pid == p.pid) {
                continue;
            }
            let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid)).ok();
            let stale = targets.get(&p.pid).is_none_or(|look| {
                look.exe != exe || (look.target.is_none() && look.at.elapsed() > RETRY_FAILED)
            });
            if stale {
                let target = discover::discover(p.pid)
                    .map_err(|e| last_why.insert(p.pid, format!("{} {}: {e}", p.pid, p.title)))
                    .ok();
                let at = Instant::now();
                targets.insert(p.pid, Look { exe, at, target });
            }
            let Some(t) = targets.get(&p.pid).and_then(|look| look.target.as_ref()) else {
                continue;
            };
            match resolve::resolve(t, None) {
                Ok(resolved) => {
                    let target = targets
                        .remove(&p.pid)
                        .and_then(|look| look.target)
                        .expect("checked above");
                    found.push(Engine {
                        dp_rank: p.role().and_then(|(_, rank)| rank),
                        process: p.clone(),
                        target,
                        resolved,
                    });
                }
                Err(e) => {
                    last_why.insert(p.pid, format!("{} {}: {e}", p.pid, p.title));
                }
            }
        }
        if found.len() >= expected {
            return Ok(engines::sorted(found));
        }
        if started.elapsed() > timeout {
            launched.stop()?;
            bail!(
                "no vLLM engine loop started within {:.0} s (raise --wait){}",
                timeout.as_secs_f64(),
                why_text(&last_why)
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// How long a failed discovery stands before the process is looked at again.
const RETRY_FAILED: Duration = Duration::from_millis(500);

/// What discovery made of a process image.
struct Look {
    /// `/proc/PID/exe` then: another one means the process exec'd.
    exe: Option<std::path::PathBuf>,
    at: Instant,
    target: Option<Target>,
}

fn why_text(why: &HashMap<u32, String>) -> String {
    if why.is_empty() {
        return String::new();
    }
    let mut lines: Vec<&String> = why.values().collect();
    lines.sort();
    format!(
        "; last look at its Python processes:\n{}",
        lines
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Traces `engines`, one [`trace::run`] each: one engine writes into `out_dir`, several
/// into `out_dir/<tag>/` (`dp0`, `dp1`, … or `engine-<pid>`), concurrently. `options`
/// builds the trace options of an engine and its directory.
pub fn trace_engines(
    engines: &[Engine],
    out_dir: &Path,
    options: &(dyn Fn(&Engine, PathBuf) -> trace::Options + Sync),
) -> Result<()> {
    if let [engine] = engines {
        trace::run(options(engine, out_dir.to_path_buf()))?;
        return Ok(());
    }
    let results: Vec<(String, Result<()>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = engines
            .iter()
            .map(|engine| {
                let dir = out_dir.join(engine.tag());
                let options = options(engine, dir);
                (
                    engine.tag(),
                    scope.spawn(move || trace::run(options).map(|_| ())),
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
    Ok(())
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
fn add_labels(dir: &Path, labels: &[(String, String)]) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let path = dir.join("run.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
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
    std::fs::write(&path, serde_json::to_string_pretty(&info)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Traces `engines` into `out_dir`, then adds the labels and writes trace.json.
pub fn trace_and_finish(
    engines: &[Engine],
    out_dir: &Path,
    labels: &[(String, String)],
    quiet: bool,
    options: &(dyn Fn(&Engine, PathBuf) -> trace::Options + Sync),
) -> Result<()> {
    if engines.len() > 1 && !quiet {
        trace::say(&format!(
            "tracer: {} engines: {}",
            engines.len(),
            engines
                .iter()
                .map(|e| format!("{} (pid {}, {})", e.tag(), e.process.pid, e.process.title))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    trace_engines(engines, out_dir, options)?;
    for dir in crate::report::load::engine_dirs(out_dir)? {
        add_labels(&dir, labels)?;
    }
    // The CSVs are the product; a failed export is reported, not fatal.
    match crate::perfetto::export(out_dir, None) {
        Ok(exported) if !quiet => trace::say(&format!(
            "tracer: wrote {} (open it in ui.perfetto.dev)",
            exported.path.display()
        )),
        Ok(_) => {}
        Err(e) => trace::say(&format!("tracer: warning: trace.json not written: {e:#}")),
    }
    Ok(())
}

/// `tracer run`: start `command`, wait for its engines, trace them, stop what is left.
pub fn run(
    command: &[String],
    wait: Duration,
    out_dir: &Path,
    labels: &[(String, String)],
    quiet: bool,
    options: &(dyn Fn(&Engine, PathBuf) -> trace::Options + Sync),
) -> Result<()> {
    let mut launched = Launched::start(command)?;
    if !quiet {
        trace::say(&format!(
            "tracer: started {} (pid {}); waiting for vLLM's engine loop",
            command.join(" "),
            launched.child.id()
        ));
    }
    let engines = wait_for_engines(&mut launched, wait)?;
    let traced = trace_and_finish(&engines, out_dir, labels, quiet, options);
    let status = launched.stop()?;
    if !quiet {
        trace::say(&format!("tracer: the command ended ({status})"));
    }
    traced
}
