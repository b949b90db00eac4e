//! `tracer compare DIR_A DIR_B`: the report's tables side by side, B ÷ A, each run labelled
//! by its vLLM version, config and labels from run.json.
//!
//! Distributions (per-step phase times, step times per batch bucket, request latencies) get
//! a two-sided Mann–Whitney U p-value on their central row: with thousands of steps even a
//! 1 % shift is "significant", so read p together with the ratio.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::{
    offline::report::{
        stats::mann_whitney_p,
        summary::{self, Distribution, Summary},
        table::Table,
    },
    schema::{load::Run, rows::PHASES},
};

#[derive(Debug, Serialize)]
pub struct Side {
    pub dir: String,
    pub label: String,
    pub steps: u64,
}

/// The stat of rows that are a share of the whole, in %.
const SHARE: &str = "share %";

/// One compared number. Times are ns, shares %, counts plain.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    /// `mean`, `p50`, `share %`, `count`, …
    pub stat: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// b ÷ a.
    pub ratio: Option<f64>,
    pub p_value: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Section {
    pub title: String,
    /// Whether `a`/`b` are durations in ns (shown as ms), but for its [`SHARE`] rows.
    pub times: bool,
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    pub sections: Vec<Section>,
}

fn row(name: &str, stat: &str, a: Option<f64>, b: Option<f64>, p_value: Option<f64>) -> Row {
    Row {
        name: name.into(),
        stat: stat.into(),
        ratio: match (a, b) {
            (Some(a), Some(b)) if a != 0.0 => Some(b / a),
            _ => None,
        },
        a,
        b,
        p_value,
    }
}

/// Mean, p50 (with the test), p90, p99 rows of two distributions of the same thing.
fn distribution_rows(
    name: &str,
    a: Option<&Distribution>,
    b: Option<&Distribution>,
    values: (&[u64], &[u64]),
) -> Vec<Row> {
    let stat = |d: Option<&Distribution>, f: fn(&Distribution) -> f64| d.map(f);
    vec![
        row(
            name,
            "mean",
            stat(a, |d| d.mean_ns),
            stat(b, |d| d.mean_ns),
            mann_whitney_p(values.0, values.1),
        ),
        row(
            name,
            "p50",
            stat(a, |d| d.p50_ns as f64),
            stat(b, |d| d.p50_ns as f64),
            None,
        ),
        row(
            name,
            "p90",
            stat(a, |d| d.p90_ns as f64),
            stat(b, |d| d.p90_ns as f64),
            None,
        ),
        row(
            name,
            "p99",
            stat(a, |d| d.p99_ns as f64),
            stat(b, |d| d.p99_ns as f64),
            None,
        ),
    ]
}

/// Both sides of a comparison: A's then B's.
type Pair<'a, T> = (&'a T, &'a T);

pub fn compare(dir_a: &Path, dir_b: &Path) -> Result<Comparison> {
    let (run_a, run_b) = (Run::load(dir_a)?, Run::load(dir_b)?);
    let (sum_a, sum_b) = (summary::summarize(&run_a), summary::summarize(&run_b));
    let side = |dir: &Path, run: &Run, s: &Summary| Side {
        dir: dir.display().to_string(),
        label: run.label(),
        steps: s.steps,
    };
    let (runs, sums) = ((&run_a, &run_b), (&sum_a, &sum_b));
    let section = |title: &str, times: bool, rows: Vec<Row>| Section {
        title: title.into(),
        times,
        rows,
    };
    let sections = vec![
        section("Phases per step", true, phase_rows(runs, sums)),
        section("Step time by batch size", true, batch_rows(runs)),
        section("Request latency", true, latency_rows(runs)),
        section("Why requests waited", false, wait_reason_rows(sums)),
        section("Preemptions", false, preemption_rows(sums)),
    ];
    Ok(Comparison {
        a: side(dir_a, &run_a, &sum_a),
        b: side(dir_b, &run_b, &sum_b),
        sections,
    })
}

/// Per phase, its per-step distributions and (but for `step`) its share of the step.
fn phase_rows((run_a, run_b): Pair<Run>, (sum_a, sum_b): Pair<Summary>) -> Vec<Row> {
    let mut rows = Vec::new();
    for (name, get) in PHASES {
        let values = |run: &Run| -> Vec<u64> { run.steps.iter().map(get).collect() };
        let (mut va, mut vb) = (values(run_a), values(run_b));
        let (da, db) = (
            Distribution::of(name, &mut va),
            Distribution::of(name, &mut vb),
        );
        rows.extend(distribution_rows(
            name,
            da.as_ref(),
            db.as_ref(),
            (&va, &vb),
        ));
        let share = |s: &Summary| {
            s.phases
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.share_pct)
        };
        if name != "step" {
            rows.push(row(name, SHARE, share(sum_a), share(sum_b), None));
        }
    }
    rows
}

/// Step times per batch-size bucket of either run, in the order the runs list them.
fn batch_rows((run_a, run_b): Pair<Run>) -> Vec<Row> {
    let (by_a, by_b) = (
        summary::step_times_by_batch(run_a),
        summary::step_times_by_batch(run_b),
    );
    let mut labels: Vec<&String> = by_a.iter().chain(&by_b).map(|(l, _)| l).collect();
    labels.dedup();
    let mut seen = Vec::new();
    let mut rows = Vec::new();
    for label in labels {
        if seen.contains(&label) {
            continue;
        }
        seen.push(label);
        let find = |by: &[(String, Vec<u64>)]| -> Vec<u64> {
            by.iter()
                .find(|(l, _)| l == label)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (mut va, mut vb) = (find(&by_a), find(&by_b));
        let (da, db) = (
            Distribution::of(label.as_str(), &mut va),
            Distribution::of(label.as_str(), &mut vb),
        );
        let name = format!("batch {label} (n {} / {})", va.len(), vb.len());
        rows.extend(
            distribution_rows(&name, da.as_ref(), db.as_ref(), (&va, &vb))
                .into_iter()
                .filter(|r| r.stat != "p90"),
        );
    }
    rows
}

/// Request latency distributions that either run has.
fn latency_rows((run_a, run_b): Pair<Run>) -> Vec<Row> {
    let (lat_a, lat_b) = (summary::latencies(run_a), summary::latencies(run_b));
    let mut rows = Vec::new();
    for ((name, mut va), (_, mut vb)) in lat_a.into_iter().zip(lat_b) {
        let (da, db) = (
            Distribution::of(name, &mut va),
            Distribution::of(name, &mut vb),
        );
        if da.is_some() || db.is_some() {
            rows.extend(distribution_rows(
                name,
                da.as_ref(),
                db.as_ref(),
                (&va, &vb),
            ));
        }
    }
    rows
}

/// The share of each waiting reason either run saw (0 where one run never saw it).
fn wait_reason_rows((sum_a, sum_b): Pair<Summary>) -> Vec<Row> {
    let mut names: Vec<&str> = sum_a
        .wait_reasons
        .iter()
        .chain(&sum_b.wait_reasons)
        .map(|r| r.reason.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let share = |s: &Summary| {
                Some(
                    s.wait_reasons
                        .iter()
                        .find(|r| r.reason == name)
                        .map_or(0.0, |r| r.share_pct),
                )
            };
            row(name, SHARE, share(sum_a), share(sum_b), None)
        })
        .collect()
}

/// One preemption count read from a run's summary.
type PreemptionStat = fn(&summary::Preemptions) -> Option<u64>;

/// The preemption counts either run has.
fn preemption_rows((sum_a, sum_b): Pair<Summary>) -> Vec<Row> {
    let count =
        |s: &Summary, f: PreemptionStat| s.preemptions.as_ref().and_then(f).map(|n| n as f64);
    let preemption_stats: [(&str, PreemptionStat); 3] = [
        ("preemptions", |p| Some(p.total)),
        ("requests preempted", |p| p.requests_preempted),
        ("steps that preempted", |p| p.steps_with_preemption),
    ];
    let mut rows = Vec::new();
    for (name, f) in preemption_stats {
        let (a, b) = (count(sum_a, f), count(sum_b, f));
        if a.is_some() || b.is_some() {
            rows.push(row(name, "count", a, b, None));
        }
    }
    rows
}

fn p_text(p: Option<f64>) -> String {
    match p {
        None => String::new(),
        Some(p) if p < 1e-6 => "<1e-6".into(),
        Some(p) if p < 0.001 => format!("{p:.1e}"),
        Some(p) => format!("{p:.3}"),
    }
}

/// The comparison as tables (A and B columns labelled by the runs' directories).
pub fn tables(c: &Comparison) -> Vec<Table> {
    c.sections
        .iter()
        .map(|s| {
            let unit = if s.times { " ms" } else { "" };
            let (ha, hb) = (format!("A{unit}"), format!("B{unit}"));
            let mut t = Table::new(&s.title, &["", "stat", &ha, &hb, "B/A", "p"]);
            let value = |v: Option<f64>, stat: &str| match v {
                None => "-".to_owned(),
                Some(v) if s.times && stat != SHARE => format!("{:.3}", v / 1e6),
                Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
                Some(v) => format!("{v:.1}"),
            };
            for r in &s.rows {
                t.row(vec![
                    r.name.clone(),
                    r.stat.clone(),
                    value(r.a, &r.stat),
                    value(r.b, &r.stat),
                    r.ratio.map_or("-".into(), |x| format!("{x:.3}")),
                    p_text(r.p_value),
                ]);
            }
            if s.rows.is_empty() {
                t = t.with_note("not captured in either run");
            }
            t
        })
        .collect()
}

pub fn text(c: &Comparison) -> String {
    let mut out = format!(
        "A = {} ({} steps): {}\nB = {} ({} steps): {}\n\n",
        c.a.dir, c.a.steps, c.a.label, c.b.dir, c.b.steps, c.b.label
    );
    for t in tables(c) {
        out.push_str(&t.text());
        out.push('\n');
    }
    out.push_str("B/A: ratio of B to A. p: two-sided Mann-Whitney U test of the per-step (or per-request) values.\n");
    out
}
