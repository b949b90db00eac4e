//! CUDA probes on the fixture engine driving a fake libcuda (tests/fixtures/fakecuda), so
//! they are tested on every CI run: per-step counts must equal what the fixture called,
//! and each traced sync or copy time must lie between the fake function's own body time
//! and the time around the fixture's call (a probe fires after the call starts and before
//! it returns, so nothing else is possible).

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use support::*;

/// Builds the fake libcuda once per test run, named as the tracer looks for it.
fn fake_libcuda() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fakecuda");
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libcuda.so.1");
        let out = Command::new("gcc")
            .args([
                "-O2",
                "-fPIC",
                "-shared",
                "-fno-ipa-icf",
                "-Wall",
                "-Werror",
            ])
            .args(["-Wno-unused-parameter", "-o"])
            .arg(&lib)
            .arg(root().join("tests/fixtures/fakecuda/fakecuda.c"))
            .output()
            .expect("running gcc");
        assert!(
            out.status.success(),
            "building the fake libcuda failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lib
    })
}

/// The CUDA columns of steps.csv (other columns are ignored).
#[derive(Debug, serde::Deserialize)]
struct CudaStep {
    start_ns: u64,
    execute_ns: u64,
    cuda_launches: Option<u64>,
    cuda_graph_launches: Option<u64>,
    cuda_syncs: Option<u64>,
    cuda_sync_ns: Option<u64>,
    cuda_d2h_copies: Option<u64>,
    cuda_d2h_ns: Option<u64>,
    exec_launch_host_ns: Option<u64>,
    exec_gpu_wait_ns: Option<u64>,
}

/// A row of the fixture's CUDA truth (fake_cuda.py).
#[derive(Debug, serde::Deserialize)]
struct CudaTruth {
    launches: u64,
    graph_launches: u64,
    syncs: u64,
    sync_body_ns: u64,
    sync_call_ns: u64,
    d2h_copies: u64,
    d2h_body_ns: u64,
    d2h_call_ns: u64,
    outside_launches: u64,
}

/// Slack for comparing `bpf_ktime_get_ns` with the fixture's `clock_gettime` reads: the
/// same CLOCK_MONOTONIC, read through two code paths.
const CLOCK_SLACK_NS: u64 = 1_000;

/// A finished run: the fixture's truth and what the tracer wrote.
struct Run {
    truth: Vec<CudaTruth>,
    steps: Vec<CudaStep>,
    run: serde_json::Value,
}

/// Runs `steps` steps of the fixture with `--fake-cuda` and `fixture_args`, traced with
/// `tracer_args`, from the first measured step to the fixture's exit.
fn traced_run(steps: usize, fixture_args: &[&str], tracer_args: &[&str]) -> Run {
    traced_run_in(
        &tempfile::tempdir().unwrap(),
        steps,
        fixture_args,
        tracer_args,
        |pid| pid,
    )
}

/// [`traced_run`] in `dir`, attaching to the pid `pick` chooses given the fixture's.
fn traced_run_in(
    dir: &tempfile::TempDir,
    steps: usize,
    fixture_args: &[&str],
    tracer_args: &[&str],
    pick: impl Fn(u32) -> u32,
) -> Run {
    let truth_path = dir.path().join("cuda_truth.csv");
    let out = dir.path().join("out");
    let steps_arg = steps.to_string();
    let mut args = vec![
        "--wait-go",
        "--steps",
        &steps_arg,
        "--execute-ms",
        "0.3",
        "--fake-cuda",
        fake_libcuda().to_str().unwrap(),
        "--fake-cuda-truth",
        truth_path.to_str().unwrap(),
    ];
    args.extend(fixture_args);
    let mut fixture = Fixture::spawn(&pyenv("3.11.7"), &args);
    let pid = pick(fixture.pid).to_string();
    let mut tracer_argv = vec!["attach", "--pid", &pid, "-o", out.to_str().unwrap()];
    tracer_argv.extend(tracer_args);
    let mut tracer = Tracer::spawn(&tracer_argv);
    tracer
        .stderr
        .wait_for("tracer: attached", Duration::from_secs(30));
    fixture.go();
    assert!(fixture.wait().success());
    let (status, stderr) = tracer.finish(Duration::from_secs(30));
    assert!(status.success(), "tracer failed: {stderr:?}");
    let run = Run {
        truth: read_csv(&truth_path),
        steps: read_csv(&out.join("steps.csv")),
        run: read_run_json(&out),
    };
    assert_eq!(run.truth.len(), steps);
    assert_eq!(run.steps.len(), steps, "steps lost or invented");
    assert_eq!(run.run["cuda"]["ring_buffer_drops"], 0);
    assert_eq!(run.run["cuda"]["foreign_calls"], 0);
    run
}

/// Per step: counts exactly as called; sync and copy times between body and call times.
fn check_steps(run: &Run, label: &str) {
    let mut over_body = Vec::new();
    for (i, (t, s)) in run.truth.iter().zip(&run.steps).enumerate() {
        assert_eq!(
            (
                s.cuda_launches,
                s.cuda_graph_launches,
                s.cuda_syncs,
                s.cuda_d2h_copies
            ),
            (
                Some(t.launches),
                Some(t.graph_launches),
                Some(t.syncs),
                Some(t.d2h_copies)
            ),
            "{label}: step {i} counts"
        );
        for (what, traced, body, call) in [
            ("sync", s.cuda_sync_ns, t.sync_body_ns, t.sync_call_ns),
            ("d2h", s.cuda_d2h_ns, t.d2h_body_ns, t.d2h_call_ns),
        ] {
            let traced = traced.unwrap();
            assert!(
                body <= traced + CLOCK_SLACK_NS && traced <= call + CLOCK_SLACK_NS,
                "{label}: step {i} {what}: traced {traced} ns not within [{body}, {call}]"
            );
            over_body.push(traced as i64 - body as i64);
        }
    }
    eprintln!(
        "{label}: traced − body time per step (sync and d2h): p50 {} ns, p99 {} ns, max {} ns",
        percentile(&mut over_body, 50.0),
        percentile(&mut over_body, 99.0),
        percentile(&mut over_body, 100.0)
    );
}

#[test]
fn fake_cuda_calls_fold_into_each_step() {
    let _serial = exclusive();
    const STEPS: usize = 500;
    let run = traced_run(STEPS, &["--fake-cuda-outside", "2"], &[]);
    check_steps(&run, "in-process");
    // One process, so the execute split is exact: blocked time is the sync and the copy.
    for (i, (t, s)) in run.truth.iter().zip(&run.steps).enumerate() {
        let (host, wait) = (s.exec_launch_host_ns.unwrap(), s.exec_gpu_wait_ns.unwrap());
        assert_eq!(host + wait, s.execute_ns, "step {i}");
        assert!(
            t.sync_body_ns + t.d2h_body_ns <= wait + 2 * CLOCK_SLACK_NS
                && wait <= t.sync_call_ns + t.d2h_call_ns + 2 * CLOCK_SLACK_NS,
            "step {i}: gpu wait {wait} ns"
        );
    }
    let cuda = &run.run["cuda"];
    // Every driver-API name of the table was called (the fixture rotates through them).
    let functions = cuda["processes"][0]["functions"].as_array().unwrap();
    assert_eq!(
        functions.len(),
        tracer::live::cuda::DRIVER_API.len(),
        "{cuda}"
    );
    // Launches in the busy loop between steps are counted outside steps, not dropped.
    let outside: u64 = run.truth.iter().map(|t| t.outside_launches).sum();
    assert_eq!(outside, 2 * STEPS as u64);
    assert_eq!(cuda["outside_steps"]["launches"], outside);
    assert_eq!(cuda["outside_steps"]["syncs"], 0);
    let in_steps: u64 = run.truth.iter().map(|t| t.launches).sum();
    assert_eq!(cuda["in_steps"]["launches"], in_steps);
    assert_eq!(cuda["late_calls"], 0);
}

/// Like vLLM with tensor parallelism: the calls come from child processes of the engine.
#[test]
fn worker_processes_calls_are_folded_into_the_engine_steps() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let run = traced_run_in(&dir, 300, &["--fake-cuda-workers", "2"], &[], |pid| pid);
    check_steps(&run, "2 workers");
    let processes = run.run["cuda"]["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 3, "engine and 2 workers: {processes:?}");
    assert!(
        processes.iter().all(|p| p["error"].is_null()),
        "{processes:?}"
    );
    // Workers without a vLLM title: a row each per step, named by pid, adding up to the step.
    let ranks: Vec<RankRow> = read_csv(&dir.path().join("out/ranks.csv"));
    assert_eq!(ranks.len(), 2 * 300);
    assert!(ranks
        .iter()
        .all(|r| r.rank == format!("pid{}", r.worker_pid)));
    for (i, (t, pair)) in run.truth.iter().zip(ranks.chunks(2)).enumerate() {
        let launches: u64 = pair.iter().map(|r| r.cuda_launches.unwrap()).sum();
        assert_eq!((launches, pair[0].step), (t.launches, i as u64), "step {i}");
    }
}

/// A row of ranks.csv.
#[derive(Debug, serde::Deserialize)]
struct RankRow {
    step: u64,
    pid: u32,
    rank: String,
    worker_pid: u32,
    cuda_launches: Option<u64>,
    cuda_graph_launches: u64,
    cuda_syncs: u64,
    cuda_sync_ns: u64,
    cuda_d2h_copies: u64,
    cuda_d2h_ns: u64,
    gpu_wait_ns: u64,
    wait_start_ns: Option<u64>,
    wait_end_ns: Option<u64>,
}

/// A row of the fixture's per-rank truth (tensor_parallel.py).
#[derive(Debug, serde::Deserialize)]
struct RankTruth {
    step: u64,
    rank: u32,
    pid: u32,
    launches: u64,
    graph_launches: u64,
    syncs: u64,
    sync_body_ns: u64,
    sync_call_ns: u64,
    d2h_copies: u64,
    d2h_body_ns: u64,
    d2h_call_ns: u64,
    ready_ns: u64,
    done_ns: u64,
    delay_ns: u64,
}

/// The slowest-rank columns of steps.csv.
#[derive(Debug, serde::Deserialize)]
struct SlowestRank {
    slowest_rank: Option<String>,
    rank_skew_ns: Option<u64>,
}

/// The children of a process (/proc/PID/task/PID/children).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// vLLM with TP = 2 (MultiprocExecutor): the engine process only schedules and waits; two
/// worker processes titled `VLLM::Worker_TP0`/`_TP1` make the CUDA calls, their syncs meeting
/// like all-reduces, one rank delayed 1 ms on the host in two batches of three. Traced from a
/// worker's pid, as a user who found a GPU process in nvidia-smi would: the engine is found
/// and both workers probed; each step's calls are folded per rank exactly as each rank made
/// them, and the slowest rank is the one that began its wait last.
#[test]
fn tensor_parallel_ranks_are_folded_per_rank_with_the_slowest() {
    let _serial = exclusive();
    const STEPS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let rank_truth_path = dir.path().join("rank_truth.csv");
    let run = traced_run_in(
        &dir,
        STEPS,
        &[
            "--tp",
            "2",
            "--tp-straggle-us",
            "1000",
            "--rank-truth",
            rank_truth_path.to_str().unwrap(),
        ],
        &[],
        |engine| {
            let workers = children(engine);
            assert_eq!(workers.len(), 2, "the fixture's workers: {workers:?}");
            // `tracer probes` from a worker finds the engine and lists its CUDA processes.
            let out = Command::new(tracer_bin())
                .args(["probes", "--pid", &workers[1].to_string(), "--json"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let probes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(probes[0]["pid"], engine);
            let listed: Vec<(u64, &str, &str)> = probes[0]["cuda_processes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let title = p["title"].as_str().unwrap();
                    (
                        p["pid"].as_u64().unwrap(),
                        p["rank"].as_str().unwrap(),
                        title,
                    )
                })
                .collect();
            assert_eq!(
                listed,
                [
                    (workers[0] as u64, "TP0", "VLLM::Worker_TP0"),
                    (workers[1] as u64, "TP1", "VLLM::Worker_TP1")
                ]
            );
            workers[1]
        },
    );
    // The steps' CUDA columns are the ranks' sums, as without TP.
    check_steps(&run, "TP 2");
    let engine = run.run["pid"].as_u64().unwrap() as u32;
    let processes = run.run["cuda"]["processes"].as_array().unwrap();
    let named: Vec<(&str, u64)> = processes
        .iter()
        .map(|p| (p["rank"].as_str().unwrap(), p["pid"].as_u64().unwrap()))
        .collect();
    assert_eq!(named.len(), 2, "the engine loads no libcuda: {processes:?}");
    // Every step had both ranks waiting, so one of them was the slowest.
    let count =
        |key: &str| -> Vec<u64> { processes.iter().map(|p| p[key].as_u64().unwrap()).collect() };
    assert_eq!(count("rank_steps"), [STEPS as u64; 2]);
    assert_eq!(count("slowest_steps").iter().sum::<u64>(), STEPS as u64);
    // The engine steps per call and waits inside `execute_model`: time tells the batches.
    assert_eq!(run.run["cuda"]["workers_folded_by_time"], false);

    let truth: Vec<RankTruth> = read_csv(&rank_truth_path);
    let ranks: Vec<RankRow> = read_csv(&dir.path().join("out/ranks.csv"));
    let steps: Vec<SlowestRank> = read_csv(&dir.path().join("out/steps.csv"));
    assert_eq!(truth.len(), 2 * STEPS);
    assert_eq!(ranks.len(), truth.len(), "rank rows lost or invented");
    let (mut start_errors, mut end_errors) = (Vec::new(), Vec::new());
    for (t, r) in truth.iter().zip(&ranks) {
        let at = format!("step {} rank {}", t.step, t.rank);
        assert_eq!(
            (r.step, r.pid, r.rank.clone(), r.worker_pid),
            (t.step, engine, format!("TP{}", t.rank), t.pid),
            "{at}"
        );
        assert!(named.contains(&(r.rank.as_str(), t.pid as u64)), "{at}");
        assert_eq!(
            (
                r.cuda_launches,
                r.cuda_graph_launches,
                r.cuda_syncs,
                r.cuda_d2h_copies
            ),
            (Some(t.launches), t.graph_launches, t.syncs, t.d2h_copies),
            "{at}: counts"
        );
        for (what, traced, body, call) in [
            ("sync", r.cuda_sync_ns, t.sync_body_ns, t.sync_call_ns),
            ("d2h", r.cuda_d2h_ns, t.d2h_body_ns, t.d2h_call_ns),
        ] {
            assert!(
                body <= traced + CLOCK_SLACK_NS && traced <= call + CLOCK_SLACK_NS,
                "{at} {what}: traced {traced} ns not within [{body}, {call}]"
            );
        }
        // One process, one thread: its blocked time is its sync and its copy.
        assert!(
            r.gpu_wait_ns + CLOCK_SLACK_NS >= t.sync_body_ns + t.d2h_body_ns
                && r.gpu_wait_ns <= t.sync_call_ns + t.d2h_call_ns + CLOCK_SLACK_NS,
            "{at}: gpu wait {} ns",
            r.gpu_wait_ns
        );
        // Its last wait is the sync: entered after the fixture's stamp before the call and
        // before the body began; returned after the body and before the stamp after.
        let (start, end) = (r.wait_start_ns.unwrap(), r.wait_end_ns.unwrap());
        let body_start_latest = t.done_ns - t.sync_body_ns;
        assert!(
            t.ready_ns <= start + CLOCK_SLACK_NS && start <= body_start_latest + CLOCK_SLACK_NS,
            "{at}: wait began at {start}, not within [{}, {body_start_latest}]",
            t.ready_ns
        );
        assert!(
            t.ready_ns + t.sync_body_ns <= end + CLOCK_SLACK_NS
                && end <= t.done_ns + CLOCK_SLACK_NS,
            "{at}: wait ended at {end}"
        );
        start_errors.push(start as i64 - t.ready_ns as i64);
        end_errors.push(t.done_ns as i64 - end as i64);
    }
    eprintln!(
        "TP 2: wait start − fixture stamp before the sync call: p50 {} ns, p99 {} ns; stamp \
         after − wait end: p50 {} ns, p99 {} ns",
        percentile(&mut start_errors.clone(), 50.0),
        percentile(&mut start_errors, 99.0),
        percentile(&mut end_errors.clone(), 50.0),
        percentile(&mut end_errors, 99.0),
    );

    // The slowest rank: the one whose sync began last. Each sync's entry (what a probe
    // sees) lies between the fixture's stamp before the call and the start of its body;
    // where those windows of the two ranks do not overlap, the truth's order is certain and
    // the trace must have it. (Where they overlap, the ranks entered within microseconds.)
    let (mut clear, mut agree, mut delayed_last, mut delayed) = (0, 0, 0, 0);
    let mut skew_errors = Vec::new();
    let (mut straggler_wait, mut others_wait) = (Vec::new(), Vec::new());
    let entry = |t: &RankTruth| (t.ready_ns, t.done_ns - t.sync_body_ns);
    for (i, (step, pair)) in steps.iter().zip(truth.chunks(2)).enumerate() {
        let (last, first) = if pair[0].ready_ns >= pair[1].ready_ns {
            (&pair[0], &pair[1])
        } else {
            (&pair[1], &pair[0])
        };
        let skew = last.ready_ns - first.ready_ns;
        let traced = step.slowest_rank.clone().unwrap_or_default();
        assert!(traced == "TP0" || traced == "TP1", "step {i}: {traced:?}");
        skew_errors.push(step.rank_skew_ns.unwrap() as i64 - skew as i64);
        if entry(last).0 > entry(first).1 + 2 * CLOCK_SLACK_NS {
            clear += 1;
            if traced == format!("TP{}", last.rank) {
                agree += 1;
            }
        }
        if let Some(straggler) = pair.iter().find(|t| t.delay_ns > 0) {
            delayed += 1;
            if traced == format!("TP{}", straggler.rank) {
                delayed_last += 1;
            }
            let other = pair.iter().find(|t| t.delay_ns == 0).unwrap();
            straggler_wait.push(ranks[2 * i + straggler.rank as usize].gpu_wait_ns as i64);
            others_wait.push(ranks[2 * i + other.rank as usize].gpu_wait_ns as i64);
        }
    }
    eprintln!(
        "TP 2: slowest rank = truth's in {agree} of {clear} steps whose order is certain; \
         = the delayed rank in {delayed_last} of {delayed} delayed steps; skew error p50 {} \
         ns, p99 {} ns; GPU wait p50 straggler {} ns, other rank {} ns",
        percentile(&mut skew_errors.clone(), 50.0),
        percentile(&mut skew_errors, 99.0),
        percentile(&mut straggler_wait, 50.0),
        percentile(&mut others_wait, 50.0),
    );
    assert_eq!(agree, clear, "slowest rank differs from the truth's");
    assert!(
        clear > STEPS / 2,
        "only {clear} steps with a clear straggler"
    );
    // A host-delayed rank is mostly the one the other waits for (not always: on a busy
    // machine the other rank can be descheduled for longer; with a 300 us delay 81-99 % at
    // load 6-8), and waits least.
    assert!(
        delayed_last * 4 >= delayed * 3,
        "{delayed_last} of {delayed}"
    );
    assert!(percentile(&mut straggler_wait, 50.0) + 100_000 < percentile(&mut others_wait, 50.0));

    // trace.json: a process per rank holding its waits, one per step.
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/trace.json")).unwrap())
            .unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    for (rank, pid) in &named {
        let name = format!("rank {rank} (worker {pid} of engine {engine})");
        assert!(
            events
                .iter()
                .any(|e| e["name"] == "process_name" && e["args"]["name"] == name),
            "no process {name:?}"
        );
        let waits = events
            .iter()
            .filter(|e| e["name"] == "GPU wait" && e["ph"] == "B" && e["pid"] == *pid)
            .count();
        assert_eq!(waits, STEPS, "{rank}'s waits in trace.json");
    }

    // `tracer report`: the ranks table's numbers are a recomputation of ranks.csv and the
    // slowest-rank columns of steps.csv.
    let out = Command::new(tracer_bin())
        .arg("report")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Tensor-parallel ranks"));
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/report/summary.json")).unwrap(),
    )
    .unwrap();
    let reported = summary["ranks"].as_array().unwrap();
    assert_eq!(reported.len(), 2, "{reported:?}");
    for r in reported {
        let rank = r["rank"].as_str().unwrap();
        let pid = named.iter().find(|(name, _)| *name == rank).unwrap().1;
        let rows: Vec<&RankRow> = ranks.iter().filter(|row| row.rank == rank).collect();
        let mean = |f: fn(&RankRow) -> u64| {
            rows.iter().map(|row| f(row)).sum::<u64>() as f64 / rows.len() as f64
        };
        let mut waits: Vec<i64> = rows.iter().map(|row| row.gpu_wait_ns as i64).collect();
        let slowest = steps
            .iter()
            .filter(|s| s.slowest_rank.as_deref() == Some(rank))
            .count();
        assert_eq!(
            (r["worker_pid"].as_u64(), r["steps"].as_u64()),
            (Some(pid), Some(rows.len() as u64)),
            "{rank}"
        );
        for (key, want) in [
            ("launches_per_step", mean(|row| row.cuda_launches.unwrap())),
            (
                "graph_launches_per_step",
                mean(|row| row.cuda_graph_launches),
            ),
            ("syncs_per_step", mean(|row| row.cuda_syncs)),
        ] {
            assert!(
                (r[key].as_f64().unwrap() - want).abs() < 1e-9,
                "{rank} {key}"
            );
        }
        assert_eq!(
            (
                r["gpu_wait"]["p50_ns"].as_i64(),
                r["gpu_wait"]["p99_ns"].as_i64(),
                r["slowest_steps"].as_u64()
            ),
            (
                Some(percentile(&mut waits.clone(), 50.0)),
                Some(percentile(&mut waits, 99.0)),
                Some(slowest as u64)
            ),
            "{rank}"
        );
    }
    let mut skews: Vec<i64> = steps
        .iter()
        .map(|s| s.rank_skew_ns.unwrap() as i64)
        .collect();
    assert_eq!(
        (
            summary["rank_skew"]["n"].as_u64(),
            summary["rank_skew"]["p99_ns"].as_i64()
        ),
        (Some(STEPS as u64), Some(percentile(&mut skews, 99.0)))
    );
}

/// libcuda loaded after the tracer attached (as frameworks do on first GPU use) is found
/// in the maps and probed within a scan period; steps before that have empty CUDA
/// columns, not zeros.
#[test]
fn late_loaded_libcuda_is_probed_once_seen() {
    let _serial = exclusive();
    // Load at the 50th measured step; 2 700 steps after it (~1.5 s idle, 4.5 s with two busy
    // loops on the 2 cores, where the tracer's scan once came 1.3 s after the load).
    let run = traced_run(
        3000,
        &["--warmup", "200", "--fake-cuda-load-at", "250"],
        &[],
    );
    let attached = run.run["cuda"]["processes"][0]["attached_ns"]
        .as_u64()
        .unwrap();
    let loaded_at = run.truth.iter().position(|t| t.launches > 0).unwrap();
    assert_eq!(loaded_at, 50);
    let loaded_ns = run.steps[loaded_at].start_ns;
    // A scan period, plus the attach itself, on a machine that may be busy: with two busy
    // loops on the 2 cores the tracer's scan came 1.3 s after the load. What is proven is
    // that the library is found while tracing, not how fast a loaded machine schedules us.
    let bound = tracer::live::cuda::SCAN_EVERY + Duration::from_secs(5);
    assert!(
        attached > loaded_ns && attached - loaded_ns < bound.as_nanos() as u64,
        "probes went in {} ms after the load",
        (attached as f64 - loaded_ns as f64) / 1e6
    );
    let mut probed = 0;
    for (i, (t, s)) in run.truth.iter().zip(&run.steps).enumerate() {
        if s.start_ns < attached {
            assert_eq!(s.cuda_launches, None, "step {i} began before the probes");
        } else {
            probed += 1;
            assert_eq!(s.cuda_launches, Some(t.launches), "step {i}");
            assert_eq!(s.cuda_syncs, Some(t.syncs), "step {i}");
        }
    }
    assert!(
        probed >= 100,
        "only {probed} steps after the probes went in"
    );
}

#[test]
fn level_sync_leaves_launches_empty_and_off_leaves_every_column_empty() {
    let _serial = exclusive();
    let run = traced_run(200, &[], &["--cuda", "sync"]);
    for (t, s) in run.truth.iter().zip(&run.steps) {
        assert_eq!(s.cuda_launches, None);
        assert_eq!(s.cuda_graph_launches, Some(t.graph_launches));
        assert_eq!(s.cuda_syncs, Some(t.syncs));
    }
    let functions = run.run["cuda"]["processes"][0]["functions"].to_string();
    assert!(!functions.contains("cuLaunchKernel"), "{functions}");

    let run = traced_run(100, &[], &["--cuda", "off"]);
    assert!(run
        .steps
        .iter()
        .all(|s| s.cuda_graph_launches.is_none() && s.exec_gpu_wait_ns.is_none()));
    assert_eq!(run.run["cuda"]["processes"], serde_json::json!([]));
}

/// A row of steps.csv as the async check reads it.
#[derive(Debug, serde::Deserialize)]
struct BatchRow {
    step: u64,
    start_ns: u64,
    step_ns: u64,
    overlap_ns: u64,
    tracer_ns: Option<u64>,
    scheduled_tokens: Option<u64>,
    cuda_launches: Option<u64>,
    cuda_graph_launches: Option<u64>,
    cuda_syncs: Option<u64>,
    exec_launch_host_ns: Option<u64>,
    exec_gpu_wait_ns: Option<u64>,
}

/// A row of the fixture's per-batch truth (async_gpu.py).
#[derive(Debug, serde::Deserialize)]
struct BatchTruth {
    entry_ns: u64,
    scheduled_ns: u64,
    launched_ns: u64,
    wait_ns: u64,
    output_ns: u64,
    update_done_ns: u64,
    tokens: u64,
    launches: u64,
    graph_launches: u64,
    syncs: u64,
}

fn median_abs(mut errors: Vec<i64>) -> u64 {
    errors.sort_unstable_by_key(|e| e.unsigned_abs());
    errors[errors.len() / 2].unsigned_abs()
}

/// Async scheduling (`step_with_batch_queue`, vLLM's GPU default): batch N+1 is scheduled
/// and launched while batch N runs, and N is waited for and updated in a later call. Each
/// row must be one batch: its own scheduled tokens, its own launches (eager above the
/// capture size, one graph below: neighbours differ) and its own wait, even though the
/// trace starts with a batch in flight (the one the fixture's warmup left in the queue).
/// The fixture under async scheduling (800 batches, --fake-cuda, `extra` fixture options)
/// traced with copies in the trap (this is about rows and CUDA calls: tests/requests.rs has
/// the shadow copies, which a loaded machine may make late). `mid_run`: 3 000 batches, the
/// tracer attached while they run (else before the first).
fn async_run(python: &str, extra: &[&str], mid_run: bool) -> AsyncRun {
    // Its worker spins through each launch: alone, so that it slows no other test's tracer.
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("batch_truth.csv");
    let out = dir.path().join("out");
    let mut args = vec![
        "--wait-go",
        "--warmup",
        "50",
        "--steps",
        if mid_run { "3000" } else { "800" },
        "--async-scheduling",
        "--fake-cuda",
        fake_libcuda().to_str().unwrap(),
        "--batch-truth",
        truth_path.to_str().unwrap(),
    ];
    args.extend(extra);
    let mut fixture = Fixture::spawn(python, &args);
    let pid = fixture.pid.to_string();
    let mut tracer = Tracer::spawn(&[
        "attach",
        "--pid",
        &pid,
        "-o",
        out.to_str().unwrap(),
        "--snapshots",
        "sync",
    ]);
    // Mid-run: the batches begin while the tracer finds the engine (~100 ms) and attaches.
    if mid_run {
        fixture.go();
    }
    tracer
        .stderr
        .wait_for("tracer: attached", Duration::from_secs(30));
    // What `tracer probes` says of the engine, before the first batch.
    let probes = (!mid_run).then(|| {
        let out = Command::new(tracer_bin())
            .args(["probes", "--pid", &pid, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    });
    if !mid_run {
        fixture.go();
    }
    assert!(fixture.wait().success());
    let (status, stderr) = tracer.finish(Duration::from_secs(30));
    assert!(status.success(), "tracer failed: {stderr:?}");
    let run = read_run_json(&out);
    let rows: Vec<BatchRow> = read_csv(&out.join("steps.csv"));
    // Batches begun before the watchpoints were in have no row (the fixture stamps a batch's
    // entry just after the step's entry hit).
    let first_start = rows[0].start_ns;
    let truth: Vec<BatchTruth> = read_csv::<BatchTruth>(&truth_path)
        .into_iter()
        .filter(|t| t.entry_ns > first_start)
        .collect();
    assert!(truth.len() > 700, "{} batches", truth.len());
    assert_eq!(rows.len(), truth.len(), "batches lost or invented");
    let ranks_path = out.join("ranks.csv");
    let ranks = if ranks_path.exists() {
        read_csv(&ranks_path)
    } else {
        Vec::new()
    };
    AsyncRun {
        run,
        rows,
        truth,
        ranks,
        stderr,
        probes,
    }
}

/// What [`async_run`] gives: run.json, the rows of steps.csv and of ranks.csv, the truth of
/// the batches scheduled after the attach (one per row), and the tracer's stderr.
struct AsyncRun {
    run: serde_json::Value,
    rows: Vec<BatchRow>,
    truth: Vec<BatchTruth>,
    ranks: Vec<RankRow>,
    stderr: Vec<String>,
    /// `tracer probes --json` before the first batch (not mid-run).
    probes: Option<serde_json::Value>,
}

#[test]
fn async_batches_get_their_own_launches_and_waits() {
    let AsyncRun {
        run, rows, truth, ..
    } = async_run(&pyenv("3.12.1"), &[], false);
    assert_eq!(run["cuda"]["workers_folded_by_time"], false);
    let eager = truth.iter().filter(|t| t.launches > 0).count();
    assert!(
        eager > 50 && eager < truth.len() - 50,
        "both eager and graph batches: {eager} eager"
    );
    let (mut launch_errors, mut wait_errors) = (Vec::new(), Vec::new());
    for (i, (row, t)) in rows.iter().zip(&truth).enumerate() {
        assert_eq!(
            (
                row.scheduled_tokens,
                row.cuda_launches,
                row.cuda_graph_launches,
                row.cuda_syncs
            ),
            (
                Some(t.tokens),
                Some(t.launches),
                Some(t.graph_launches),
                Some(t.syncs)
            ),
            "batch {i}: tokens, launches, graph launches, syncs"
        );
        launch_errors.push(
            row.exec_launch_host_ns.unwrap() as i64 - (t.launched_ns - t.scheduled_ns) as i64,
        );
        wait_errors.push(row.exec_gpu_wait_ns.unwrap() as i64 - (t.output_ns - t.wait_ns) as i64);
    }
    // Medians: a descheduled moment moves a few batches, never the middle. A neighbour's
    // launch differs by the eager/graph host cost (540 us), its wait by its GPU time.
    let (launch, wait) = (median_abs(launch_errors), median_abs(wait_errors));
    assert!(
        launch < 100_000,
        "launch host time median error {launch} ns"
    );
    assert!(wait < 100_000, "GPU wait median error {wait} ns");
    // Rows overlap; without the overlap (and with the tracer's own holds, which the
    // fixture's clock sees) they add up to the time a batch was in flight.
    let mut spans: Vec<(u64, u64)> = truth
        .iter()
        .map(|t| (t.entry_ns, t.update_done_ns))
        .collect();
    spans.sort_unstable();
    let (mut busy, mut current) = (0, spans[0]);
    for &(start, end) in &spans[1..] {
        if start <= current.1 {
            current.1 = current.1.max(end);
        } else {
            busy += current.1 - current.0;
            current = (start, end);
        }
    }
    busy += current.1 - current.0;
    let summed: u64 = rows
        .iter()
        .map(|r| r.step_ns + r.tracer_ns.unwrap_or(0) - r.overlap_ns)
        .sum();
    let ratio = summed as f64 / busy as f64;
    assert!(
        (0.95..1.05).contains(&ratio),
        "rows sum to {ratio:.3} x the busy wall time"
    );
    let overlapping = rows.iter().filter(|r| r.overlap_ns > 0).count();
    assert!(overlapping > rows.len() / 2, "{overlapping} rows overlap");
}

/// The model in worker processes under async scheduling (vLLM's MultiprocExecutor with
/// `step_with_batch_queue`; fixture async_workers.py, tensor parallel over two ranks): the
/// engine sends a batch and goes on, each worker launches it after the one before, and the
/// output rank waits for its output in another thread. Folded by time, worker calls landed
/// in neighbouring rows (the H200 showed it: README "Worker processes under async
/// scheduling"). With each worker's batches marked (the entry of `Worker.execute_model` on
/// its main thread), every row has its own batch's launches from both ranks and the output
/// rank's wait, and ranks.csv each rank's share: equal launches, one sync on rank 0.
#[test]
fn async_workers_batches_get_their_own_worker_calls() {
    check_async_workers(&pyenv("3.12.1"), false);
}

/// As above on 3.10, whose functions have no `RESUME`: the mark is the first instruction.
#[test]
fn async_workers_batches_are_marked_on_3_10() {
    check_async_workers(&pyenv("3.10.13"), false);
}

/// As above, attached while batches run: each rank's batches are marked before its CUDA
/// probes go in, so every batch they see is marked and its rows are exact from its first
/// (but for a rank that was a batch behind when first matched: see below).
#[test]
fn async_workers_attached_mid_run_are_exact_once_each_rank_is_matched() {
    check_async_workers(&pyenv("3.12.1"), true);
}

/// Rows of a rank, from its first, in which it may still be catching up (see below).
const CATCH_UP_ROWS: usize = 20;

fn check_async_workers(python: &str, mid_run: bool) {
    let AsyncRun {
        run,
        rows,
        truth,
        ranks,
        stderr,
        probes,
    } = async_run(python, &["--async-workers", "2"], mid_run);
    // Both workers (the engine loads no libcuda), each marked at Worker.execute_model.
    let marked_at_execute_model = |processes: &serde_json::Value| {
        let workers = processes.as_array().unwrap();
        assert_eq!(workers.len(), 2, "{processes}");
        for worker in workers {
            assert!(
                worker["batch_marks"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Worker.execute_model (entry at")),
                "{worker}"
            );
        }
    };
    if let Some(probes) = probes {
        marked_at_execute_model(&probes[0]["cuda_processes"]);
    }
    let cuda = &run["cuda"];
    assert_eq!(cuda["workers_folded_by_time"], false, "{stderr:?}");
    marked_at_execute_model(&cuda["processes"]);
    assert!(
        !stderr.iter().any(|l| l.contains("folded by time")),
        "{stderr:?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("2 processes probed (2 with batch marks, ")),
        "the summary line: {stderr:?}"
    );
    let eager = truth.iter().filter(|t| t.launches > 0).count();
    assert!(
        eager > 50 && eager < truth.len() - 50,
        "both eager and graph batches: {eager} eager"
    );
    // Each rank's share of each row it has, from its first: its own batch's launches, and
    // rank 0's output sync. Attached mid-run, a rank a batch behind the engine when it is
    // first matched (a loaded host) takes its older batch's mark until it catches up: a few
    // of its first rows may be a batch off, never later ones.
    let at: std::collections::HashMap<u64, usize> =
        rows.iter().enumerate().map(|(i, r)| (r.step, i)).collect();
    let mut off = std::collections::HashSet::new();
    for (rank, output) in [("TP0", true), ("TP1", false)] {
        let own: Vec<&RankRow> = ranks.iter().filter(|r| r.rank == rank).collect();
        let first = own.first().map_or(rows.len(), |r| at[&r.step]);
        assert!(
            !mid_run && first == 0 || mid_run && first < rows.len() / 2,
            "{rank}: first row {first} of {}",
            rows.len()
        );
        assert_eq!(
            own.len(),
            rows.len() - first,
            "{rank}: a row per batch from its first"
        );
        for (k, r) in own.iter().enumerate() {
            let i = at[&r.step];
            let t = &truth[i];
            let expected = (
                Some(t.launches),
                t.graph_launches,
                if output { t.syncs } else { 0 },
            );
            let got = (r.cuda_launches, r.cuda_graph_launches, r.cuda_syncs);
            if got != expected {
                eprintln!("batch {i} rank {rank} (its row {k}): {got:?}, not {expected:?}");
                assert!(mid_run && k < CATCH_UP_ROWS, "batch {i} rank {rank}");
                off.insert(i);
            }
        }
    }
    // Rows with both ranks: the ranks' sums.
    for (i, (row, t)) in rows.iter().zip(&truth).enumerate() {
        assert_eq!(row.scheduled_tokens, Some(t.tokens), "batch {i}: tokens");
        if ranks.iter().filter(|r| r.step == row.step).count() == 2 && !off.contains(&i) {
            assert_eq!(
                (row.cuda_launches, row.cuda_graph_launches, row.cuda_syncs),
                (
                    Some(2 * t.launches),
                    Some(2 * t.graph_launches),
                    Some(t.syncs)
                ),
                "batch {i}: launches, graph launches, syncs"
            );
        }
    }
    // One mark per row and rank; each worker may have begun up to two batches before the
    // first row.
    let matched = cuda["batch_marks_matched"].as_u64().unwrap();
    let unmatched = cuda["batch_marks_unmatched"].as_u64().unwrap();
    if mid_run {
        // Batches begun while the probes went in have marks and no rank row.
        assert!(matched >= ranks.len() as u64, "{matched} marks matched");
    } else {
        assert_eq!(matched, 2 * rows.len() as u64);
    }
    assert!(unmatched <= 4, "{unmatched} marks fit no row");
}
