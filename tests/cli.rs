//! The user-facing subcommands: `report`, `compare`, `export-trace`, `doctor`, `probes`,
//! `run`, and `attach`'s engine discovery and live status.
//!
//! Report, compare and export are checked on synthetic runs whose every number is known
//! (a tiny deterministic engine simulation writes consistent steps/requests/events/queues
//! CSVs) by recomputing them here from the CSVs, and on real fixture traces; discovery on a
//! fake deployment whose processes carry vLLM's process titles.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::*;
use tracer::schema::rows::{
    EventKind, EventRow, Queue, QueueRow, RankRow, RequestRow, StepRow, WaitReason,
};

// ---------------------------------------------------------------------------------------
// A synthetic run: a small deterministic engine simulation, written as the tracer would.
// ---------------------------------------------------------------------------------------

/// Costs of the simulated engine, ns.
#[derive(Clone, Copy)]
struct Costs {
    schedule: u64,
    execute: u64,
    per_token: u64,
    update: u64,
}

const MAX_SEQS: usize = 8;
const TOKEN_BUDGET: u32 = 256;
const T0: u64 = 5_000_000_000_000;
const PID: u32 = 4242;

/// xorshift: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

struct SimRequest {
    id: String,
    prompt: u32,
    output: u32,
    computed: u32,
    generated: u32,
    row: RequestRow,
    waiting_since: Option<u64>,
}

/// Simulates `steps` steps and writes steps/requests/events/queues.csv and run.json into
/// `dir`. Every `preempt_every`-th step preempts the newest running request.
fn synthetic_run(dir: &Path, steps: u64, costs: Costs, seed: u64, vllm_version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(seed | 1);
    let mut requests: Vec<SimRequest> = Vec::new();
    let mut waiting: Vec<usize> = Vec::new();
    let mut running: Vec<usize> = Vec::new();
    let (mut step_rows, mut event_rows, mut queue_rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut t = T0 + 1_000_000;
    let event = |step: u64, t_ns: u64, id: &str, kind: EventKind, tokens: Option<u32>| EventRow {
        step,
        pid: PID,
        t_ns,
        t_rel_ns: (t_ns - T0) as i64,
        request_id: id.into(),
        event: kind,
        tokens,
        detail: String::new(),
    };
    for step in 0..steps {
        // Arrivals: one in 40 % of the steps (about 6 requests in flight), at the step's start.
        for _ in 0..u64::from(rng.range(0, 99) < 40) {
            let i = requests.len();
            let id = format!("req-{i}");
            requests.push(SimRequest {
                id: id.clone(),
                prompt: rng.range(16, 200) as u32,
                output: rng.range(2, 30) as u32,
                computed: 0,
                generated: 0,
                row: RequestRow {
                    request_id: id.clone(),
                    pid: PID,
                    queued_ns: t,
                    finish_status: "UNFINISHED".into(),
                    ..Default::default()
                },
                waiting_since: Some(t),
            });
            requests[i].row.prompt_tokens = Some(requests[i].prompt);
            waiting.push(i);
            event_rows.push(event(step, t, &id, EventKind::Arrived, None));
        }
        let start = t;
        let after_schedule = start + costs.schedule;
        // Schedule: running requests first (decode 1 token, or the rest of the prompt).
        let mut budget = TOKEN_BUDGET;
        let mut scheduled: Vec<(usize, u32)> = Vec::new();
        let mut preempted = 0;
        if step % 50 == 49 && running.len() > 1 {
            let victim = running.pop().unwrap();
            let r = &mut requests[victim];
            r.computed = 0;
            r.row.preemptions += 1;
            r.waiting_since = Some(after_schedule);
            waiting.insert(0, victim);
            preempted = 1;
            event_rows.push(event(
                step,
                after_schedule,
                &r.id.clone(),
                EventKind::Preempted,
                None,
            ));
        }
        for &i in &running {
            let r = &requests[i];
            let want = if r.computed < r.prompt {
                r.prompt - r.computed
            } else {
                1
            };
            let n = want.min(budget);
            if n > 0 {
                scheduled.push((i, n));
                budget -= n;
            }
        }
        let (mut new_requests, mut resumed) = (0, 0);
        let mut reasons: HashMap<usize, WaitReason> = HashMap::new();
        let mut blocked = false;
        let queue_before: Vec<usize> = waiting.clone();
        for &i in &queue_before {
            let reason = if blocked {
                Some(WaitReason::BlockedBehindHead)
            } else if preempted > 0 {
                // The step that preempted admits nobody (as vLLM ≤ 0.11).
                Some(WaitReason::Preempted)
            } else if running.len() >= MAX_SEQS {
                Some(WaitReason::MaxNumSeqs)
            } else if requests[i].prompt > budget {
                Some(WaitReason::TokenBudget)
            } else {
                None
            };
            if let Some(reason) = reason {
                reasons.insert(i, reason);
                blocked = true;
                continue;
            }
            let r = &mut requests[i];
            waiting.retain(|&w| w != i);
            running.push(i);
            budget -= r.prompt;
            scheduled.push((i, r.prompt));
            let since = r.waiting_since.take().unwrap();
            r.row.waiting_ns += after_schedule - since;
            r.row.longest_wait_ns = r.row.longest_wait_ns.max(after_schedule - since);
            let kind = if r.row.first_scheduled_ns.is_none() {
                new_requests += 1;
                r.row.first_scheduled_ns = Some(after_schedule);
                EventKind::Scheduled
            } else {
                resumed += 1;
                EventKind::Resumed
            };
            let id = r.id.clone();
            event_rows.push(event(step, after_schedule, &id, kind, None));
            event_rows.push(event(
                step,
                after_schedule,
                &id,
                EventKind::PrefillChunk,
                Some(requests[i].prompt),
            ));
        }
        for (position, &i) in running.iter().enumerate() {
            queue_rows.push(QueueRow {
                step,
                pid: PID,
                t_ns: after_schedule,
                request_id: requests[i].id.clone(),
                queue: Queue::Running,
                position: position as u32,
                computed_tokens: Some(requests[i].computed),
                scheduled_tokens: scheduled.iter().find(|s| s.0 == i).map_or(0, |s| s.1),
                reason: None,
            });
        }
        for (position, &i) in waiting.iter().enumerate() {
            queue_rows.push(QueueRow {
                step,
                pid: PID,
                t_ns: after_schedule,
                request_id: requests[i].id.clone(),
                queue: Queue::Waiting,
                position: position as u32,
                computed_tokens: Some(0),
                scheduled_tokens: 0,
                reason: reasons.get(&i).copied(),
            });
        }
        let tokens: u32 = scheduled.iter().map(|s| s.1).sum();
        let prefill: u32 = scheduled
            .iter()
            .filter(|(i, _)| requests[*i].computed < requests[*i].prompt)
            .map(|s| s.1)
            .sum();
        let execute = costs.execute + costs.per_token * u64::from(tokens);
        let end = after_schedule + execute + costs.update;
        // Update: a token for every request whose prompt is done.
        let mut finished = 0;
        for &(i, n) in &scheduled {
            let r = &mut requests[i];
            r.computed += n;
            r.row.iterations += 1;
            r.row.execution_ns += end - start;
            if r.computed < r.prompt {
                continue;
            }
            r.generated += 1;
            if r.row.first_token_ns.is_none() {
                r.row.first_token_ns = Some(end);
                event_rows.push(event(
                    step,
                    end,
                    &r.id.clone(),
                    EventKind::FirstToken,
                    Some(1),
                ));
            }
            if r.generated == r.output {
                finished += 1;
                let row = &mut r.row;
                row.finished_ns = Some(end);
                row.output_tokens = r.generated;
                row.finish_status = "FINISHED_LENGTH_CAPPED".into();
                row.ttft_ns = Some(row.first_token_ns.unwrap() - row.queued_ns);
                row.e2e_ns = Some(end - row.queued_ns);
                row.tpot_ns = (r.generated > 1)
                    .then(|| (end - row.first_token_ns.unwrap()) / u64::from(r.generated - 1));
                let mut e = event(
                    step,
                    end,
                    &r.id.clone(),
                    EventKind::Finished,
                    Some(r.generated),
                );
                e.detail = "FINISHED_LENGTH_CAPPED".into();
                event_rows.push(e);
            }
        }
        running.retain(|&i| requests[i].row.finished_ns.is_none());
        step_rows.push(StepRow {
            step,
            pid: PID,
            tid: PID,
            start_ns: start,
            start_rel_ns: (start - T0) as i64,
            schedule_ns: costs.schedule,
            execute_ns: execute,
            update_ns: costs.update,
            step_ns: end - start,
            batch_size: Some(scheduled.len() as u32),
            scheduled_tokens: Some(tokens),
            prefill_tokens: Some(prefill),
            decode_tokens: Some(tokens - prefill),
            new_requests: Some(new_requests),
            resumed_requests: Some(resumed),
            running: Some(running.len() as u32 + finished),
            waiting: Some(waiting.len() as u32),
            preempted: Some(preempted),
            finished: Some(finished),
            kv_blocks_used: Some(tokens / 16),
            kv_blocks_total: Some(512),
            ..Default::default()
        });
        t = end + 5_000;
    }
    for r in &mut requests {
        r.row.output_tokens = r.generated;
    }
    write_csv(&dir.join("steps.csv"), &step_rows);
    write_csv(
        &dir.join("requests.csv"),
        &requests.iter().map(|r| r.row.clone()).collect::<Vec<_>>(),
    );
    write_csv(&dir.join("events.csv"), &event_rows);
    write_csv(&dir.join("queues.csv"), &queue_rows);
    let run = serde_json::json!({
        "tracer_version": "test",
        "pid": PID,
        "python_version": "3.11.7",
        "vllm_version": vllm_version,
        "config": {"max_num_seqs": MAX_SEQS, "max_num_batched_tokens": TOKEN_BUDGET},
        "labels": {"run": "synthetic"},
        "trace_start_ns": T0,
        "trace_end_ns": t,
    });
    std::fs::write(dir.join("run.json"), run.to_string()).unwrap();
}

fn write_csv<T: serde::Serialize>(path: &Path, rows: &[T]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    for row in rows {
        w.serialize(row).unwrap();
    }
    w.flush().unwrap();
}

const COSTS: Costs = Costs {
    schedule: 40_000,
    execute: 1_000_000,
    per_token: 2_000,
    update: 15_000,
};

// ---------------------------------------------------------------------------------------
// Recomputations, independent of the tracer's report code.
// ---------------------------------------------------------------------------------------

/// Nearest-rank percentile of unsorted values.
fn nearest_rank(values: &[u64], p: f64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn bucket_of(batch: u32) -> &'static str {
    match batch {
        0 => "0",
        1 => "1",
        2 => "2",
        3..=4 => "3–4",
        5..=8 => "5–8",
        9..=16 => "9–16",
        _ => "17+",
    }
}

fn tracer(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(tracer_bin()).args(args).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tracer_ok(args: &[&str]) -> String {
    let (status, stdout, stderr) = tracer(args);
    assert!(
        status.success(),
        "tracer {args:?} failed: {stderr}\n{stdout}"
    );
    stdout
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------

#[test]
fn report_numbers_equal_a_recomputation_from_the_csvs() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    synthetic_run(&run, 3_000, COSTS, 7, "0.11.0");
    let stdout = tracer_ok(&["report", s(&run)]);
    let report = run.join("report");
    let summary = read_json(&report.join("summary.json"));

    let steps: Vec<StepRow> = read_csv(&run.join("steps.csv"));
    let requests: Vec<RequestRow> = read_csv(&run.join("requests.csv"));
    let queues: Vec<QueueRow> = read_csv(&run.join("queues.csv"));
    assert_eq!(summary["steps"], steps.len() as u64);

    // Phase shares and percentiles.
    let total: u64 = steps.iter().map(|s| s.step_ns).sum();
    let phases: [(&str, Vec<u64>); 4] = [
        ("schedule", steps.iter().map(|s| s.schedule_ns).collect()),
        ("execute", steps.iter().map(|s| s.execute_ns).collect()),
        ("update", steps.iter().map(|s| s.update_ns).collect()),
        ("step", steps.iter().map(|s| s.step_ns).collect()),
    ];
    for (k, (name, values)) in phases.iter().enumerate() {
        let p = &summary["phases"][k];
        assert_eq!(p["name"], *name);
        let sum: u64 = values.iter().sum();
        assert_eq!(p["total_ns"], sum);
        let share = 100.0 * sum as f64 / total as f64;
        assert!((p["share_pct"].as_f64().unwrap() - share).abs() < 1e-9);
        assert_eq!(p["p50_ns"], nearest_rank(values, 50.0));
        assert_eq!(p["p99_ns"], nearest_rank(values, 99.0));
    }
    // The simulated costs: schedule and update constant, execute = base + per token.
    assert_eq!(summary["phases"][0]["p50_ns"], COSTS.schedule);
    let exec_mean = summary["phases"][1]["mean_ns"].as_f64().unwrap();
    let tokens_mean = steps
        .iter()
        .map(|s| s.scheduled_tokens.unwrap() as f64)
        .sum::<f64>()
        / steps.len() as f64;
    let expected = COSTS.execute as f64 + COSTS.per_token as f64 * tokens_mean;
    assert!(
        (exec_mean - expected).abs() < 1e-3,
        "{exec_mean} vs {expected}"
    );

    // Step-time percentiles per batch bucket.
    let mut buckets: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for st in &steps {
        buckets
            .entry(bucket_of(st.batch_size.unwrap()))
            .or_default()
            .push(st.step_ns);
    }
    let by_batch = summary["by_batch"].as_array().unwrap();
    assert_eq!(by_batch.len(), buckets.len(), "{by_batch:?}");
    for d in by_batch {
        let label = d["label"].as_str().unwrap();
        let values = &buckets[label];
        assert_eq!(d["n"], values.len() as u64, "{label}");
        for (key, p) in [("p50_ns", 50.0), ("p90_ns", 90.0), ("p99_ns", 99.0)] {
            assert_eq!(d[key], nearest_rank(values, p), "{label} {key}");
        }
    }

    // TTFT / TPOT / E2E.
    let metrics: [(&str, Vec<u64>); 3] = [
        ("TTFT", requests.iter().filter_map(|r| r.ttft_ns).collect()),
        ("TPOT", requests.iter().filter_map(|r| r.tpot_ns).collect()),
        ("E2E", requests.iter().filter_map(|r| r.e2e_ns).collect()),
    ];
    for (k, (name, values)) in metrics.iter().enumerate() {
        let d = &summary["latency"][k];
        assert_eq!(d["label"], *name);
        assert!(values.len() > 100, "{name}: {} values", values.len());
        assert_eq!(d["n"], values.len() as u64);
        assert_eq!(d["p50_ns"], nearest_rank(values, 50.0));
        assert_eq!(d["p99_ns"], nearest_rank(values, 99.0));
    }
    assert_eq!(summary["requests"], requests.len() as u64);

    // Waiting reasons from queues.csv.
    let waiting: Vec<&QueueRow> = queues
        .iter()
        .filter(|q| q.queue == Queue::Waiting)
        .collect();
    let reasons = summary["wait_reasons"].as_array().unwrap();
    assert!(reasons.len() >= 3, "{reasons:?}");
    let total_waiting: u64 = reasons
        .iter()
        .map(|r| r["request_steps"].as_u64().unwrap())
        .sum();
    assert_eq!(total_waiting, waiting.len() as u64);
    for r in reasons {
        let name = r["reason"].as_str().unwrap();
        let rows: Vec<&&QueueRow> = waiting
            .iter()
            .filter(|q| {
                q.reason.map_or("unknown".to_owned(), |x| {
                    serde_json::to_value(x)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_owned()
                }) == name
            })
            .collect();
        assert_eq!(r["request_steps"], rows.len() as u64, "{name}");
        let mut ids: Vec<&str> = rows.iter().map(|q| q.request_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(r["requests"], ids.len() as u64, "{name}");
    }

    // Preemptions.
    let preemptions: u64 = requests.iter().map(|r| u64::from(r.preemptions)).sum();
    assert!(preemptions > 10);
    assert_eq!(summary["preemptions"]["total"], preemptions);
    assert_eq!(
        summary["preemptions"]["steps_with_preemption"],
        steps.iter().filter(|s| s.preempted.unwrap() > 0).count() as u64
    );

    // The printed tables and the page carry the same numbers.
    let p50_ms = format!("{:.3}", nearest_rank(&phases[3].1, 50.0) as f64 / 1e6);
    assert!(
        stdout.contains("Phase shares") && stdout.contains(&p50_ms),
        "{stdout}"
    );
    assert!(stdout.contains("vLLM 0.11.0"), "{stdout}");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains(&p50_ms));
    for name in [
        "phases_over_time",
        "step_vs_tokens",
        "queues_over_time",
        "requests_gantt",
    ] {
        let svg = std::fs::read_to_string(report.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{name}"
        );
        // Drawn data, not a "not captured" placeholder.
        assert!(!svg.contains("not captured"), "{name}");
        assert!(
            svg.matches("<rect").count()
                + svg.matches("<polyline").count()
                + svg.matches("<circle").count()
                + svg.matches("<polygon").count()
                > 5,
            "{name}"
        );
    }
    // The four above and the step-time model's chart.
    assert_eq!(html.matches("<svg").count(), 5);
}

#[test]
fn report_on_a_phase_only_run_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    // The columns a trace without batch capture writes.
    std::fs::write(
        run.join("steps.csv"),
        "step,pid,tid,start_ns,start_rel_ns,schedule_ns,execute_ns,update_ns,step_ns\n\
         0,1,1,1000,0,10,100,5,115\n1,1,1,2000,1000,20,200,5,225\n",
    )
    .unwrap();
    let stdout = tracer_ok(&["report", s(&run)]);
    assert!(stdout.contains("requests were not captured"), "{stdout}");
    assert!(stdout.contains("batch sizes were not captured"), "{stdout}");
    let summary = read_json(&run.join("report/summary.json"));
    assert_eq!(summary["phases"][3]["total_ns"], 340);
    assert_eq!(summary["by_batch"][0]["label"], "all");
    assert_eq!(summary["by_batch"][0]["n"], 2);
}

#[test]
fn report_of_a_directory_without_a_trace_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, stderr) = tracer(&["report", s(dir.path())]);
    assert!(!status.success());
    assert!(stderr.contains("has no steps.csv"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// compare
// ---------------------------------------------------------------------------------------

fn section<'a>(c: &'a Value, title: &str) -> &'a Vec<Value> {
    c["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["title"] == title)
        .unwrap_or_else(|| panic!("no section {title}"))["rows"]
        .as_array()
        .unwrap()
}

fn compared<'a>(rows: &'a [Value], name: &str, stat: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name && r["stat"] == stat)
        .unwrap_or_else(|| panic!("no row {name} {stat}"))
}

#[test]
fn compare_ratios_of_runs_with_known_step_costs() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    synthetic_run(
        &a,
        2_000,
        Costs {
            per_token: 0,
            ..COSTS
        },
        11,
        "0.10.1",
    );
    // Same workload (seed), execute twice as expensive, schedule unchanged.
    synthetic_run(
        &b,
        2_000,
        Costs {
            per_token: 0,
            execute: 2 * COSTS.execute,
            ..COSTS
        },
        11,
        "0.11.0",
    );
    let c: Value = serde_json::from_str(&tracer_ok(&["compare", s(&a), s(&b), "--json"])).unwrap();
    assert!(c["a"]["label"].as_str().unwrap().contains("vLLM 0.10.1"));
    assert!(c["b"]["label"].as_str().unwrap().contains("vLLM 0.11.0"));
    assert!(c["b"]["label"].as_str().unwrap().contains("max_num_seqs=8"));
    let phases = section(&c, "Phases per step");
    let execute = compared(phases, "execute", "mean");
    assert!(
        (execute["ratio"].as_f64().unwrap() - 2.0).abs() < 1e-12,
        "{execute}"
    );
    assert!(execute["p_value"].as_f64().unwrap() < 1e-6, "{execute}");
    let schedule = compared(phases, "schedule", "mean");
    assert_eq!(schedule["ratio"], 1.0);
    assert_eq!(
        schedule["p_value"], 1.0,
        "identical schedule times are not a difference"
    );
    let step = compared(phases, "step", "p50");
    let expected = (COSTS.schedule + 2 * COSTS.execute + COSTS.update) as f64
        / (COSTS.schedule + COSTS.execute + COSTS.update) as f64;
    assert!(
        (step["ratio"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{step}"
    );
    // Requests take longer in B: every step does.
    let ttft = compared(section(&c, "Request latency"), "TTFT", "p50");
    assert!(ttft["ratio"].as_f64().unwrap() > 1.2, "{ttft}");
    assert!(!section(&c, "Preemptions").is_empty());

    let text = tracer_ok(&["compare", s(&a), s(&b)]);
    assert!(text.contains("B/A") && text.contains("2.000"), "{text}");
    // Shares print as %, not as the phases' ms.
    let share = compared(phases, "execute", "share %");
    let shown = format!("{:.1}", share["a"].as_f64().unwrap());
    assert!(
        text.lines()
            .any(|l| l.contains("execute") && l.contains("share %") && l.contains(&shown)),
        "execute share {shown} not in\n{text}"
    );
}

/// Two real fixture traces whose execute phase costs 0.5 and 1.0 ms: compare must see ×2.
#[test]
fn compare_two_real_fixture_traces() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (name, execute_ms) in [("a", "0.5"), ("b", "1.0")] {
        let fixture = Fixture::spawn(&pyenv("3.11.7"), &["--execute-ms", execute_ms]);
        let out = dir.path().join(name);
        tracer_ok(&[
            "attach",
            "--pid",
            &fixture.pid.to_string(),
            "-o",
            s(&out),
            "-d",
            "1.5",
            "-q",
        ]);
        outs.push(out);
    }
    let c: Value =
        serde_json::from_str(&tracer_ok(&["compare", s(&outs[0]), s(&outs[1]), "--json"])).unwrap();
    let execute = compared(section(&c, "Phases per step"), "execute", "p50");
    let ratio = execute["ratio"].as_f64().unwrap();
    assert!((1.8..2.2).contains(&ratio), "execute p50 ratio {ratio}");
    assert!(
        compared(section(&c, "Phases per step"), "execute", "mean")["p_value"]
            .as_f64()
            .unwrap()
            < 1e-6
    );
}

// ---------------------------------------------------------------------------------------
// export-trace (Chrome JSON trace format, as Perfetto's importer reads it)
// ---------------------------------------------------------------------------------------

/// The trace-event format's rules that Perfetto's JSON importer enforces: the events it
/// knows, numeric timestamps, B/E pairs balanced and properly nested per thread, in time
/// order, metadata with names. Returns each thread's slices as (name, begin µs, end µs, depth).
fn validate_trace(trace: &Value) -> HashMap<(u64, u64), Vec<(String, f64, f64, usize)>> {
    let events = trace["traceEvents"].as_array().expect("traceEvents array");
    // Per thread: (ts, file order, phase, name); the importer sorts by ts, keeping file
    // order among equal timestamps.
    let mut tracks: HashMap<(u64, u64), Vec<(f64, usize, String, String)>> = HashMap::new();
    for (order, e) in events.iter().enumerate() {
        let ph = e["ph"].as_str().expect("ph");
        let name = e["name"].as_str().expect("name");
        let pid = e["pid"].as_u64().expect("integer pid");
        assert!(pid <= u64::from(u32::MAX));
        match ph {
            "M" => {
                assert!(
                    [
                        "process_name",
                        "thread_name",
                        "process_sort_index",
                        "thread_sort_index"
                    ]
                    .contains(&name),
                    "{e}"
                );
                if name.ends_with("sort_index") {
                    e["args"]["sort_index"].as_i64().expect("sort_index");
                } else {
                    assert!(e["args"]["name"].is_string(), "{e}");
                }
                if name.starts_with("thread_") {
                    e["tid"].as_u64().expect("thread_name tid");
                }
            }
            "B" | "E" | "i" => {
                let tid = e["tid"].as_u64().expect("tid");
                let ts = e["ts"].as_f64().expect("numeric ts");
                assert!(ts >= 0.0, "{e}");
                if ph == "i" {
                    assert_eq!(e["s"], "t");
                }
                tracks
                    .entry((pid, tid))
                    .or_default()
                    .push((ts, order, ph.into(), name.into()));
            }
            "C" => {
                e["ts"].as_f64().expect("numeric ts");
                let args = e["args"].as_object().expect("counter args");
                assert!(
                    !args.is_empty() && args.values().all(Value::is_number),
                    "{e}"
                );
            }
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    let mut slices: HashMap<(u64, u64), Vec<(String, f64, f64, usize)>> = HashMap::new();
    for (key, mut track) in tracks {
        track.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut stack: Vec<(String, f64)> = Vec::new();
        for (ts, _, ph, name) in track {
            match ph.as_str() {
                "B" => stack.push((name, ts)),
                "E" => {
                    let (open, begin) = stack
                        .pop()
                        .unwrap_or_else(|| panic!("E without B on {key:?}"));
                    assert_eq!(open, name, "misnested E on {key:?}");
                    slices
                        .entry(key)
                        .or_default()
                        .push((open, begin, ts, stack.len()));
                }
                _ => {}
            }
        }
        assert!(stack.is_empty(), "unclosed slices on {key:?}: {stack:?}");
    }
    for list in slices.values_mut() {
        list.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.3.cmp(&b.3)));
    }
    slices
}

#[test]
fn exported_trace_is_valid_and_has_every_step_and_request() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    synthetic_run(&run, 500, COSTS, 3, "0.11.0");
    let stdout = tracer_ok(&["export-trace", s(&run)]);
    assert!(stdout.contains("trace.json"), "{stdout}");
    let trace = read_json(&run.join("trace.json"));
    let slices = validate_trace(&trace);

    let steps: Vec<StepRow> = read_csv(&run.join("steps.csv"));
    let engine = &slices[&(u64::from(PID), u64::from(PID))];
    let step_slices: Vec<_> = engine.iter().filter(|s| s.0 == "step").collect();
    assert_eq!(step_slices.len(), steps.len());
    for (slice, row) in step_slices.iter().zip(&steps) {
        assert_eq!(slice.3, 0, "steps are top-level");
        let begin = (row.start_ns - T0) as f64 / 1e3;
        assert!((slice.1 - begin).abs() < 1e-6);
        assert!((slice.2 - slice.1 - row.step_ns as f64 / 1e3).abs() < 1e-6);
    }
    for phase in ["schedule", "execute", "update"] {
        let n = engine.iter().filter(|s| s.0 == phase && s.3 == 1).count();
        assert_eq!(n, steps.len(), "{phase} slices nested in steps");
    }

    // A track per request; its spans follow the request's events.
    let requests: Vec<RequestRow> = read_csv(&run.join("requests.csv"));
    let events: Vec<EventRow> = read_csv(&run.join("events.csv"));
    let request_pid = u64::from((1u32 << 30) + PID);
    let names: HashMap<u64, String> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "thread_name" && e["pid"] == request_pid)
        .map(|e| {
            (
                e["tid"].as_u64().unwrap(),
                e["args"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(names.len(), requests.len());
    let preempted = requests
        .iter()
        .find(|r| r.preemptions > 0)
        .expect("a preempted request");
    let tid = names
        .iter()
        .find(|(_, n)| **n == preempted.request_id)
        .unwrap()
        .0;
    let spans: Vec<&str> = slices[&(request_pid, *tid)]
        .iter()
        .map(|s| s.0.as_str())
        .collect();
    assert_eq!(
        &spans[..4],
        ["waiting", "running", "preempted", "running"],
        "{spans:?}"
    );
    let finished = events
        .iter()
        .filter(|e| e.request_id == preempted.request_id && e.event == EventKind::Finished)
        .count();
    assert_eq!(finished, 1);
    let last = slices[&(request_pid, *tid)].last().unwrap();
    assert!((last.2 - (preempted.finished_ns.unwrap() - T0) as f64 / 1e3).abs() < 1e-6);
}

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

#[test]
fn readme_troubleshooting_is_doctors_checks() {
    let generated = tracer_ok(&["doctor", "--markdown"]);
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = "<!-- doctor:begin -->\n";
    let section = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once("<!-- doctor:end -->"))
        .map(|(s, _)| s)
        .expect("README has a doctor section");
    assert_eq!(
        section, generated,
        "README's troubleshooting is stale: paste `tracer doctor --markdown`"
    );
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

fn kill_and_wait(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
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

/// A child leading its own process group, which is killed on drop, also when the test panics
/// while starting it: a leaked engine would hold the test's output pipe open and hang CI.
struct ProcessGroup(std::process::Child);

impl ProcessGroup {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
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

// ---------------------------------------------------------------------------------------
// run: launch and trace from the start
// ---------------------------------------------------------------------------------------

#[test]
fn run_launches_the_fixture_and_traces_every_measured_step() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let truth_path = dir.path().join("truth.csv");
    let script = root().join("tests/fixtures/engine/run_engine.py");
    let (status, _, stderr) = tracer(&[
        "run",
        "-o",
        s(&out),
        "--label",
        "launched=yes",
        "--",
        &pyenv("3.11.7"),
        s(&script),
        // A long warmup inside the busy loop: the tracer attaches during it.
        "--warmup",
        "4000",
        "--steps",
        "1500",
        "--execute-ms",
        "0.3",
        "--truth",
        s(&truth_path),
    ]);
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("waiting for vLLM's engine loop"),
        "{stderr}"
    );
    assert!(stderr.contains("target exited"), "{stderr}");
    let truth: Vec<TruthRow> = read_csv(&truth_path);
    let traced: Vec<StepRow> = read_csv(&out.join("steps.csv"));
    // (Once in CI's loaded runs the fixture logged only 494: the tracer's account of it.)
    assert_eq!(truth.len(), 1500, "{stderr}");
    // Every measured step is in the trace (the measured ones are the last 1500 traced).
    assert!(traced.len() >= truth.len(), "{} traced", traced.len());
    // Each measured step is matched by time: the fixture's own first timestamp in `step()`
    // falls inside exactly one traced step (a bound on the distance from the entry would
    // fail when the thread is preempted in between on a loaded machine).
    let missing: Vec<u64> = truth
        .iter()
        .filter(|t| {
            traced
                .iter()
                .filter(|s| s.start_ns <= t.start_ns && t.start_ns < s.start_ns + s.step_ns)
                .count()
                != 1
        })
        .map(|t| t.step)
        .collect();
    assert!(
        missing.is_empty(),
        "measured steps not traced: {missing:?}; run.json counters: {}",
        read_run_json(&out)["counters"]
    );
    assert_eq!(read_run_json(&out)["labels"]["launched"], "yes");
    validate_trace(&read_json(&out.join("trace.json")));
}

/// A launcher that execs the interpreter later (a pyenv shim, `sh -c '…; exec python …'`):
/// the pid first runs a shell, then Python; and a look before the interpreter is up fails.
/// Both must be looked at again (the quick start's `python3` failed 3 of 3 through pyenv).
#[test]
fn run_follows_a_wrapper_that_execs_the_interpreter_later() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = root().join("tests/fixtures/engine/run_engine.py");
    let command = format!(
        "sleep 0.5; exec {} {} --warmup 2000 --steps 800 --execute-ms 0.3",
        pyenv("3.12.1"),
        s(&script)
    );
    let (status, _, stderr) = tracer(&["run", "-o", s(&out), "--", "sh", "-c", &command]);
    assert!(status.success(), "{stderr}");
    let traced: Vec<StepRow> = read_csv(&out.join("steps.csv"));
    assert!(traced.len() >= 800, "{} steps traced", traced.len());
}

#[test]
fn run_fails_clearly_when_the_command_never_starts_an_engine() {
    let (status, _, stderr) = tracer(&[
        "run",
        "-o",
        "/tmp/unused-tracer-out",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("exited") && stderr.contains("before a vLLM engine loop started"),
        "{stderr}"
    );
    let (status, _, stderr) = tracer(&[
        "run",
        "-o",
        "/tmp/unused-tracer-out",
        "--wait",
        "1",
        "--",
        "sleep",
        "30",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("no vLLM engine loop started within 1 s"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Live status
// ---------------------------------------------------------------------------------------

#[test]
fn status_line_on_a_terminal_and_quiet_with_q() {
    let _serial = exclusive();
    let fixture = Fixture::spawn(&pyenv("3.11.7"), &["--execute-ms", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let command = format!(
        "{} attach --pid {} -o {} -d 2.5",
        tracer_bin(),
        fixture.pid,
        out.display()
    );
    // `script` gives the tracer a terminal: the line is rewritten in place.
    let tty = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text}");
    let updates: Vec<&str> = text
        .split("\r\x1b[K")
        .skip(1)
        .filter(|u| u.contains("steps/s"))
        .collect();
    assert!(updates.len() >= 2, "{text:?}");
    assert!(
        updates
            .iter()
            .all(|u| u.contains("drops") && !u.contains('\n')),
        "{updates:?}"
    );
    // The summary starts on a clean line after the status line is cleared.
    assert!(text.contains("tracer: duration reached;"), "{text}");

    let (status, stderr) = run_tracer(&[
        "attach",
        "--pid",
        &fixture.pid.to_string(),
        "-o",
        s(&out),
        "-d",
        "1.2",
        "-q",
    ]);
    assert!(status.success());
    assert!(!stderr.contains("steps/s"), "{stderr}");
}

/// Writes a synthetic run to $SYNTHETIC_RUN (for looking at report and trace output).
#[test]
#[ignore]
fn write_synthetic_run() {
    let dir = std::env::var("SYNTHETIC_RUN").expect("set SYNTHETIC_RUN=<dir>");
    synthetic_run(Path::new(&dir), 3_000, COSTS, 7, "0.11.0");
}

#[test]
fn readme_column_reference_names_every_column() {
    use tracer::live::sinks::csv_sink::header;
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split_once("## Output columns")
        .and_then(|(_, rest)| rest.split_once("\n## "))
        .map(|(s, _)| s)
        .expect("README has an Output columns section");
    for (file, columns) in [
        ("steps.csv", header::<StepRow>()),
        ("requests.csv", header::<RequestRow>()),
        ("events.csv", header::<EventRow>()),
        ("queues.csv", header::<QueueRow>()),
        ("ranks.csv", header::<RankRow>()),
    ] {
        let table = section
            .split_once(&format!("`{file}`"))
            .map(|(_, rest)| rest.split("\n\n`").next().unwrap())
            .unwrap_or_else(|| panic!("no table for {file}"));
        for column in columns {
            assert!(
                table.contains(&format!("`{column}`")),
                "{file}: column {column} is not in README's reference"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A newcomer's first commands: a closed pipe, --help, a negative duration
// ---------------------------------------------------------------------------------------

/// `tracer ARGS` with stdout a pipe whose reader is gone, as in `tracer … | head` once head
/// has read its lines and exited. Returns the status and stderr.
fn tracer_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(tracer_bin())
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn closed_stdout_pipe_exits_0_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    synthetic_run(&a, 300, COSTS, 3, "0.10.1");
    synthetic_run(&b, 300, COSTS, 5, "0.11.0");
    let fixture = Fixture::spawn(&pyenv("3.12.1"), &["--execute-ms", "1"]);
    let pid = fixture.pid.to_string();
    let report_out = dir.path().join("report");
    let trace_out = dir.path().join("trace.json");
    let features_out = dir.path().join("features.csv");
    let commands: &[&[&str]] = &[
        &["probes", "--pid", &pid, "--json"],
        &["probes", "--pid", &pid],
        &["report", s(&a), "-o", s(&report_out)],
        &["compare", s(&a), s(&b)],
        &["compare", s(&a), s(&b), "--json"],
        &[
            "export",
            s(&a),
            "--format",
            "features",
            "-o",
            s(&features_out),
        ],
        &["export-trace", s(&a), "-o", s(&trace_out)],
        &["doctor", "--markdown"],
        &["--help"],
    ];
    for args in commands {
        // Each has something to write, so the closed pipe is really hit.
        assert!(!tracer_ok(args).is_empty(), "{args:?} wrote nothing");
        let (status, stderr) = tracer_into_closed_pipe(args);
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} said: {stderr}");
    }
}

#[test]
fn every_subcommand_help_says_what_it_does() {
    for sub in [
        "attach",
        "run",
        "doctor",
        "probes",
        "report",
        "compare",
        "export",
        "export-trace",
    ] {
        let help = tracer_ok(&[sub, "--help"]);
        let about = help.lines().next().unwrap_or_default();
        assert!(
            !about.trim().is_empty() && !about.starts_with("Usage:"),
            "`tracer {sub} --help` starts without a description:\n{help}"
        );
    }
    // attach names every capability doctor checks.
    let attach = tracer_ok(&["attach", "--help"]);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"] {
        assert!(attach.contains(cap), "attach --help lacks {cap}:\n{attach}");
    }
    // The top-level help describes every export format, not just seed.
    let top = tracer_ok(&["--help"]);
    for format in ["seed", "features", "blis", "vidur"] {
        assert!(top.contains(format), "tracer --help lacks {format}:\n{top}");
    }
}

#[test]
fn negative_seconds_get_their_own_message() {
    for args in [
        &["attach", "--pid", "1", "--duration", "-1"][..],
        &["attach", "--pid", "1", "-d", "-0.5"],
        &["run", "--duration", "-1", "--", "true"],
        &["run", "--wait", "-3", "--", "true"],
    ] {
        let (status, stdout, stderr) = tracer(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}{stdout}");
        assert!(
            stderr.contains("must be 0 seconds or more") && !stderr.contains("unexpected argument"),
            "{args:?}: {stderr}"
        );
    }
}
