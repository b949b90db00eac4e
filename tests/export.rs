//! `tracer export --format features|blis|vidur` and the report's step-time model.
//!
//! The model must recover the coefficients of a step cost that is a known linear function
//! of the batch: exactly-known synthetic steps (phase ns = a + b·features + bounded noise),
//! and a real trace of the fixture engine, whose `execute_model` spins for
//! `--execute-ms + --prefill-token-us × prefill + --decode-token-us × decode`. The request
//! traces are read back with the simulators' own rules (BLIS's `LoadTraceV2` /
//! `parseTraceRecord`, Vidur's `TraceReplayRequestGenerator`; files cited in
//! tracer/src/export/{blis,vidur}.rs) and compared with requests.csv.

mod support;

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use serde_json::Value;
use support::{
    synthetic::{write_csv, Rng},
    *,
};
use tracer::schema::rows::{RequestRow, StepRow};

/// A CSV as (header, rows of cells).
fn cells(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// summary.json's fit of `phase` over `steps` (`prefill` / `decode_only`).
fn fit<'a>(summary: &'a Value, steps: &str, phase: &str) -> &'a Value {
    summary["model"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["steps"] == steps && f["phase"] == phase)
        .unwrap_or_else(|| panic!("no {steps} {phase} fit in {}", summary["model"]))
}

fn coefficient(fit: &Value, feature: &str) -> Option<f64> {
    fit["coefficients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["feature"] == feature)
        .unwrap()["ns_per_unit"]
        .as_f64()
}

/// `|got − want| ≤ tolerance × |want|`, with a message naming the coefficient.
fn assert_close(got: Option<f64>, want: f64, tolerance: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: not fitted"));
    assert!(
        (got - want).abs() <= tolerance * want.abs(),
        "{what}: fitted {got}, true {want} (tolerance {tolerance})"
    );
}

// ---------------------------------------------------------------------------------------
// Synthetic steps: phase times an exact linear function of the batch, plus bounded noise.
// ---------------------------------------------------------------------------------------

/// True costs of the synthetic engine, ns (per unit of each feature).
const SCHEDULE_BASE: f64 = 30_000.0;
const SCHEDULE_PER_REQUEST: f64 = 500.0;
const EXECUTE_BASE: f64 = 800_000.0;
const EXECUTE_PER_PREFILL_TOKEN: f64 = 1_500.0;
const EXECUTE_PER_DECODE_TOKEN: f64 = 20_000.0;
const EXECUTE_PER_CONTEXT_TOKEN: f64 = 3.0;
/// Half-width of the uniform noise on each phase, ns.
const NOISE: u64 = 10_000;

/// Tolerances of the synthetic fit (relative): the noise is 10 µs against token terms of
/// 0.1–10 ms, so per-token coefficients come out within 1 %, the intercept within 2 % and
/// the context coefficient (3 ns a token, its term ~50 µs) within 10 %.
const TOKEN_TOLERANCE: f64 = 0.01;
const BASE_TOLERANCE: f64 = 0.02;
const CONTEXT_TOLERANCE: f64 = 0.10;

/// Writes `n` steps to `dir`/steps.csv (every third step with a prefill chunk) and a few
/// requests to requests.csv.
fn synthetic_run(dir: &Path, n: u64) -> Vec<StepRow> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut t = 1_000_000_000;
    let mut steps = Vec::new();
    for step in 0..n {
        let (prefill_requests, prefill) = if step % 3 == 0 {
            (rng.range(1, 3) as u32, rng.range(16, 512) as u32)
        } else {
            (0, 0)
        };
        let decode = rng.range(u64::from(prefill_requests == 0), 32) as u32;
        let batch = prefill_requests + decode;
        let context: u64 = u64::from(decode) * rng.range(50, 600) + rng.range(0, 2_000);
        let schedule = (SCHEDULE_BASE + SCHEDULE_PER_REQUEST * f64::from(batch)) as u64
            + rng.noise(NOISE / 5)
            - NOISE / 5;
        let execute = (EXECUTE_BASE
            + EXECUTE_PER_PREFILL_TOKEN * f64::from(prefill)
            + EXECUTE_PER_DECODE_TOKEN * f64::from(decode)
            + EXECUTE_PER_CONTEXT_TOKEN * context as f64) as u64
            + rng.noise(NOISE)
            - NOISE;
        let update = 10_000 + rng.noise(NOISE / 5);
        steps.push(StepRow {
            step,
            pid: 77,
            tid: 77,
            start_ns: t,
            start_rel_ns: (t - 1_000_000_000) as i64,
            schedule_ns: schedule,
            execute_ns: execute,
            update_ns: update,
            step_ns: schedule + execute + update,
            tracer_ns: Some(rng.range(1_000, 9_000)),
            batch_size: Some(batch),
            scheduled_tokens: Some(prefill + decode),
            prefill_tokens: Some(prefill),
            decode_tokens: Some(decode),
            prefill_requests: Some(prefill_requests),
            decode_requests: Some(decode),
            new_requests: Some(prefill_requests.min(1)),
            resumed_requests: Some(0),
            context_tokens_sum: Some(context),
            context_tokens_max: Some(context.min(4096) as u32),
            running: Some(batch),
            waiting: Some(0),
            preempted: Some(u32::from(step % 97 == 0)),
            finished: Some(0),
            kv_blocks_used: Some((context / 16) as u32),
            kv_blocks_total: Some(4096),
            ..Default::default()
        });
        t += schedule + execute + update + 20_000;
    }
    write_csv(&dir.join("steps.csv"), &steps);
    steps
}

#[test]
fn report_fits_recover_a_known_linear_step_cost() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    synthetic_run(&run, 1_200);
    tracer_ok(&["report", s(&run), "-q"]);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report/summary.json")).unwrap())
            .unwrap();

    for kind in ["prefill", "decode_only"] {
        let execute = fit(&summary, kind, "execute");
        assert!(execute["r2"].as_f64().unwrap() > 0.99, "{execute}");
        assert_close(
            execute["intercept_ns"].as_f64(),
            EXECUTE_BASE,
            BASE_TOLERANCE,
            "execute intercept",
        );
        assert_close(
            coefficient(execute, "decode_tokens"),
            EXECUTE_PER_DECODE_TOKEN,
            TOKEN_TOLERANCE,
            "execute per decode token",
        );
        assert_close(
            coefficient(execute, "context_tokens_sum"),
            EXECUTE_PER_CONTEXT_TOKEN,
            CONTEXT_TOLERANCE,
            "execute per context token",
        );
        // No cost per prefill request beyond its tokens.
        let per_request = coefficient(execute, "prefill_requests").unwrap_or(0.0);
        assert!(
            per_request.abs() < 2_000.0,
            "{per_request} ns per prefill request"
        );
    }
    let prefill = fit(&summary, "prefill", "execute");
    assert_close(
        coefficient(prefill, "prefill_tokens"),
        EXECUTE_PER_PREFILL_TOKEN,
        TOKEN_TOLERANCE,
        "execute per prefill token",
    );
    assert_eq!(prefill["n"], 400);
    // Decode-only steps: no prefill token or request, so those are not identifiable.
    let decode = fit(&summary, "decode_only", "execute");
    assert_eq!(decode["n"], 800);
    assert_eq!(coefficient(decode, "prefill_tokens"), None);
    assert_eq!(coefficient(decode, "prefill_requests"), None);
    // The schedule cost per request (one decode token each, or a prefill chunk). Prefill
    // requests span only 1–3 a step: against ±2 µs of noise their coefficient's standard
    // error is ~70 ns (14 %), so it is held to 3 of those.
    for (kind, feature, tolerance) in [
        ("decode_only", "decode_tokens", 0.05),
        ("prefill", "decode_tokens", 0.05),
        ("prefill", "prefill_requests", 0.4),
    ] {
        assert_close(
            coefficient(fit(&summary, kind, "schedule"), feature),
            SCHEDULE_PER_REQUEST,
            tolerance,
            &format!("{kind} schedule per request ({feature})"),
        );
    }

    // The table and the chart.
    let md = std::fs::read_to_string(run.join("report/summary.md")).unwrap();
    assert!(md.contains("### Step-time model (OLS per phase)"), "{md}");
    assert!(md.contains("| decode_only | execute | 800 |"), "{md}");
    let svg = std::fs::read_to_string(run.join("report/model_fit.svg")).unwrap();
    assert!(svg.contains("predicted execute time (ms)"));
    assert!(svg.matches("<circle").count() > 1_000, "one point per step");
}

#[test]
fn features_are_the_steps_columns_with_their_units() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let steps = synthetic_run(&run, 300);
    let out = dir.path().join("features.csv");
    let stdout = tracer_ok(&["export", s(&run), "--format", "features", "-o", s(&out)]);
    assert!(stdout.contains("features.csv"), "{stdout}");
    let (header, rows) = cells(&out);
    assert_eq!(
        header,
        [
            "step",
            "pid",
            "start_rel_ns",
            "kind",
            "scheduled_tokens",
            "prefill_tokens",
            "decode_tokens",
            "batch_size",
            "prefill_requests",
            "decode_requests",
            "context_tokens_sum",
            "context_tokens_max",
            "new_requests",
            "resumed_requests",
            "preempted",
            "kv_blocks_used",
            "schedule_ns",
            "execute_ns",
            "update_ns",
            "step_ns",
            "tracer_ns",
        ],
        "no CUDA columns: no step has them"
    );
    assert_eq!(rows.len(), steps.len());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    // Every cell an integer count or ns, equal to steps.csv's.
    let int = |row: &[String], name: &str| -> u64 {
        row[col(name)]
            .parse()
            .unwrap_or_else(|e| panic!("{name} {:?}: {e}", row[col(name)]))
    };
    for (row, step) in rows.iter().zip(&steps) {
        assert_eq!(int(row, "step"), step.step);
        assert_eq!(int(row, "execute_ns"), step.execute_ns);
        assert_eq!(int(row, "step_ns"), step.step_ns);
        assert_eq!(Some(int(row, "tracer_ns")), step.tracer_ns);
        assert_eq!(
            Some(int(row, "context_tokens_sum")),
            step.context_tokens_sum
        );
        assert_eq!(Some(int(row, "prefill_tokens") as u32), step.prefill_tokens);
        assert_eq!(Some(int(row, "kv_blocks_used") as u32), step.kv_blocks_used);
        let kind = if step.prefill_tokens > Some(0) {
            "prefill"
        } else {
            "decode_only"
        };
        assert_eq!(row[col("kind")], kind);
    }

    // CUDA columns come along when a step has them; missing batch columns stay empty.
    let mut with_cuda = steps.clone();
    with_cuda[1].cuda_launches = Some(42);
    with_cuda[1].exec_gpu_wait_ns = Some(1_234);
    with_cuda[2].batch_size = None;
    with_cuda[2].prefill_tokens = None;
    write_csv(&run.join("steps.csv"), &with_cuda);
    tracer_ok(&["export", s(&run), "--format", "features", "-o", s(&out)]);
    let (header, rows) = cells(&out);
    assert_eq!(header[21..], ["cuda_launches", "exec_gpu_wait_ns"]);
    assert_eq!(rows[1][21..], ["42", "1234"]);
    assert_eq!(rows[0][21..], ["", ""]);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows[2][col("batch_size")], "");
    assert_eq!(rows[2][col("kind")], "");
}

// ---------------------------------------------------------------------------------------
// The request traces, parsed as the simulators parse them.
// ---------------------------------------------------------------------------------------

/// BLIS's `TraceHeader` / `TraceServerConfig` keys: its decoder rejects any other
/// (`KnownFields(true)`).
const BLIS_HEADER_KEYS: &[&str] = &[
    "trace_version",
    "time_unit",
    "created_at",
    "mode",
    "warm_up_requests",
    "workload_seed",
    "workload_spec",
    "session_context_growth",
    "server",
    "network",
    "goodput_slo_targets",
    "kv_offload",
    "observed_kv_metrics",
];
const BLIS_SERVER_KEYS: &[&str] = &[
    "type",
    "model",
    "tensor_parallel",
    "max_num_seqs",
    "block_size",
    "gpu_memory_utilization",
    "max_model_len",
];

/// A TraceV2 record with the fields replay and calibrate use.
#[derive(Debug)]
struct BlisRecord {
    request_id: i64,
    input_tokens: i64,
    output_tokens: i64,
    server_input_tokens: i64,
    arrival_time_us: i64,
    send_time_us: i64,
    first_chunk_time_us: i64,
    last_chunk_time_us: i64,
    num_chunks: i64,
    status: String,
    finish_reason: String,
}

/// The header as BLIS decodes it: top-level keys and the `server` block's, all known.
fn parse_blis_header(path: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = HashMap::new();
    let mut block = String::new();
    for line in text.lines() {
        let nested = line.starts_with("  ");
        let (key, value) = line.trim().split_once(':').unwrap();
        let value = value.trim().trim_matches('"').to_owned();
        if nested {
            assert_eq!(block, "server", "{line}");
            assert!(BLIS_SERVER_KEYS.contains(&key), "unknown server key {key}");
            out.insert(format!("server.{key}"), value);
        } else {
            assert!(BLIS_HEADER_KEYS.contains(&key), "unknown header key {key}");
            block = key.to_owned();
            out.insert(key.to_owned(), value);
        }
    }
    out
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(cell: &str) -> bool {
    match cell {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
        _ => panic!("ParseBool {cell:?}"),
    }
}

/// The data CSV as `LoadTraceV2` / `parseTraceRecord` read it: by position, after
/// detecting the optional columns by name.
fn parse_blis_data(path: &Path) -> Vec<BlisRecord> {
    let (header, rows) = cells(path);
    assert_eq!(header, tracer::offline::export::blis::COLUMNS);
    for optional in [
        "vllm_priority",
        "slo_target_us",
        "x_request_id",
        "adapter",
        "think_time_us",
    ] {
        assert!(!header.iter().any(|h| h == optional));
    }
    let int = |cell: &str| -> i64 { cell.parse().unwrap_or_else(|e| panic!("{cell:?}: {e}")) };
    let count = |cell: &str| -> i64 {
        let v = int(cell);
        assert!(v >= 0, "negative count {v}");
        v
    };
    rows.iter()
        .map(|row| {
            assert!(row.len() >= 27);
            for i in [5, 7, 9, 10, 11, 12, 13, 14, 17, 18, 23] {
                count(&row[i]);
            }
            go_parse_bool(&row[8]);
            let reason: f64 = row[15].parse().unwrap();
            assert!((0.0..=1.0).contains(&reason));
            BlisRecord {
                request_id: int(&row[0]),
                input_tokens: count(&row[9]),
                output_tokens: count(&row[10]),
                server_input_tokens: count(&row[18]),
                arrival_time_us: int(&row[19]),
                send_time_us: int(&row[20]),
                first_chunk_time_us: int(&row[21]),
                last_chunk_time_us: int(&row[22]),
                num_chunks: count(&row[23]),
                status: row[24].clone(),
                finish_reason: row[26].trim().to_owned(),
            }
        })
        .collect()
}

/// Vidur's generator: `pandas.read_csv`, columns by name, token counts `astype(int)` and
/// clipped to ≥ 1, `arrived_at` in seconds.
fn parse_vidur(path: &Path) -> Vec<(f64, i64, i64)> {
    let (header, rows) = cells(path);
    assert_eq!(
        header,
        ["arrived_at", "num_prefill_tokens", "num_decode_tokens"]
    );
    rows.iter()
        .map(|row| {
            let arrived: f64 = row[0].parse().unwrap();
            let tokens = |cell: &str| -> i64 { cell.parse::<i64>().unwrap().max(1) };
            (arrived, tokens(&row[1]), tokens(&row[2]))
        })
        .collect()
}

/// The exported traces of engine directory `run` agree with its requests.csv: the same
/// requests in queueing order, prompt and output tokens, and times in each format's unit
/// from the first arrival.
fn check_request_traces(run: &Path, out: &Path) {
    let mut requests: Vec<RequestRow> = read_csv(&run.join("requests.csv"));
    requests.retain(|r| r.prompt_tokens.is_some());
    requests.sort_by(|a, b| {
        (a.queued_ns, a.arrival_time_s.unwrap())
            .partial_cmp(&(b.queued_ns, b.arrival_time_s.unwrap()))
            .unwrap()
    });
    let origin = requests[0].queued_ns;
    let us = |t: u64| ((t - origin) / 1_000) as i64;

    let data = out.join("blis.csv");
    let written = tracer_ok(&["export", s(run), "--format", "blis", "-o", s(&data)]);
    assert!(written.contains("blis.yaml") && written.contains("blis.csv"));
    let header = parse_blis_header(&out.join("blis.yaml"));
    assert_eq!(header["time_unit"], "us");
    assert_eq!(header["mode"], "real");
    header["trace_version"].parse::<i64>().unwrap();
    let at_start = requests.iter().filter(|r| r.queued_ns == origin).count();
    assert_eq!(header["warm_up_requests"], at_start.to_string());
    let records = parse_blis_data(&data);
    assert_eq!(records.len(), requests.len());
    for (i, (rec, req)) in records.iter().zip(&requests).enumerate() {
        assert_eq!(rec.request_id, i as i64);
        assert_eq!(rec.input_tokens, i64::from(req.prompt_tokens.unwrap()));
        assert_eq!(rec.server_input_tokens, rec.input_tokens);
        assert_eq!(rec.output_tokens, i64::from(req.output_tokens));
        assert_eq!(rec.num_chunks, rec.output_tokens);
        assert_eq!(rec.arrival_time_us, us(req.queued_ns), "{req:?}");
        assert_eq!(rec.send_time_us, rec.arrival_time_us);
        assert_eq!(rec.first_chunk_time_us, req.first_token_ns.map_or(0, us));
        assert_eq!(rec.last_chunk_time_us, req.finished_ns.map_or(0, us));
        let (status, reason) = match req.finish_status.as_str() {
            "FINISHED_STOPPED" => ("ok", "stop"),
            "FINISHED_LENGTH_CAPPED" => ("ok", "length"),
            "FINISHED_ABORTED" => ("error", "abort"),
            "UNFINISHED" => ("incomplete", ""),
            other => panic!("unexpected status {other}"),
        };
        assert_eq!(
            (rec.status.as_str(), rec.finish_reason.as_str()),
            (status, reason)
        );
    }
    // Replay injects requests in time order.
    assert!(records
        .windows(2)
        .all(|w| w[0].send_time_us <= w[1].send_time_us));

    let vidur = out.join("vidur.csv");
    tracer_ok(&["export", s(run), "--format", "vidur", "-o", s(&vidur)]);
    let rows = parse_vidur(&vidur);
    assert_eq!(rows.len(), requests.len());
    assert_eq!(rows[0].0, 0.0);
    for ((arrived, prefill, decode), req) in rows.iter().zip(&requests) {
        let want = (req.queued_ns - origin) as f64 / 1e9;
        assert!((arrived - want).abs() < 1e-6, "{arrived} s vs {want} s");
        assert_eq!(*prefill, i64::from(req.prompt_tokens.unwrap()));
        assert_eq!(*decode, i64::from(req.output_tokens.max(1)));
    }
}

#[test]
fn request_traces_parse_as_the_simulators_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    synthetic_run(&run, 10);
    let ms = 1_000_000;
    let request = |id: &str, queued: u64, prompt: Option<u32>, status: &str| RequestRow {
        request_id: id.into(),
        pid: 77,
        arrival_time_s: Some(1.7e9 + queued as f64 / 1e9),
        queued_ns: queued,
        first_token_ns: (status != "UNFINISHED").then_some(queued + 20 * ms),
        finished_ns: status.starts_with("FINISHED").then_some(queued + 90 * ms),
        finish_status: status.into(),
        prompt_tokens: prompt,
        output_tokens: 12,
        ..Default::default()
    };
    let t0 = 5_000 * ms;
    let mut requests = vec![
        request("b", t0 + 3 * ms + 1_999, Some(300), "FINISHED_ABORTED"),
        request("a", t0, Some(100), "FINISHED_STOPPED"),
        request("late", t0 + 8 * ms, Some(7), "UNFINISHED"),
        request("unsized", t0 + 9 * ms, None, "FINISHED_STOPPED"),
        request("c", t0, Some(50), "FINISHED_LENGTH_CAPPED"),
    ];
    // In flight at the start: no first token; aborted at once: no output. `c` reached
    // vLLM before `a`, though both are first seen in one snapshot.
    requests[4].first_token_ns = None;
    requests[4].arrival_time_s = Some(requests[1].arrival_time_s.unwrap() - 1.0);
    requests[0].first_token_ns = None;
    requests[0].output_tokens = 0;
    write_csv(&run.join("requests.csv"), &requests);
    check_request_traces(&run, dir.path());
    let header = std::fs::read_to_string(dir.path().join("blis.yaml")).unwrap();
    assert!(header.contains("warm_up_requests: 2\n"), "{header}");
    // `a` and `c` share the first snapshot; vLLM's arrival time orders them.
    let records = parse_blis_data(&dir.path().join("blis.csv"));
    assert_eq!(
        records.iter().map(|r| r.input_tokens).collect::<Vec<_>>(),
        [50, 100, 300, 7]
    );
    assert_eq!(records[2].arrival_time_us, 3_001, "µs, truncated");

    // No requests.csv (a phase-only trace): a clear error, nothing written.
    std::fs::remove_file(run.join("requests.csv")).unwrap();
    let out = Command::new(tracer_bin())
        .args(["export", s(&run), "--format", "vidur"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no requests.csv"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// A real trace: the fixture engine with a known execute cost.
// ---------------------------------------------------------------------------------------

/// Execute cost of the fixture run, µs: base, per prefill token, per decode token.
const FIXTURE_COST_US: (f64, f64, f64) = (500.0, 2.0, 20.0);
/// Tolerance on the fitted per-token coefficients (relative): on our 2-core dev VM they
/// came out within 0.5 % (2.001 and 20.08 µs a token, with 7 % of the steps descheduled
/// 1–7 ms by other load and trimmed as outliers); the intercept carries the Python work
/// around the spin (measured +5 µs), allowed up to +20 %.
const FIXTURE_TOLERANCE: f64 = 0.05;

#[test]
fn traced_fixture_recovers_its_execute_cost() {
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (prefill, decode) = (FIXTURE_COST_US.1.to_string(), FIXTURE_COST_US.2.to_string());
    let mut fixture = Fixture::spawn(
        &pyenv("3.11.7"),
        &[
            "--wait-go",
            "--steps",
            "1500",
            "--execute-ms",
            &(FIXTURE_COST_US.0 / 1e3).to_string(),
            "--prefill-token-us",
            &prefill,
            "--decode-token-us",
            &decode,
            "--arrival-per-step",
            "0.6",
            "--prompt-len",
            "20",
            "400",
            "--max-tokens",
            "5",
            "60",
            "--seed",
            "7",
        ],
    );
    // What is tested is the report's fit of the traced step times, not the machine's
    // scheduler: with two busy loops on the 2 cores, most steps were descheduled for
    // milliseconds and the fit's R² fell to 0.10. A higher priority (we are root) keeps
    // the fixture on a core; on an idle machine it changes nothing.
    // SAFETY: plain syscall on the fixture's pid.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, fixture.pid, -10) };
    let tracer = Tracer::attach(fixture.pid, &out);
    fixture.go();
    assert!(fixture.wait().success());
    let (status, stderr) = tracer.finish(Duration::from_secs(60));
    assert!(status.success(), "{stderr:?}");

    tracer_ok(&["report", s(&out), "-q"]);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/summary.json")).unwrap())
            .unwrap();
    let (base_ns, prefill_ns, decode_ns) = (
        FIXTURE_COST_US.0 * 1e3,
        FIXTURE_COST_US.1 * 1e3,
        FIXTURE_COST_US.2 * 1e3,
    );
    for kind in ["prefill", "decode_only"] {
        let execute = fit(&summary, kind, "execute");
        assert!(execute["n"].as_u64().unwrap() >= 300, "{execute}");
        assert!(execute["r2"].as_f64().unwrap() > 0.98, "{execute}");
        let intercept = execute["intercept_ns"].as_f64().unwrap();
        assert!(
            (base_ns..base_ns * 1.2).contains(&intercept),
            "{kind} intercept {intercept} ns"
        );
        assert_close(
            coefficient(execute, "decode_tokens"),
            decode_ns,
            FIXTURE_TOLERANCE,
            &format!("{kind} execute per decode token"),
        );
    }
    assert_close(
        coefficient(fit(&summary, "prefill", "execute"), "prefill_tokens"),
        prefill_ns,
        FIXTURE_TOLERANCE,
        "execute per prefill token",
    );

    // Its request stream, exported and read back as the simulators do.
    check_request_traces(&out, dir.path());
}
