//! `trace.json`: a trace's CSVs as a Chrome JSON trace (the "Trace Event Format"), which
//! Perfetto's UI (ui.perfetto.dev) and chrome://tracing open.
//!
//! Tracks: per engine process, a thread `engine loop` with a `step` slice per step and its
//! `schedule` / `execute` / `update` slices nested inside (step details and CUDA counters
//! as args), and counter tracks for the queues, scheduled tokens, KV blocks and every
//! `cuda_*` column; per engine, a process `requests` with one track per request showing its
//! `waiting` / `running` / `preempted` spans and a `first token` instant; with tensor
//! parallelism (ranks.csv), per worker rank a process `rank TP<n>` whose `GPU wait` slices
//! are each step's last wait of that rank, so a straggler shows as the rank whose waits start
//! last (and the others' as the longer ones).
//!
//! Slices are written as B/E pairs, not X: a viewer turns µs floats into ns by truncating,
//! so an X child could end a nanosecond after its parent and be dropped as misnested;
//! B/E pairs nest by order whatever the rounding. Events stream to the file one by one.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};

use crate::{
    offline::report::spans::lifecycles,
    schema::{
        load::Run,
        out_dir::{self, OutDir},
        rows::{RankRow, StepRow},
    },
};

/// Request tracks of engine `pid` live in process `REQUESTS_PID_BASE + pid` (Linux pids
/// stay below 2^22, so these never clash with real ones).
pub const REQUESTS_PID_BASE: u32 = 1 << 30;

pub struct Exported {
    pub path: PathBuf,
    pub events: u64,
}

struct Writer {
    out: BufWriter<File>,
    events: u64,
    /// Time zero of the file: the run's start, so timestamps stay small.
    base_ns: u64,
}

impl Writer {
    fn event(&mut self, event: &Value) -> Result<()> {
        if self.events > 0 {
            self.out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut self.out, event)?;
        self.events += 1;
        Ok(())
    }

    /// µs since the base, exact to the ns in decimal.
    fn ts(&self, t_ns: u64) -> Value {
        json!(t_ns.saturating_sub(self.base_ns) as f64 / 1e3)
    }

    fn metadata(&mut self, name: &str, pid: u32, tid: Option<u32>, args: Value) -> Result<()> {
        let mut e = json!({"name": name, "ph": "M", "pid": pid, "args": args});
        if let Some(tid) = tid {
            e["tid"] = json!(tid);
        }
        self.event(&e)
    }

    fn slice(
        &mut self,
        ph: &str,
        name: &str,
        pid: u32,
        tid: u32,
        t_ns: u64,
        args: Option<Value>,
    ) -> Result<()> {
        let mut e = json!({"name": name, "ph": ph, "pid": pid, "tid": tid, "ts": self.ts(t_ns)});
        if let Some(args) = args {
            e["args"] = args;
        }
        self.event(&e)
    }
}

/// Writes `trace.json` for the run in `run_dir` (to `out`, default `run_dir/trace.json`).
pub fn export(run_dir: &Path, out: Option<&Path>) -> Result<Exported> {
    match out {
        None => export_into(run_dir, &OutDir::create(run_dir)?, "trace.json"),
        Some(path) => {
            let (dir, name) = out_dir::parent_and_name(path)?;
            export_into(run_dir, &OutDir::create(dir)?, name)
        }
    }
}

/// Writes the trace of the run in `run_dir` as file `name` of the open directory `dir`.
pub fn export_into(run_dir: &Path, dir: &OutDir, name: &str) -> Result<Exported> {
    let run = Run::load(run_dir)?;
    let path = dir.join(name);
    let file: File = dir.create_file(name)?;
    let (start_ns, end_ns) = run.window();
    let mut w = Writer {
        out: BufWriter::new(file),
        events: 0,
        base_ns: start_ns,
    };
    w.out
        .write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
    write_engines(&mut w, &run)?;
    write_ranks(&mut w, &run)?;
    write_requests(&mut w, &run, end_ns)?;
    let meta = json!({
        "tracer": run.label(),
        "trace_start_monotonic_ns": start_ns,
        "source": run_dir.display().to_string(),
    });
    write!(w.out, "\n],\"metadata\":{meta}}}\n")?;
    w.out
        .flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Exported {
        path,
        events: w.events,
    })
}

/// Per engine process a thread `engine loop` with its steps, and the counter tracks.
fn write_engines(w: &mut Writer, run: &Run) -> Result<()> {
    let mut pids: Vec<u32> = run.steps.iter().map(|s| s.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for (i, &pid) in pids.iter().enumerate() {
        w.metadata(
            "process_name",
            pid,
            None,
            json!({"name": format!("vLLM engine {pid}")}),
        )?;
        w.metadata(
            "process_sort_index",
            pid,
            None,
            json!({"sort_index": 2 * i}),
        )?;
    }
    let mut named_threads = Vec::new();
    for (step, cuda) in run.steps.iter().zip(&run.cuda) {
        let (pid, tid) = (step.pid, step.tid);
        if !named_threads.contains(&(pid, tid)) {
            named_threads.push((pid, tid));
            w.metadata(
                "thread_name",
                pid,
                Some(tid),
                json!({"name": "engine loop"}),
            )?;
        }
        write_step(w, step, step_args(step, cuda))?;
        write_step_counters(w, step, cuda)?;
    }
    Ok(())
}

/// The step slice's args: its number, the batch details observed, the CUDA columns, and
/// the slowest rank.
fn step_args(step: &StepRow, cuda: &BTreeMap<String, f64>) -> Map<String, Value> {
    let mut args = Map::new();
    args.insert("step".into(), json!(step.step));
    let details = [
        ("batch_size", step.batch_size.map(u64::from)),
        ("scheduled_tokens", step.scheduled_tokens.map(u64::from)),
        ("prefill_tokens", step.prefill_tokens.map(u64::from)),
        ("decode_tokens", step.decode_tokens.map(u64::from)),
        ("new_requests", step.new_requests.map(u64::from)),
        ("running", step.running.map(u64::from)),
        ("waiting", step.waiting.map(u64::from)),
        ("preempted", step.preempted.map(u64::from)),
        ("finished", step.finished.map(u64::from)),
        ("kv_blocks_used", step.kv_blocks_used.map(u64::from)),
    ];
    for (name, value) in details {
        if let Some(v) = value {
            args.insert(name.into(), json!(v));
        }
    }
    for (name, value) in cuda {
        args.insert(name.clone(), json!(value));
    }
    if let (Some(rank), Some(skew)) = (&step.slowest_rank, step.rank_skew_ns) {
        args.insert("slowest_rank".into(), json!(rank));
        args.insert("rank_skew_ns".into(), json!(skew));
    }
    args
}

/// The `step` slice with its phases nested inside.
fn write_step(w: &mut Writer, step: &StepRow, args: Map<String, Value>) -> Result<()> {
    let (pid, tid) = (step.pid, step.tid);
    let t0 = step.start_ns;
    let t1 = t0 + step.schedule_ns;
    let t2 = t1 + step.execute_ns;
    let t3 = t2 + step.update_ns;
    let end = (t0 + step.step_ns).max(t3);
    w.slice("B", "step", pid, tid, t0, Some(Value::Object(args)))?;
    for (name, from, to) in [
        ("schedule", t0, t1),
        ("execute", t1, t2),
        ("update", t2, t3),
    ] {
        w.slice("B", name, pid, tid, from, None)?;
        w.slice("E", name, pid, tid, to, None)?;
    }
    w.slice("E", "step", pid, tid, end, None)
}

/// The step's values on the counter tracks (queues, scheduled tokens, KV blocks, CUDA),
/// at its start; a track without a value this step gets no sample.
fn write_step_counters(w: &mut Writer, step: &StepRow, cuda: &BTreeMap<String, f64>) -> Result<()> {
    let (pid, ts) = (step.pid, w.ts(step.start_ns));
    let counters = [
        (
            "queues",
            json!({"running": step.running, "waiting": step.waiting}),
        ),
        (
            "scheduled tokens",
            json!({"prefill": step.prefill_tokens, "decode": step.decode_tokens}),
        ),
        ("KV blocks used", json!({"used": step.kv_blocks_used})),
    ];
    for (name, values) in counters {
        let values: Map<String, Value> = values
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !values.is_empty() {
            w.event(&json!({"name": name, "ph": "C", "pid": pid, "ts": ts, "args": values}))?;
        }
    }
    for (name, value) in cuda {
        w.event(&json!({"name": name, "ph": "C", "pid": pid, "ts": ts, "args": {"value": value}}))?;
    }
    Ok(())
}

/// Per worker rank (ranks.csv of each engine directory, streamed): a process holding one
/// `GPU wait` slice per step, from the start to the end of its last wait in the step.
fn write_ranks(w: &mut Writer, run: &Run) -> Result<()> {
    let mut named = Vec::new();
    for dir in &run.engine_dirs {
        let path = dir.join("ranks.csv");
        if !path.exists() {
            continue;
        }
        let mut reader =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        for row in reader.deserialize::<RankRow>() {
            let row = row.with_context(|| format!("reading {}", path.display()))?;
            let pid = row.worker_pid;
            if !named.contains(&pid) {
                named.push(pid);
                let name = format!("rank {} (worker {pid} of engine {})", row.rank, row.pid);
                w.metadata("process_name", pid, None, json!({ "name": name }))?;
                w.metadata("thread_name", pid, Some(pid), json!({"name": "CUDA waits"}))?;
            }
            let (Some(start), Some(end)) = (row.wait_start_ns, row.wait_end_ns) else {
                continue;
            };
            let args = json!({
                "step": row.step,
                "cuda_launches": row.cuda_launches,
                "cuda_graph_launches": row.cuda_graph_launches,
                "gpu_wait_ns": row.gpu_wait_ns,
            });
            w.slice("B", "GPU wait", pid, pid, start, Some(args))?;
            w.slice("E", "GPU wait", pid, pid, end.max(start), None)?;
        }
    }
    Ok(())
}

fn write_requests(w: &mut Writer, run: &Run, end_ns: u64) -> Result<()> {
    let mut named = Vec::new();
    for (i, life) in lifecycles(&run.events, end_ns).iter().enumerate() {
        let pid = REQUESTS_PID_BASE + life.pid;
        if !named.contains(&pid) {
            named.push(pid);
            w.metadata(
                "process_name",
                pid,
                None,
                json!({"name": format!("requests of engine {}", life.pid)}),
            )?;
            w.metadata(
                "process_sort_index",
                pid,
                None,
                json!({"sort_index": 2 * named.len() + 1}),
            )?;
        }
        // One track per request; tids only need to be distinct within the process.
        let tid = i as u32 + 1;
        w.metadata(
            "thread_name",
            pid,
            Some(tid),
            json!({"name": life.request_id}),
        )?;
        // Arrival order, not name order (req-10 would sort before req-2).
        w.metadata(
            "thread_sort_index",
            pid,
            Some(tid),
            json!({"sort_index": tid}),
        )?;
        for span in &life.spans {
            let mut args = json!({"request_id": life.request_id});
            if span.open {
                args["open_at_trace_end"] = json!(true);
            }
            w.slice("B", span.state.name(), pid, tid, span.start_ns, Some(args))?;
            w.slice("E", span.state.name(), pid, tid, span.end_ns, None)?;
        }
        if let Some(t) = life.first_token_ns {
            let ts = w.ts(t);
            w.event(&json!({"name": "first token", "ph": "i", "s": "t", "pid": pid, "tid": tid, "ts": ts}))?;
        }
    }
    Ok(())
}
