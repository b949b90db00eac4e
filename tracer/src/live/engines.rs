//! From any pid of a vLLM deployment to the engine process(es) to trace.
//!
//! Users have the pid of `vllm serve` (the API server), an EngineCore or a GPU worker. The
//! engine loop runs in the EngineCore processes (one per data-parallel rank), or in the
//! server itself when it runs the engine in-process. Process titles say which is which on
//! vLLM ≥ 0.10, but they are a hint only: an engine is a process in which [`resolve`] finds
//! the engine's code *and* a thread running its busy loop.
//!
//! Search order: the pid itself; its nearest engine ancestor (a worker's EngineCore); its
//! engine descendants (the server's EngineCores); then every engine under the topmost
//! Python ancestor (a second API server's sibling engines).

use std::{collections::BTreeMap, fs, path::Path};

use crate::{
    live::{
        discover::{self, Target},
        resolve::{self, Resolved},
    },
    text::printable,
};

/// What a vLLM process does, as its title says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ApiServer,
    Engine,
    Worker,
    Coordinator,
}

/// vLLM's process titles (`setproctitle`, `<prefix>::<name>`, prefix `VLLM` unless
/// `VLLM_PROCESS_NAME_PREFIX` is set), as data: name prefix, role, and the marker before a
/// data-parallel rank. None in 0.8.5; `VLLM::EngineCore`, `VLLM::DPEngineCore_<rank>` in
/// 0.10; `EngineCore`, `EngineCore_DP<rank>`, `APIServer_<i>`, `Worker[_DP<r>][_TP<r>]`,
/// `DPCoordinator` from 0.11 (read in the 0.11.0 and 0.33.0 wheels).
const TITLES: &[(&str, Role, Option<&str>)] = &[
    ("DPEngineCore", Role::Engine, Some("DPEngineCore_")),
    ("EngineCore", Role::Engine, Some("_DP")),
    ("APIServer", Role::ApiServer, None),
    ("DPCoordinator", Role::Coordinator, None),
    ("VllmWorker", Role::Worker, None),
    ("Worker", Role::Worker, None),
];

/// A process as `/proc` shows it.
#[derive(Clone, Debug)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// The command line, which `setproctitle` overwrites with the title (`VLLM::EngineCore`);
    /// the comm name for processes without one. Escaped for printing ([`printable`]): the
    /// process chooses it, terminal escape sequences included.
    pub title: String,
    pub exe: String,
}

impl Process {
    pub fn read(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let command = String::from_utf8_lossy(&cmdline)
            .split('\0')
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_owned();
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Some(Self {
            pid,
            ppid,
            title: printable(if command.is_empty() { &comm } else { &command }).into_owned(),
            exe,
        })
    }

    /// Role and data-parallel rank from the title.
    pub fn role(&self) -> Option<(Role, Option<u32>)> {
        title_role(&self.title)
    }

    /// Part of a Python deployment: a Python interpreter, or a process with a vLLM title.
    fn is_pythonish(&self) -> bool {
        let exe_name = Path::new(&self.exe)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        exe_name.starts_with("python") || self.role().is_some()
    }
}

/// Role and data-parallel rank of a title such as `VLLM::EngineCore_DP1`.
pub fn title_role(title: &str) -> Option<(Role, Option<u32>)> {
    let name = title.split_whitespace().next()?;
    let name = name.rsplit_once("::").map_or(name, |(_, n)| n);
    let &(_, role, rank_marker) = TITLES.iter().find(|(p, ..)| name.starts_with(p))?;
    let rank = rank_marker.and_then(|marker| {
        let digits = &name[name.find(marker)? + marker.len()..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    });
    Some((role, rank))
}

/// A worker's place in the deployment, from its title: `VLLM::Worker_TP1` → `TP1`,
/// `VLLM::Worker_DP1_PP0_TP3` → `DP1_PP0_TP3` (vLLM 0.10+ names the parallel groups a worker
/// belongs to with more than one member: DP, PP, PCP, TP, DCP, EP, in that order). `None`
/// for a bare `Worker` (before its groups are set up), or a process that is not a worker.
pub fn worker_rank(title: &str) -> Option<String> {
    if title_role(title)?.0 != Role::Worker {
        return None;
    }
    let name = title.split_whitespace().next()?;
    let name = name.rsplit_once("::").map_or(name, |(_, n)| n);
    let ranks: Vec<&str> = name
        .split(['_', '-', ' '])
        .skip(1)
        .filter(|part| {
            let digits = part.trim_start_matches(|c: char| c.is_ascii_uppercase());
            part.len() <= 16
                && digits.len() < part.len()
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
        })
        // The process chose its title: a few groups, at most ~140 bytes in every row.
        .take(8)
        .collect();
    (!ranks.is_empty()).then(|| ranks.join("_"))
}

/// An engine process found, resolved and ready to plan.
#[derive(Debug)]
pub struct Engine {
    pub process: Process,
    pub target: Target,
    pub resolved: Resolved,
    /// Data-parallel rank from the title, if it has one.
    pub dp_rank: Option<u32>,
}

impl Engine {
    /// A short name for outputs and status lines: `dp<rank>`, else `engine-<pid>`.
    pub fn tag(&self) -> String {
        match self.dp_rank {
            Some(rank) => format!("dp{rank}"),
            None => format!("engine-{}", self.process.pid),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnginesError {
    #[error(transparent)]
    Discover(#[from] discover::DiscoverError),
    #[error("no vLLM engine loop found from pid {pid}; looked at:\n{looked_at}")]
    NoEngine { pid: u32, looked_at: String },
}

/// Why a process is not an engine (or that it is one).
pub type Verdict = Result<Box<Engine>, String>;

/// Checks one process: an engine is a CPython process in which the engine's code and a
/// thread in its busy loop resolve.
pub fn check(process: &Process, tid: Option<u32>) -> Verdict {
    check_with(process, tid, true)
}

/// [`check`], with or without the (slow) search for an in-process engine.
fn check_with(process: &Process, tid: Option<u32>, inproc: bool) -> Verdict {
    let target = discover::discover(process.pid).map_err(|e| e.to_string())?;
    let resolved = resolve::resolve_with(&target, tid, inproc).map_err(|e| e.to_string())?;
    Ok(Box::new(Engine {
        dp_rank: process.role().and_then(|(_, rank)| rank),
        process: process.clone(),
        target,
        resolved,
    }))
}

/// The parent → children map of every process now.
pub fn process_tree() -> BTreeMap<u32, Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(Process::read)
        .map(|p| (p.pid, p))
        .collect()
}

/// `root` and everything below it, parents before children.
pub fn descendants(tree: &BTreeMap<u32, Process>, root: u32) -> Vec<&Process> {
    let mut out: Vec<&Process> = tree.get(&root).into_iter().collect();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i].pid;
        out.extend(
            tree.values()
                .filter(|p| p.ppid == parent && p.pid != parent),
        );
        i += 1;
    }
    out
}

/// The engine process(es) to trace for `pid` (see the module doc for the order). `tid`
/// names the engine thread when the pid itself is the engine.
pub fn find(pid: u32, tid: Option<u32>) -> Result<Vec<Engine>, EnginesError> {
    let tree = process_tree();
    let Some(start) = tree.get(&pid) else {
        // Gives the same clear errors as `attach` (no such process, permissions).
        discover::discover(pid)?;
        return Err(discover::DiscoverError::NoSuchProcess(pid).into());
    };
    let mut looked_at = Vec::new();
    let mut verdicts: BTreeMap<u32, bool> = BTreeMap::new();
    let mut try_one = |p: &Process, tid: Option<u32>, looked_at: &mut Vec<String>| {
        if verdicts.contains_key(&p.pid) {
            return None;
        }
        // The process itself may run the engine in-process (searched last, below).
        let verdict = check_with(p, tid, false);
        verdicts.insert(p.pid, verdict.is_ok());
        match verdict {
            Ok(engine) => Some(engine),
            Err(why) => {
                looked_at.push(format!("  {} {}: {why}", p.pid, p.title));
                None
            }
        }
    };
    // A non-Python pid gets discover's own error ("is not a CPython process"), unless a
    // Python process around it is the engine.
    if let Some(engine) = try_one(start, tid, &mut looked_at) {
        return Ok(vec![*engine]);
    }
    let mut ancestors = Vec::new();
    let mut at = start;
    while let Some(parent) = tree.get(&at.ppid).filter(|p| p.pid > 1 && p.is_pythonish()) {
        ancestors.push(parent);
        at = parent;
    }
    for ancestor in &ancestors {
        if let Some(engine) = try_one(ancestor, None, &mut looked_at) {
            return Ok(vec![*engine]);
        }
    }
    let top = ancestors.last().map_or(pid, |p| p.pid);
    for root in [pid, top] {
        let engines: Vec<Engine> = descendants(&tree, root)
            .into_iter()
            .filter(|p| p.is_pythonish())
            .filter_map(|p| try_one(p, None, &mut looked_at))
            .map(|e| *e)
            .collect();
        if !engines.is_empty() {
            return Ok(sorted(engines));
        }
    }
    // Last: an engine in the pid's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0), found
    // only while it runs steps.
    if start.is_pythonish() {
        match check_with(start, tid, true) {
            Ok(engine) => return Ok(vec![*engine]),
            Err(why) => looked_at[0] = format!("  {} {}: {why}", start.pid, start.title),
        }
    }
    if !start.is_pythonish() && looked_at.len() == 1 {
        // Nothing Python around it: say what is wrong with the pid itself.
        discover::discover(pid)?;
    }
    Err(EnginesError::NoEngine {
        pid,
        looked_at: looked_at.join("\n"),
    })
}

/// Data-parallel rank order, then pid.
pub fn sorted(mut engines: Vec<Engine>) -> Vec<Engine> {
    engines.sort_by_key(|e| (e.dp_rank.unwrap_or(u32::MAX), e.process.pid));
    engines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_of_each_release() {
        assert_eq!(title_role("VLLM::EngineCore"), Some((Role::Engine, None)));
        assert_eq!(
            title_role("VLLM::EngineCore_DP3"),
            Some((Role::Engine, Some(3)))
        );
        assert_eq!(
            title_role("VLLM::DPEngineCore_12"),
            Some((Role::Engine, Some(12)))
        );
        assert_eq!(
            title_role("MYPREFIX::APIServer_1"),
            Some((Role::ApiServer, None))
        );
        assert_eq!(
            title_role("VLLM::Worker_DP1_TP2"),
            Some((Role::Worker, None))
        );
        assert_eq!(
            title_role("VLLM::DPCoordinator"),
            Some((Role::Coordinator, None))
        );
        assert_eq!(title_role("/usr/bin/python3 -m vllm.entrypoints"), None);
        assert_eq!(title_role(""), None);
    }

    #[test]
    fn worker_ranks_from_titles() {
        assert_eq!(worker_rank("VLLM::Worker_TP1").as_deref(), Some("TP1"));
        assert_eq!(
            worker_rank("VLLM::Worker_DP1_PP0_TP3").as_deref(),
            Some("DP1_PP0_TP3")
        );
        assert_eq!(
            worker_rank("MYPREFIX::Worker_TP12_EP3 junk").as_deref(),
            Some("TP12_EP3")
        );
        assert_eq!(worker_rank("VLLM::Worker"), None);
        assert_eq!(worker_rank("VLLM::EngineCore_DP1"), None);
        assert_eq!(worker_rank("python3 worker.py"), None);
        assert_eq!(worker_rank("VLLM::Worker_TPx"), None);
        let long = format!("VLLM::Worker{}", "_TP1".repeat(10_000));
        assert_eq!(worker_rank(&long).unwrap().len(), 8 * 4 - 1);
    }

    #[test]
    fn own_process_is_read() {
        let me = Process::read(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        let tree = process_tree();
        let parent = tree.get(&me.ppid).unwrap();
        assert!(descendants(&tree, parent.pid)
            .iter()
            .any(|p| p.pid == me.pid));
    }
}
