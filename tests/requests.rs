//! Request lifecycles, batch columns and waiting reasons from the scheduler snapshots,
//! checked against the fixture engine's own ground truth (tests/fixtures/engine/README.md:
//! `--truth-dir` steps.csv, events.csv, waiting.csv, requests.csv) on every CPython whose
//! instance dicts the snapshot program reads differently (3.10 split dicts, 3.11 separate
//! values, 3.12 tagged values, 3.13 inline values).

mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    time::Duration,
};

use support::*;

type Row = HashMap<String, String>;

/// A load that preempts and stops the waiting walk for each budget reason.
const LOAD: &[&str] = &[
    "--wait-go",
    "--steps",
    "1200",
    "--execute-ms",
    "0.3",
    "--arrival-per-step",
    "0.6",
    "--prompt-len",
    "20",
    "400",
    "--max-tokens",
    "5",
    "60",
    "--num-gpu-blocks",
    "96",
    "--max-num-seqs",
    "16",
    "--max-num-batched-tokens",
    "256",
    "--seed",
    "7",
];

/// Share of (request, step) waiting pairs whose reason must agree with the fixture's.
const REASONS_AGREE: f64 = 0.99;

fn rows(path: &Path) -> Vec<Row> {
    read_csv(path)
}

fn num(row: &Row, column: &str) -> u64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column}: {:?}", row[column]))
}

/// A traced step's batch columns and KV blocks against the fixture's row for it.
fn assert_batch_matches(s: &Row, t: &Row) {
    for column in [
        "batch_size",
        "scheduled_tokens",
        "prefill_tokens",
        "decode_tokens",
        "prefill_requests",
        "decode_requests",
        "new_requests",
        "resumed_requests",
        "running",
        "waiting",
        "preempted",
        "finished",
    ] {
        assert_eq!(s[column], t[column], "step {}: {column}", t["step"]);
    }
    // The fixture counts free blocks of the whole pool; the tracer, blocks in use of those
    // requests can get (the pool less vLLM's null block).
    assert_eq!(
        num(s, "kv_blocks_used"),
        num(t, "kv_total_blocks") - 1 - num(t, "kv_free_blocks"),
        "step {}",
        t["step"]
    );
}

/// The traced request `s` ended as the fixture's `t` did. The status is told from token
/// counts: a stop token that is exactly the last allowed one reads as length-capped (README).
fn assert_same_end(s: &Row, t: &Row) {
    let stopped_at_max =
        t["finish_status"] == "FINISHED_STOPPED" && t["output_tokens"] == t["max_tokens"];
    if !stopped_at_max {
        assert_eq!(
            s["finish_status"], t["finish_status"],
            "{}",
            t["request_id"]
        );
    }
}

fn lifecycles_match_ground_truth(python: &str, with_lifecycles: bool) {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth");
    let out = dir.path().join("out");
    let mut args = LOAD.to_vec();
    args.extend(["--truth-dir", truth.to_str().unwrap()]);
    let mut fixture = Fixture::spawn(python, &args);
    let tracer = Tracer::attach_with(
        fixture.pid,
        &out,
        &[
            "--seed-csv",
            "--label",
            "dataset=sharegpt",
            "--label",
            "arrival_rate=0.6",
        ],
    );
    fixture.go();
    assert!(fixture.wait().success());
    let (status, stderr) = tracer.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr:?}");
    let run = read_run_json(&out);
    assert_eq!(run["counters"]["ring_buffer_drops"], 0);
    assert_eq!(run["counters"]["snapshots_failed"], 0);
    // `auto` keeps its copies in the trap: 0.3 ms steps leave no time to read in.
    assert_eq!(run["counters"]["shadow"]["copies"], 0);
    // The engine's settings, read from the target, are the ones LOAD gave it.
    assert_eq!(run["vllm_version"], "0.0.0+fixture");
    let config = &run["config"];
    assert_eq!(config["num_gpu_blocks"], 96);
    assert_eq!(config["max_num_seqs"], 16);
    assert_eq!(config["max_num_batched_tokens"], 256);
    assert_eq!(config["model"], "fixture");
    assert_eq!(config["enable_prefix_caching"], false);

    // Steps: the traced step whose span holds the fixture's own start, by index.
    let traced_steps = rows(&out.join("steps.csv"));
    let truth_steps = rows(&truth.join("steps.csv"));
    assert_eq!(
        traced_steps.len(),
        truth_steps.len(),
        "steps lost or invented"
    );
    let mut step_of = HashMap::new();
    for (t, s) in truth_steps.iter().zip(&traced_steps) {
        let (start, traced_start) = (num(t, "start_ns"), num(s, "start_ns"));
        assert!(
            traced_start <= start && start < traced_start + num(s, "step_ns") + num(s, "tracer_ns")
        );
        step_of.insert(t["step"].clone(), s["step"].clone());
        assert_batch_matches(s, t);
    }
    // seed.csv: the in-process logger's columns, the same steps.
    let seed = rows(&out.join("seed.csv"));
    assert_eq!(seed.len(), traced_steps.len());
    for ((row, s), t) in seed.iter().zip(&traced_steps).zip(&truth_steps) {
        assert_eq!(row["num_total_scheduled_tokens"], t["scheduled_tokens"]);
        assert_eq!(row["scheduled_new_reqs"], t["new_requests"]);
        // `{'cmpl-fixture-3': 1, ...}`: one entry per scheduled request, summing to the total.
        let dict = row["num_scheduled_tokens"].trim_matches(|c| c == '{' || c == '}');
        let tokens: Vec<u64> = dict
            .split(", ")
            .filter(|e| !e.is_empty())
            .map(|e| e.rsplit_once(": ").unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(tokens.len().to_string(), t["batch_size"], "{dict}");
        assert_eq!(tokens.iter().sum::<u64>(), num(t, "scheduled_tokens"));
        let execute_s: f64 = row["execute_time"].parse().unwrap();
        assert!((execute_s * 1e9 - num(s, "execute_ns") as f64).abs() < 1.0);
        assert_eq!(row["num_gpu_blocks"], "96");
        assert_eq!(row["max_num_sequences"], "16");
        assert_eq!(row["enable_prefix_caching"], "False");
        assert_eq!(
            (row["dataset"].as_str(), row["arrival_rate"].as_str()),
            ("sharegpt", "0.6")
        );
        assert_eq!(row["temperature"], "");
    }

    // A step spans from its traced entry to the fixture's own end timestamp.
    let truth_span: HashMap<&str, (u64, u64)> = truth_steps
        .iter()
        .zip(&traced_steps)
        .map(|(t, s)| {
            (
                t["step"].as_str(),
                (num(s, "start_ns"), num(t, "after_update_ns")),
            )
        })
        .collect();

    // Snapshots copy the first MAX_QUEUE_ITEMS of a queue: a request that never got that
    // near the head is not seen at all (counted in run.json), and this load has some.
    // One that arrived there is first seen when it moves up: its arrival step differs.
    let copied = |position: u64| position < tracer_common::capture::MAX_QUEUE_ITEMS as u64;
    let (mut nearest, mut first) = (HashMap::new(), HashMap::new());
    for w in rows(&truth.join("waiting.csv")) {
        let position = num(&w, "position");
        first.entry(w["request_id"].clone()).or_insert(position);
        let n = nearest.entry(w["request_id"].clone()).or_insert(u64::MAX);
        *n = (*n).min(position);
    }
    let never_copied: HashSet<&str> = nearest
        .iter()
        .filter(|(_, &p)| !copied(p))
        .map(|(r, _)| r.as_str())
        .collect();
    let arrived_out_of_view: HashSet<&str> = first
        .iter()
        .filter(|(_, &p)| !copied(p))
        .map(|(r, _)| r.as_str())
        .collect();
    assert!(
        run["counters"]["requests"]["queue_items_not_copied"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Waiting reasons, per (request, step).
    let traced_reasons: HashMap<(String, String), String> = rows(&out.join("queues.csv"))
        .into_iter()
        .filter(|q| q["queue"] == "waiting")
        .map(|q| {
            (
                (q["step"].clone(), q["request_id"].clone()),
                q["reason"].clone(),
            )
        })
        .collect();
    let mut confusion: BTreeMap<(String, String), u64> = BTreeMap::new();
    for w in rows(&truth.join("waiting.csv")) {
        let traced = traced_reasons
            .get(&(step_of[&w["step"]].clone(), w["request_id"].clone()))
            .cloned()
            .unwrap_or_else(|| "(absent)".into());
        *confusion.entry((w["reason"].clone(), traced)).or_default() += 1;
    }
    let total: u64 = confusion.values().sum();
    let agree: u64 = confusion
        .iter()
        .filter(|((a, b), _)| a == b)
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "{python}: waiting reasons agree on {agree} of {total}; truth → traced: {confusion:?}"
    );
    assert!(total > 1000, "{total}");
    assert!(
        agree as f64 >= REASONS_AGREE * total as f64,
        "{agree}/{total}: {confusion:?}"
    );
    if !with_lifecycles {
        return;
    }
    // Events: per request and kind, the same steps; each time inside that step.
    let truth_events = rows(&truth.join("events.csv"));
    let arrived_in_window: HashSet<&str> = truth_events
        .iter()
        .filter(|e| e["event"] == "arrived" && !never_copied.contains(e["request_id"].as_str()))
        .map(|e| e["request_id"].as_str())
        .collect();
    assert!(arrived_in_window.len() > 300, "{}", arrived_in_window.len());
    let mut expected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut spans: HashMap<(String, String, String), (u64, u64, u64)> = HashMap::new();
    let compared = |request: &str, event: &str| {
        !never_copied.contains(request)
            && (event != "arrived" || !arrived_out_of_view.contains(request))
    };
    for e in &truth_events {
        if !compared(&e["request_id"], &e["event"]) {
            continue;
        }
        let step = step_of[&e["step"]].clone();
        expected
            .entry((e["request_id"].clone(), e["event"].clone()))
            .or_default()
            .push(step.clone());
        let (start, end) = truth_span[e["step"].as_str()];
        spans.insert(
            (e["request_id"].clone(), e["event"].clone(), step),
            (start, end, num(e, "t_ns")),
        );
    }
    let mut traced: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut time_errors = Vec::new();
    // Per first-token or finished event: at vLLM's stamp of the outputs (to float rounding).
    let mut token_stamps = Vec::new();
    for e in rows(&out.join("events.csv")) {
        // Requests already in the engine at the start "arrive" at its first step for the
        // tracer; the fixture logged their arrival before.
        if e["event"] == "arrived" && !arrived_in_window.contains(e["request_id"].as_str())
            || !compared(&e["request_id"], &e["event"])
        {
            continue;
        }
        let key = (e["request_id"].clone(), e["event"].clone());
        if let Some(&(start, end, t)) =
            spans.get(&(key.0.clone(), key.1.clone(), e["step"].clone()))
        {
            let traced_t = num(&e, "t_ns");
            // Visible at a mark of the step the fixture logged it in: inside its span.
            assert!(
                start <= traced_t && traced_t <= end,
                "{key:?}: traced at {traced_t}, step {start}..{end}"
            );
            time_errors.push(traced_t as i64 - t as i64);
            if key.1 == "first_token" || key.1 == "finished" {
                token_stamps.push(traced_t.abs_diff(t) <= 1_000);
            }
        }
        traced.entry(key).or_default().push(e["step"].clone());
    }
    let mismatched: Vec<_> = expected
        .iter()
        .filter(|(k, steps)| traced.get(*k) != Some(*steps))
        .map(|(k, steps)| (k.clone(), steps.clone(), traced.get(k).cloned()))
        .take(5)
        .collect();
    assert!(mismatched.is_empty(), "events differ: {mismatched:?}");
    let extra: Vec<_> = traced
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "events the fixture did not log: {extra:?}"
    );
    let exact = token_stamps.iter().filter(|&&e| e).count();
    assert!(
        token_stamps.len() > 100 && exact * 100 >= token_stamps.len() * 99,
        "{python}: {exact} of {} first-token and finished events at the outputs' stamp",
        token_stamps.len()
    );
    let p99 = percentile(&mut time_errors, 99.0);
    eprintln!(
        "{python}: {} events in the same step as the fixture's; |traced − fixture| p50 {} ns, p99 {p99} ns",
        time_errors.len(),
        percentile(&mut time_errors, 50.0)
    );

    // Requests: same token counts, preemptions and end.
    let traced_requests: HashMap<String, Row> = rows(&out.join("requests.csv"))
        .into_iter()
        .map(|r| (r["request_id"].clone(), r))
        .collect();
    for t in rows(&truth.join("requests.csv")) {
        if !arrived_in_window.contains(t["request_id"].as_str()) {
            continue;
        }
        let s = &traced_requests[&t["request_id"]];
        for (truth_column, column) in [
            ("prompt_tokens", "prompt_tokens"),
            ("output_tokens", "output_tokens"),
            ("preemptions", "preemptions"),
            ("arrival_time", "arrival_time_s"),
        ] {
            assert_eq!(s[column], t[truth_column], "{}: {column}", t["request_id"]);
        }
        assert_same_end(s, &t);
        if t["num_cached_tokens"] != "-1" {
            assert_eq!(
                s["cached_tokens"], t["num_cached_tokens"],
                "{}",
                t["request_id"]
            );
        }
    }
}

/// Shadow copies (`--snapshots shadow`): the kernel side copies which requests each queue
/// holds, the tracer reads their fields while the batch executes (8 ms here, the fixture
/// asleep as an engine thread waiting for a GPU). A copy that ends after the engine thread
/// moved on is dropped and counted; every other step has the fixture's batch columns, and
/// each request vLLM's own queueing stamp. Steps soon after a dropped copy are not compared.
/// Steps by which `auto` copies in the shadow on these steps: it copies in the trap until it
/// has seen the windows of 32 steps (and the plan it then writes reaches the kernel side by
/// the next drain).
const AUTO_SHADOW_BY: usize = 64;

/// [`LOAD`] over `steps` steps whose execute sleeps 8 ms (an engine thread waiting for a
/// GPU: a window for shadow copies), the fixture's truth written to `truth`.
fn sleeping_load<'a>(steps: &'a str, truth: &'a Path) -> Vec<&'a str> {
    let mut args: Vec<&str> = LOAD.to_vec();
    for (name, value) in [("--steps", steps), ("--execute-ms", "8")] {
        let at = args.iter().position(|a| *a == name).unwrap() + 1;
        args[at] = value;
    }
    let truth = truth.to_str().unwrap();
    args.extend(["--execute-mode", "sleep", "--truth-dir", truth]);
    args
}

fn shadow_copies_match_ground_truth(python: &str, snapshots: &str) {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth");
    let out = dir.path().join("out");
    let mut fixture = Fixture::spawn(python, &sleeping_load("500", &truth));
    let tracer = Tracer::attach_with(fixture.pid, &out, &["--snapshots", snapshots]);
    fixture.go();
    assert!(fixture.wait().success());
    let (status, stderr) = tracer.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr:?}");
    let run = read_run_json(&out);
    assert_eq!(run["counters"]["ring_buffer_drops"], 0);
    let shadow = &run["counters"]["shadow"];
    let (copies, late) = (
        shadow["copies"].as_u64().unwrap(),
        shadow["late"].as_u64().unwrap(),
    );
    assert!(copies >= 500 - AUTO_SHADOW_BY as u64, "{shadow}");
    if snapshots == "auto" {
        assert!(shadow["switches"].as_u64().unwrap() >= 1, "{shadow}");
    }
    // Late copies are a loaded machine's (the fixture's CI runs beside two busy loops).
    assert!(
        late * 5 <= copies,
        "more than 1 in 5 copies ended late: {shadow}"
    );
    eprintln!("{python}: shadow copies {shadow}");

    let traced_steps = rows(&out.join("steps.csv"));
    let truth_steps = rows(&truth.join("steps.csv"));
    assert_eq!(
        traced_steps.len(),
        truth_steps.len(),
        "steps lost or invented"
    );
    let counted = |s: &Row| !s["batch_size"].is_empty();
    let mut compared = 0;
    for (i, (t, s)) in truth_steps.iter().zip(&traced_steps).enumerate() {
        if !traced_steps[i.saturating_sub(3)..=i].iter().all(counted) {
            continue;
        }
        compared += 1;
        assert_batch_matches(s, t);
        // The kernel side's part of a shadow copy: a few reads, whatever the queues hold.
        // (`auto` copies its first steps in the trap, which under two busy loops held the
        // thread 1.3-2.3 ms at step 0: judged from where its copies are surely shadow ones.)
        if snapshots == "shadow" || i >= AUTO_SHADOW_BY {
            assert!(num(s, "tracer_ns") < 1_000_000, "step {}: {s:?}", t["step"]);
        }
    }
    assert!(
        compared * 2 >= traced_steps.len(),
        "{compared} steps compared"
    );

    // Requests: the same counts, and vLLM's queueing stamp.
    let traced_requests = requests_by_id(&out.join("requests.csv"));
    let trace_start = run["trace_start_ns"].as_u64().unwrap();
    let (mut queued, mut stamped) = (0, 0);
    for t in rows(&truth.join("requests.csv")) {
        if num(&t, "queued_ns") < trace_start {
            continue;
        }
        let Some(s) = traced_requests.get(&t["request_id"]) else {
            // Still far back in the waiting queue when the run ended (never copied).
            assert_eq!(t["finish_status"], "UNFINISHED", "{t:?}");
            continue;
        };
        for column in ["prompt_tokens", "arrival_time"] {
            let traced = if column == "arrival_time" {
                "arrival_time_s"
            } else {
                column
            };
            assert_eq!(s[traced], t[column], "{}: {column}", t["request_id"]);
        }
        queued += 1;
        stamped += u32::from(has_vllm_stamp(&t, s));
    }
    assert!(queued > 150, "{queued} requests");
    assert!(
        stamped * 20 >= queued * 19,
        "{stamped} of {queued} with vLLM's stamp"
    );
}

/// Shadow copies made late on purpose (the tracer stopped 10 ms every 70 ms while the
/// fixture's steps execute for 8 ms): a request that finishes or is preempted in a step no
/// snapshot showed is still one request, with its tokens and preemptions (but for a request
/// that finished within unseen steps after the one that completed its prompt).
#[test]
fn requests_stay_whole_across_late_shadow_copies() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth");
    let out = dir.path().join("out");
    let mut fixture = Fixture::spawn(&pyenv("3.12.1"), &sleeping_load("600", &truth));
    let tracer = Tracer::attach_with(fixture.pid, &out, &["--snapshots", "shadow"]);
    let done = Arc::new(AtomicBool::new(false));
    let stalls = {
        let (done, pid) = (done.clone(), tracer.pid() as libc::pid_t);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                // SAFETY: kill(2) on the tracer, our child; it is always sent on again.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(20));
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
        })
    };
    fixture.go();
    assert!(fixture.wait().success());
    done.store(true, Ordering::Relaxed);
    stalls.join().unwrap();
    let (status, stderr) = tracer.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr:?}");
    let run = read_run_json(&out);
    let late = run["counters"]["shadow"]["late"].as_u64().unwrap();
    assert!(late >= 10, "only {late} late copies: {}", run["counters"]);

    let truth_steps = rows(&truth.join("steps.csv"));
    let traced_steps = rows(&out.join("steps.csv"));
    assert_eq!(
        traced_steps.len(),
        truth_steps.len(),
        "steps lost or invented"
    );
    let index: HashMap<&str, usize> = (truth_steps.iter().enumerate())
        .map(|(i, t)| (t["step"].as_str(), i))
        .collect();
    let unseen = |i: usize| traced_steps[i]["batch_size"].is_empty();
    let (mut last_step, mut first_token, mut arrived) =
        (HashMap::new(), HashMap::new(), HashSet::new());
    for e in rows(&truth.join("events.csv")) {
        if let Some(&i) = index.get(e["step"].as_str()) {
            last_step.insert(e["request_id"].clone(), i);
            if e["event"] == "first_token" {
                first_token.insert(e["request_id"].clone(), i);
            }
        }
        if e["event"] == "arrived" {
            arrived.insert(e["request_id"].clone());
        }
    }
    let traced = rows(&out.join("requests.csv"));
    let mut ids: Vec<&str> = traced.iter().map(|r| r["request_id"].as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "a request in two rows");
    let traced: HashMap<&str, &Row> = traced
        .iter()
        .map(|r| (r["request_id"].as_str(), r))
        .collect();
    let (mut compared, mut finished_unseen, mut untold) = (0, 0, 0);
    for t in rows(&truth.join("requests.csv")) {
        // The fixture steps only once the tracer is in (`--wait-go`): every request is seen.
        let Some(&end) = last_step.get(&t["request_id"]) else {
            continue;
        };
        if t["finish_status"] == "UNFINISHED" {
            continue;
        }
        // Its prompt completed in an unseen step and it finished before any snapshot showed
        // it again: the tokens before its last are not known (README).
        let first = first_token.get(&t["request_id"]).copied().unwrap_or(end);
        if (first..=end).all(unseen) && end > first {
            untold += 1;
            continue;
        }
        let s = traced[t["request_id"].as_str()];
        assert_eq!(
            s["output_tokens"], t["output_tokens"],
            "{}",
            t["request_id"]
        );
        // The fixture's count holds preemptions from before the trace (`--wait-go` waits
        // for the tracer, not for the queue to empty) for requests that arrived before it.
        if arrived.contains(&t["request_id"]) {
            assert_eq!(s["preemptions"], t["preemptions"], "{}", t["request_id"]);
        }
        assert_same_end(s, &t);
        compared += 1;
        finished_unseen += u32::from(unseen(end));
    }
    eprintln!(
        "late copies {late}; {compared} requests compared, {finished_unseen} finished in an \
         unseen step, {untold} not compared; counters {}",
        run["counters"]["requests"]
    );
    assert!(compared > 100, "{compared} requests compared");
    assert!(finished_unseen > 0, "no request finished in an unseen step");
}

/// requests.csv rows by request id.
fn requests_by_id(path: &Path) -> HashMap<String, Row> {
    rows(path)
        .into_iter()
        .map(|r| (r["request_id"].clone(), r))
        .collect()
}

/// Whether a traced request's `queued_ns` is vLLM's stamp: taken inside `add_request`, up
/// to 100 µs before the fixture's own clock read after it returns.
fn has_vllm_stamp(truth: &Row, traced: &Row) -> bool {
    let early = num(truth, "queued_ns") as i64 - num(traced, "queued_ns") as i64;
    (0..100_000).contains(&early)
}

/// vLLM's queueing stamp lives in a request's first event until its first output, a step
/// or two later: a tracer that reads it late (here: stopped for a second, copies in the
/// trap) still has it, from the kernel side's copy made when the request was first listed.
#[test]
fn queueing_stamps_survive_a_stalled_tracer() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth");
    let out = dir.path().join("out");
    // The fixture's default load: requests are scheduled at once, and output within steps.
    let args = [
        "--wait-go",
        "--steps",
        "3000",
        "--execute-ms",
        "1",
        "--truth-dir",
        truth.to_str().unwrap(),
    ];
    let mut fixture = Fixture::spawn(&pyenv("3.12.1"), &args);
    let tracer = Tracer::attach_with(fixture.pid, &out, &["--snapshots", "sync"]);
    fixture.go();
    wait_for_rows(&out, 200);
    tracer.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(1));
    tracer.signal(libc::SIGCONT);
    assert!(fixture.wait().success());
    let (status, stderr) = tracer.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr:?}");
    let run = read_run_json(&out);
    let counters = &run["counters"];
    assert_eq!(counters["ring_buffer_drops"], 0, "{counters}");
    assert_eq!(counters["facts_dropped"], 0, "{counters}");
    assert_eq!(counters["requests"]["queued_from_step"], 0, "{counters}");

    let traced = requests_by_id(&out.join("requests.csv"));
    let trace_start = run["trace_start_ns"].as_u64().unwrap();
    let (mut queued, mut stamped) = (0, 0);
    for t in rows(&truth.join("requests.csv")) {
        let Some(s) = traced.get(&t["request_id"]) else {
            continue;
        };
        if num(&t, "queued_ns") < trace_start {
            continue;
        }
        queued += 1;
        stamped += u32::from(has_vllm_stamp(&t, s));
    }
    assert!(queued > 300, "{queued} requests");
    assert!(
        stamped * 20 >= queued * 19,
        "{stamped} of {queued} with vLLM's stamp"
    );
}

#[test]
fn shadow_copies_match_ground_truth_pyenv_3_10() {
    shadow_copies_match_ground_truth(&pyenv("3.10.13"), "shadow");
}

#[test]
fn shadow_copies_match_ground_truth_pyenv_3_11() {
    shadow_copies_match_ground_truth(&pyenv("3.11.7"), "shadow");
}

#[test]
fn shadow_copies_match_ground_truth_debian_3_14() {
    // The shadow copy reads the step's `scheduler_output` local through a tagged stackref.
    if let Some(python) = built_python("3.14", "python3.14") {
        shadow_copies_match_ground_truth(&python, "shadow");
    }
}

/// `auto` goes from copies in the trap to shadow ones on steps this long.
#[test]
fn shadow_copies_match_ground_truth_pyenv_3_12() {
    shadow_copies_match_ground_truth(&pyenv("3.12.1"), "auto");
}

#[test]
fn shadow_copies_match_ground_truth_pyenv_3_13() {
    shadow_copies_match_ground_truth(&pyenv("3.13.0"), "shadow");
}

#[test]
fn batches_and_reasons_match_ground_truth_pyenv_3_10() {
    lifecycles_match_ground_truth(&pyenv("3.10.13"), false);
}

#[test]
fn batches_and_reasons_match_ground_truth_pyenv_3_11() {
    lifecycles_match_ground_truth(&pyenv("3.11.7"), false);
}

#[test]
fn batches_and_reasons_match_ground_truth_pyenv_3_12() {
    lifecycles_match_ground_truth(&pyenv("3.12.1"), false);
}

#[test]
fn batches_and_reasons_match_ground_truth_pyenv_3_13() {
    lifecycles_match_ground_truth(&pyenv("3.13.0"), false);
}

#[test]
fn batches_and_reasons_match_ground_truth_debian_3_14() {
    // Frames hold tagged `_PyStackRef`s from 3.14: the kernel side reads a local through one.
    if let Some(python) = built_python("3.14", "python3.14") {
        lifecycles_match_ground_truth(&python, false);
    }
}

#[test]
fn lifecycles_match_ground_truth_debian_3_14() {
    if let Some(python) = built_python("3.14", "python3.14") {
        lifecycles_match_ground_truth(&python, true);
    }
}

#[test]
fn lifecycles_match_ground_truth_pyenv_3_11() {
    lifecycles_match_ground_truth(&pyenv("3.11.7"), true);
}

/// Requests that end in the step that first lists them keep their ids (the kernel side
/// copies them then), and the tracer's memory stays flat while tens of thousands pass.
#[test]
fn short_requests_keep_their_ids_and_memory_stays_flat() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut fixture = Fixture::spawn(
        &pyenv("3.12.1"),
        &[
            "--wait-go",
            "--steps",
            "0",
            "--num-requests",
            "30000",
            "--arrival-per-step",
            "40",
            "--execute-ms",
            "1",
            "--prompt-len",
            "4",
            "32",
            "--max-tokens",
            "1",
            "4",
            "--max-num-seqs",
            "256",
            "--max-num-batched-tokens",
            "2048",
            "--num-gpu-blocks",
            "4096",
            "--seed",
            "3",
        ],
    );
    // The kernel side's copy of each request's facts, which this test is about: `auto` may
    // go to shadow copies on these steps, where a dropped copy leaves a 1-token request
    // unnamed (once in a CI run under two busy loops).
    let tracer = Tracer::attach_with(fixture.pid, &out, &["--snapshots", "sync"]);
    fixture.go();
    let mut rss = Vec::new();
    while fixture.running() {
        rss.extend(tracer.rss_kb());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(fixture.wait().success());
    let (status, stderr) = tracer.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr:?}");

    let run = read_run_json(&out);
    assert_eq!(run["counters"]["request_reads"], 0);
    assert_eq!(run["counters"]["facts_dropped"], 0);
    let requests = rows(&out.join("requests.csv"));
    assert!(requests.len() > 25_000, "{}", requests.len());
    // A tracer lagging behind under load folds many steps per drain, where two short
    // requests can share object and id string addresses: each must keep its own name.
    let unnamed: Vec<_> = requests
        .iter()
        .filter(|r| !r["request_id"].starts_with("cmpl-fixture-"))
        .take(3)
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?}");
    // ... and its own name, not the other's.
    let ids: HashSet<&str> = requests.iter().map(|r| r["request_id"].as_str()).collect();
    assert_eq!(ids.len(), requests.len(), "a request id named two requests");
    let one_step = requests.iter().filter(|r| r["iterations"] == "1").count();
    assert!(one_step > 1000, "{one_step}");
    assert!(requests.iter().all(|r| !r["arrival_time_s"].is_empty()));

    // After the first quarter (allocations warm), no growth with the requests seen.
    assert!(rss.len() >= 8, "{rss:?}");
    let settled = &rss[rss.len() / 4..];
    let growth = settled.iter().max().unwrap() - settled.iter().min().unwrap();
    eprintln!("tracer RSS kB over the run: {rss:?}");
    assert!(growth < 8 * 1024, "RSS grew {growth} kB: {rss:?}");
}
