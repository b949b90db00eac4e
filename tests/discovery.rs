//! Finding and checking engines: `doctor`, `probes`, and the engines found from any process
//! of a deployment (a fake one whose processes carry vLLM's process titles, with two
//! data-parallel engines, traced together by `attach`).

mod support;

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{trace_events::validate_trace, *};
use tracer::schema::rows::StepRow;

// ---------------------------------------------------------------------------------------
// doctor and probes
// ---------------------------------------------------------------------------------------

#[test]
fn doctor_passes_here_and_explains_a_bad_pid() {
    let stdout = tracer_ok(&["doctor"]);
    for check in [
        "kernel",
        "privileges",
        "bpf",
        "watchpoints",
        "perf_event_paranoid",
    ] {
        assert!(stdout.contains(&format!("ok   {check}")), "{stdout}");
    }
    let sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let (status, stdout, _) = tracer(&["doctor", "--pid", &sleeper.id().to_string()]);
    assert!(!status.success());
    assert!(
        stdout.contains("FAIL engine") && stdout.contains("not a CPython process"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fix: Pass the pid of `vllm serve`"),
        "{stdout}"
    );
    kill_and_wait(sleeper);
}

#[test]
fn doctor_unprivileged_fails_with_the_fix() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            tracer_bin(),
            "doctor",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("FAIL privileges"), "{stdout}");
    assert!(stdout.contains("Run with sudo"), "{stdout}");
}

/// `python -c CODE` printing `id(EngineCore.step.__code__)` (the code object's address in
/// CPython) and `type(code).__basicsize__`, then running the fixture engine in-process.
fn fixture_with_code_address(python: &str, args: &[&str]) -> (std::process::Child, u64, u64) {
    let script = root().join("tests/fixtures/engine/run_engine.py");
    let code = format!(
        "import sys, runpy\n\
         sys.path.insert(0, {dir:?})\n\
         from vllm.v1.engine.core import EngineCore\n\
         c = EngineCore.step.__code__\n\
         print('code', id(c), type(c).__basicsize__, flush=True)\n\
         sys.argv = [{script:?}] + sys.argv[1:]\n\
         runpy.run_path({script:?}, run_name='__main__')\n",
        dir = script.parent().unwrap().to_str().unwrap(),
        script = script.to_str().unwrap(),
    );
    let mut child = Command::new(python)
        .arg("-c")
        .arg(code)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    let line = lines.wait_for("code ", Duration::from_secs(30));
    let mut parts = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse::<u64>().unwrap());
    let (addr, basicsize) = (parts.next().unwrap(), parts.next().unwrap());
    lines.wait_for("ready pid=", Duration::from_secs(60));
    (child, addr, basicsize)
}

#[test]
fn probes_lists_the_watchpoints_at_the_code_objects_address() {
    for python in [pyenv("3.11.7"), pyenv("3.12.1"), pyenv("3.13.0")] {
        let (child, addr, basicsize) = fixture_with_code_address(&python, &["--execute-ms", "1"]);
        let pid = child.id().to_string();
        let listed: Value =
            serde_json::from_str(&tracer_ok(&["probes", "--pid", &pid, "--json"])).unwrap();
        let engine = &listed[0];
        assert_eq!(listed.as_array().unwrap().len(), 1);
        assert_eq!(engine["pid"], child.id());
        assert_eq!(engine["vllm_version"], "0.0.0+fixture");
        assert_eq!(engine["code_object"], format!("{addr:#x}"), "{python}");
        let watches = engine["watches"].as_array().unwrap();
        assert_eq!(watches.len(), 4);
        let marks: Vec<&str> = watches
            .iter()
            .map(|w| w["mark"].as_str().unwrap())
            .collect();
        assert_eq!(
            marks,
            [
                "step entry",
                "after schedule",
                "after execute",
                "after update"
            ]
        );
        // The bytecode starts right after the code object's fixed part.
        for w in watches {
            let offset = w["bytecode_offset"].as_u64().unwrap();
            assert_eq!(
                w["address"],
                format!("{:#x}", addr + basicsize + offset),
                "{python}"
            );
        }
        let text = tracer_ok(&["probes", "--pid", &pid]);
        assert!(
            text.contains("4 hardware watchpoints") && text.contains(&format!("{addr:#x}")),
            "{text}"
        );
        let doctor = tracer_ok(&["doctor", "--pid", &pid]);
        assert!(
            doctor.contains("All checks passed") && doctor.contains("vLLM 0.0.0+fixture"),
            "{doctor}"
        );
        kill_and_wait(child);
    }
}

// ---------------------------------------------------------------------------------------
// Engine discovery on a fake deployment with vLLM's process titles.
// ---------------------------------------------------------------------------------------

/// An "API server" (`VLLM::APIServer_0`) with `engines` EngineCore children
/// (`VLLM::EngineCore_DP<n>`, each the fixture engine), each with a sleeping worker child
/// (`VLLM::Worker_DP<n>_TP0`). Titles are set with `exec -a`, which writes argv[0] as
/// setproctitle does. The whole process group is killed on drop.
struct Deployment {
    api: ProcessGroup,
    /// Its output, drained so that the children never block on a full pipe.
    _output: Lines,
    /// (engine pid, worker pid) per rank.
    ranks: Vec<(u32, u32)>,
}

impl Deployment {
    fn start(engines: usize, fixture_args: &[&str]) -> Self {
        // The interpreter's path is passed explicitly: under `exec -a` a pyenv Python cannot
        // find itself from argv[0], so `sys.executable` is empty in the children. Each line
        // is one write(2): under PYTHONUNBUFFERED print() writes text and newline apart, and
        // two engines' lines interleaved ("worker 1 27814worker 0 27815").
        let python = pyenv("3.11.7");
        let script = root().join("tests/fixtures/engine/run_engine.py");
        let engine_code = format!(
            "import os, runpy, subprocess, sys\n\
             rank = int(sys.argv[1])\n\
             w = subprocess.Popen(['bash', '-c', 'exec -a VLLM::Worker_DP%d_TP0 \"$0\" -c \"import time; time.sleep(600)\"' % rank, {python:?}])\n\
             os.write(1, f'worker {{rank}} {{w.pid}}\\n'.encode())\n\
             sys.argv = [{script:?}] + sys.argv[2:]\n\
             runpy.run_path({script:?}, run_name='__main__')\n",
            script = script.to_str().unwrap()
        );
        let api_code = format!(
            "import os, subprocess, sys\n\
             engine_code, args = sys.argv[1], sys.argv[2:]\n\
             ps = [subprocess.Popen(['bash', '-c', 'exec -a VLLM::EngineCore_DP%d \"$0\" -c \"$1\" %d \"${{@:2}}\"' % (r, r), {python:?}, engine_code] + args) for r in range({engines})]\n\
             print('api', os.getpid(), flush=True)\n\
             [p.wait() for p in ps]\n"
        );
        let mut api = ProcessGroup(
            Command::new("bash")
                .args([
                    "-c",
                    "exec -a VLLM::APIServer_0 \"$0\" -c \"$1\" \"${@:2}\"",
                    &python,
                    &api_code,
                    &engine_code,
                ])
                .args(fixture_args)
                .stdout(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap(),
        );
        let mut output = Lines::new(api.0.stdout.take().unwrap());
        let mut workers = BTreeMap::new();
        let mut engine_pids = BTreeMap::new();
        while engine_pids.len() < engines || workers.len() < engines {
            let line = output.next_within(Duration::from_secs(60));
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() == Some(&"worker") {
                let number = |i: usize| -> u32 {
                    fields[i]
                        .parse()
                        .unwrap_or_else(|_| panic!("worker line {line:?}"))
                };
                workers.insert(number(1), number(2));
            } else if let Some(pid) = line.strip_prefix("ready pid=") {
                let pid: u32 = pid.split_whitespace().next().unwrap().parse().unwrap();
                let rank = title_rank(pid);
                engine_pids.insert(rank, pid);
            }
        }
        let ranks = (0..engines as u32)
            .map(|r| (engine_pids[&r], workers[&r]))
            .collect();
        Self {
            api,
            _output: output,
            ranks,
        }
    }
}

/// The DP rank in a process's `VLLM::EngineCore_DP<n>` title.
fn title_rank(pid: u32) -> u32 {
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    let title = cmdline.split('\0').next().unwrap();
    title.rsplit_once("_DP").unwrap().1.parse().unwrap()
}

fn probed_pids(pid: u32) -> Vec<(u32, String)> {
    let listed: Value =
        serde_json::from_str(&tracer_ok(&["probes", "--pid", &pid.to_string(), "--json"])).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pid"].as_u64().unwrap() as u32,
                e["tag"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn engines_are_found_from_the_api_server_an_engine_or_a_worker() {
    let _serial = exclusive();
    let d = Deployment::start(2, &["--execute-ms", "2"]);
    let (e0, e1) = (d.ranks[0].0, d.ranks[1].0);
    let both = vec![(e0, "dp0".to_owned()), (e1, "dp1".to_owned())];
    assert_eq!(
        probed_pids(d.api.id()),
        both,
        "from the API server: every DP engine"
    );
    assert_eq!(
        probed_pids(e1),
        [(e1, "dp1".to_owned())],
        "an engine: itself"
    );
    assert_eq!(
        probed_pids(d.ranks[0].1),
        [(e0, "dp0".to_owned())],
        "a worker: its engine"
    );
}

#[test]
fn attach_to_the_api_server_traces_each_data_parallel_engine() {
    let _serial = exclusive();
    let d = Deployment::start(2, &["--execute-ms", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    tracer_ok(&[
        "attach",
        "--pid",
        &d.api.id().to_string(),
        "-o",
        s(&out),
        "-d",
        "1.5",
        "--label",
        "case=dp",
    ]);
    for (rank, (engine, _)) in d.ranks.iter().enumerate() {
        let engine_dir = out.join(format!("dp{rank}"));
        let steps: Vec<StepRow> = read_csv(&engine_dir.join("steps.csv"));
        assert!(steps.len() > 200, "dp{rank}: {} steps", steps.len());
        assert!(steps.iter().all(|s| s.pid == *engine));
        let run = read_run_json(&engine_dir);
        assert_eq!(run["labels"]["case"], "dp");
    }
    let trace = read_json(&out.join("trace.json"));
    validate_trace(&trace);
    let engines: Vec<&Value> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["name"] == "process_name"
                && e["args"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("vLLM engine")
        })
        .collect();
    assert_eq!(engines.len(), 2);
    let summary = read_json(&{
        tracer_ok(&["report", s(&out), "-q"]);
        out.join("report/summary.json")
    });
    assert_eq!(summary["engines"], 2);
}
