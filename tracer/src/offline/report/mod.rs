//! `tracer report DIR`: summary tables and charts of one trace, from its CSVs.
//!
//! Writes `DIR/report/`: `index.html` (tables and charts in one self-contained page),
//! `summary.md`, `summary.json` (every number of the tables, ns), and one SVG per chart;
//! prints the tables. The modules: [`summary`] (rows → numbers, with [`stats`] and the
//! step-time fit of [`model`]), [`table`] and [`plots`] (numbers → text, HTML, SVG),
//! [`spans`] (events → request spans, also used by the Perfetto export). Reads the folder
//! through [`crate::schema`] only.

pub mod model;
pub mod plots;
pub mod spans;
pub mod stats;
pub mod summary;
pub mod table;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Result;
use summary::Summary;
use table::{escape, ms, Table};

use crate::schema::load::Run;

/// The summary tables of one run.
pub fn tables(summary: &Summary, run: &Run) -> Vec<Table> {
    vec![
        phase_table(summary),
        batch_table(summary, run),
        latency_table(summary),
        wait_reason_table(summary, run),
        preemption_table(summary),
        rank_table(summary),
        model::table(&summary.model),
    ]
}

fn phase_table(summary: &Summary) -> Table {
    let mut phases = Table::new(
        "Phase shares",
        &["phase", "share %", "mean ms", "p50 ms", "p99 ms", "total s"],
    );
    for p in &summary.phases {
        phases.row(vec![
            p.name.into(),
            format!("{:.1}", p.share_pct),
            ms(Some(p.mean_ns)),
            ms(Some(p.p50_ns as f64)),
            ms(Some(p.p99_ns as f64)),
            format!("{:.3}", p.total_ns as f64 / 1e9),
        ]);
    }
    phases.with_note(format!(
        "{} steps over {:.1} s, {} engine(s); share = phase time / step time",
        summary.steps, summary.duration_s, summary.engines
    ))
}

fn batch_table(summary: &Summary, run: &Run) -> Table {
    let mut by_batch = Table::new(
        "Step time by batch size",
        &[
            "batch size",
            "steps",
            "mean ms",
            "p50 ms",
            "p90 ms",
            "p99 ms",
        ],
    );
    for d in &summary.by_batch {
        by_batch.row(distribution_cells(d));
    }
    if run.steps.iter().all(|s| s.batch_size.is_none()) {
        by_batch = by_batch.with_note("batch sizes were not captured in this run: all steps");
    }
    by_batch
}

fn latency_table(summary: &Summary) -> Table {
    let mut latency = Table::new(
        "Request latency",
        &[
            "metric", "requests", "mean ms", "p50 ms", "p90 ms", "p99 ms",
        ],
    );
    for d in &summary.latency {
        latency.row(distribution_cells(d));
    }
    match summary.requests {
        None => latency.with_note("requests were not captured in this run (no requests.csv)"),
        Some(n) => latency.with_note(format!(
            "{n} requests; TTFT and E2E from when the engine queued the request, TPOT per output token after the first"
        )),
    }
}

fn wait_reason_table(summary: &Summary, run: &Run) -> Table {
    let mut reasons = Table::new(
        "Why requests waited",
        &["reason", "request-steps", "share %", "requests"],
    );
    for r in &summary.wait_reasons {
        reasons.row(vec![
            r.reason.clone(),
            r.request_steps.to_string(),
            format!("{:.1}", r.share_pct),
            r.requests.to_string(),
        ]);
    }
    if run.has_queues {
        reasons.with_note("a request-step is one request waiting through one step")
    } else {
        reasons.with_note("waiting reasons were not captured in this run (no queues.csv)")
    }
}

fn preemption_table(summary: &Summary) -> Table {
    let mut preempt = Table::new("Preemptions", &["what", "count"]);
    let Some(p) = &summary.preemptions else {
        return preempt.with_note("preemptions were not captured in this run");
    };
    preempt.row(vec!["preemptions".into(), p.total.to_string()]);
    let optional = [
        ("requests preempted at least once", p.requests_preempted),
        ("most preemptions of one request", p.max_per_request),
        ("steps that preempted", p.steps_with_preemption),
    ];
    for (what, n) in optional {
        if let Some(n) = n {
            preempt.row(vec![what.into(), n.to_string()]);
        }
    }
    preempt
}

fn rank_table(summary: &Summary) -> Table {
    let mut ranks = Table::new(
        "Tensor-parallel ranks",
        &[
            "rank",
            "worker pid",
            "steps",
            "launches/step",
            "graph launches/step",
            "syncs/step",
            "GPU wait p50 ms",
            "GPU wait p99 ms",
            "slowest in steps",
        ],
    );
    if summary.ranks.is_empty() {
        return ranks.with_note(
            "no worker process made CUDA calls in this run (no ranks.csv rows): the engine \
             process made them, or CUDA was not traced",
        );
    }
    let engines: std::collections::BTreeSet<u32> =
        summary.ranks.iter().map(|r| r.engine_pid).collect();
    for r in &summary.ranks {
        ranks.row(vec![
            if engines.len() > 1 {
                format!("{} (engine {})", r.rank, r.engine_pid)
            } else {
                r.rank.clone()
            },
            r.worker_pid.to_string(),
            r.steps.to_string(),
            r.launches_per_step
                .map_or("-".into(), |n| format!("{n:.1}")),
            format!("{:.1}", r.graph_launches_per_step),
            format!("{:.2}", r.syncs_per_step),
            ms(r.gpu_wait.as_ref().map(|d| d.p50_ns as f64)),
            ms(r.gpu_wait.as_ref().map(|d| d.p99_ns as f64)),
            r.slowest_steps.to_string(),
        ]);
    }
    ranks.with_note(match &summary.rank_skew {
        Some(skew) => format!(
            "slowest = the rank that began its last wait last, the one the others waited for; \
             it began p50 {} ms, p99 {} ms after the first ({} steps with two or more ranks waiting)",
            ms(Some(skew.p50_ns as f64)),
            ms(Some(skew.p99_ns as f64)),
            skew.n
        ),
        None => "no step had two or more ranks waiting: no slowest rank".into(),
    })
}

fn distribution_cells(d: &summary::Distribution) -> Vec<String> {
    vec![
        d.label.clone(),
        d.n.to_string(),
        ms(Some(d.mean_ns)),
        ms(Some(d.p50_ns as f64)),
        ms(Some(d.p90_ns as f64)),
        ms(Some(d.p99_ns as f64)),
    ]
}

/// What `tracer report` wrote.
pub struct Written {
    pub dir: PathBuf,
    pub summary: Summary,
    pub text: String,
}

/// Loads `run_dir`, writes the report into `out_dir` (default `run_dir/report`).
pub fn write(run_dir: &Path, out_dir: Option<&Path>) -> Result<Written> {
    let run = Run::load(run_dir)?;
    let summary = summary::summarize(&run);
    let tables = tables(&summary, &run);
    let plots = plots::all(&run)?;
    let dir = out_dir.map_or_else(|| run_dir.join("report"), Path::to_path_buf);
    let out = crate::schema::out_dir::OutDir::create(&dir)?;
    let save = |name: &str, text: &str| out.write(name, text.as_bytes());

    let label = run.label();
    let mut text = format!("Run {}: {label}\n\n", run_dir.display());
    let mut md = format!("# tracer report: {}\n\n{label}\n\n", run_dir.display());
    for t in &tables {
        text.push_str(&t.text());
        text.push('\n');
        md.push_str(&t.markdown());
    }
    for p in &plots {
        save(&format!("{}.svg", p.name), &p.svg)?;
        let _ = writeln!(md, "![{}]({}.svg)\n", p.title, p.name);
    }
    save("summary.md", &md)?;
    save("summary.json", &serde_json::to_string_pretty(&summary)?)?;
    save("index.html", &html(run_dir, &label, &run, &tables, &plots))?;
    Ok(Written { dir, summary, text })
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1000px;color:#222}\
table{border-collapse:collapse;margin-bottom:1em;display:block;max-width:100%;overflow-x:auto}td,th{border:1px solid #ccc;padding:3px 10px}\
td:not(:first-child){text-align:right}th{background:#f0f0f0}.note{color:#666;font-size:90%}\
.meta td{text-align:left!important}figure{margin:1em 0}svg{max-width:100%;height:auto}";

fn html(run_dir: &Path, label: &str, run: &Run, tables: &[Table], plots: &[plots::Plot]) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tracer report: {0}</title>\
         <style>{STYLE}</style></head><body>\n<h1>tracer report: {0}</h1>\n<p>{1}</p>\n",
        escape(&run_dir.display().to_string()),
        escape(label)
    );
    let info = run.info();
    let meta: Vec<(&str, String)> = [
        ("tracer", info.get("tracer_version")),
        ("target", info.get("cmdline")),
        ("Python", info.get("python_version")),
        ("vLLM", info.get("vllm_version")),
        ("end", info.get("end_reason")),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?.as_str()?.to_owned())))
    .collect();
    if !meta.is_empty() {
        out.push_str("<table class=\"meta\">\n");
        for (k, v) in meta {
            let _ = writeln!(out, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
        }
        out.push_str("</table>\n");
    }
    for t in tables {
        out.push_str(&t.html());
    }
    for p in plots {
        // Inline, so the page is one file to share; the same SVGs are saved beside it.
        let svg = p.svg.find("<svg").map_or(p.svg.as_str(), |i| &p.svg[i..]);
        let _ = writeln!(out, "<h2>{}</h2>\n<figure>{svg}</figure>", escape(p.title));
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::load::random_rows::{trace_dir, Rng};

    /// The report of whatever random rows load is built without a panic (debug build:
    /// overflow checks on).
    #[test]
    fn report_of_random_csv_rows_never_panics() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for _ in 0..300 {
            let dir = trace_dir(&mut rng);
            if let Ok(run) = Run::load(dir.path()) {
                let summary = summary::summarize(&run);
                let _ = tables(&summary, &run);
                let _ = model::fits(&run);
            }
        }
    }
}
