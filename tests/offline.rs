//! The offline subcommands on trace folders: `report`, `compare` and `export-trace`.
//!
//! Each is checked on synthetic runs whose every number is known (tests/support/synthetic.rs
//! writes consistent steps/requests/events/queues CSVs) by recomputing its numbers here from
//! the CSVs; `compare` also on two real fixture traces.

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use serde_json::Value;
use support::{
    synthetic::{synthetic_run, Costs, COSTS, PID, T0},
    trace_events::validate_trace,
    *,
};
use tracer::schema::rows::{EventKind, EventRow, Queue, QueueRow, RequestRow, StepRow};

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
    phases_are_recomputed(&summary, &steps);
    batch_buckets_are_recomputed(&summary, &steps);
    latencies_are_recomputed(&summary, &requests);
    wait_reasons_are_recomputed(&summary, &queues);
    preemptions_are_recomputed(&summary, &steps, &requests);
    printed_and_drawn(&stdout, &report, &steps);
}

/// Phase shares and percentiles; the simulated costs: schedule and update constant, execute
/// = base + per token.
fn phases_are_recomputed(summary: &Value, steps: &[StepRow]) {
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
}

/// Step-time percentiles per batch bucket.
fn batch_buckets_are_recomputed(summary: &Value, steps: &[StepRow]) {
    let mut buckets: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for st in steps {
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
}

/// TTFT / TPOT / E2E.
fn latencies_are_recomputed(summary: &Value, requests: &[RequestRow]) {
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
}

/// Waiting reasons from queues.csv.
fn wait_reasons_are_recomputed(summary: &Value, queues: &[QueueRow]) {
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
}

fn preemptions_are_recomputed(summary: &Value, steps: &[StepRow], requests: &[RequestRow]) {
    let preemptions: u64 = requests.iter().map(|r| u64::from(r.preemptions)).sum();
    assert!(preemptions > 10);
    assert_eq!(summary["preemptions"]["total"], preemptions);
    assert_eq!(
        summary["preemptions"]["steps_with_preemption"],
        steps.iter().filter(|s| s.preempted.unwrap() > 0).count() as u64
    );
}

/// The printed tables and the page carry the same numbers.
fn printed_and_drawn(stdout: &str, report: &Path, steps: &[StepRow]) {
    let step_ns: Vec<u64> = steps.iter().map(|s| s.step_ns).collect();
    let p50_ms = format!("{:.3}", nearest_rank(&step_ns, 50.0) as f64 / 1e6);
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

/// Writes a synthetic run to $SYNTHETIC_RUN (for looking at report and trace output).
#[test]
#[ignore]
fn write_synthetic_run() {
    let dir = std::env::var("SYNTHETIC_RUN").expect("set SYNTHETIC_RUN=<dir>");
    synthetic_run(Path::new(&dir), 3_000, COSTS, 7, "0.11.0");
}
