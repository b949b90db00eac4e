//! The numbers of a report, computed from a loaded [`Run`]: what `tracer report` shows and
//! writes to summary.json, and what `tracer compare` puts side by side.
//!
//! Durations are integer nanoseconds where they are values that occurred (percentiles by
//! nearest rank), so they can be recomputed from the CSVs exactly; means are floats.

use serde::Serialize;

use super::stats::{mean, percentile};
use crate::schema::{
    load::Run,
    rows::{WaitReason, PHASES},
};

/// Batch-size buckets for step-time percentiles: powers of two, as batch sizes are usually
/// configured and step cost grows roughly with them; 0 for steps that scheduled nothing.
pub const BATCH_BUCKETS: &[(u32, u32)] = &[
    (0, 0),
    (1, 1),
    (2, 2),
    (3, 4),
    (5, 8),
    (9, 16),
    (17, 32),
    (33, 64),
    (65, 128),
    (129, 256),
    (257, 512),
    (513, u32::MAX),
];

pub const PERCENTILES: [f64; 3] = [50.0, 90.0, 99.0];

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub engines: usize,
    /// Traced window, s.
    pub duration_s: f64,
    pub phases: Vec<Phase>,
    /// Step-time distribution per batch-size bucket (one `all` row when batch sizes were
    /// not captured).
    pub by_batch: Vec<Distribution>,
    /// TTFT, TPOT, E2E over the requests that have them.
    pub latency: Vec<Distribution>,
    pub requests: Option<u64>,
    pub wait_reasons: Vec<ReasonShare>,
    pub preemptions: Option<Preemptions>,
    /// Phase times fitted on the batch features (see [`super::model`]).
    pub model: Vec<super::model::Fit>,
    /// Tensor-parallel worker ranks (ranks.csv), by engine and rank; empty without workers.
    pub ranks: Vec<RankSummary>,
    /// How much later than the first the slowest rank began its last wait, per step with two
    /// or more ranks waiting (steps.csv `rank_skew_ns`).
    pub rank_skew: Option<Distribution>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RankSummary {
    pub rank: String,
    pub engine_pid: u32,
    pub worker_pid: u32,
    /// Steps with a row of this rank (it was probed through them).
    pub steps: u64,
    /// Means over those steps; launches `None` where not counted (`--cuda sync`).
    pub launches_per_step: Option<f64>,
    pub graph_launches_per_step: f64,
    pub syncs_per_step: f64,
    /// Its GPU wait per step (ranks.csv `gpu_wait_ns`).
    pub gpu_wait: Option<Distribution>,
    /// Steps in which it was the slowest rank (steps.csv `slowest_rank`).
    pub slowest_steps: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub total_ns: u64,
    /// Of the summed step time, %.
    pub share_pct: f64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Distribution {
    pub label: String,
    pub n: u64,
    pub mean_ns: f64,
    /// At [`PERCENTILES`].
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
}

impl Distribution {
    /// `None` for no values.
    pub fn of(label: impl Into<String>, values: &mut [u64]) -> Option<Self> {
        values.sort_unstable();
        Some(Self {
            label: label.into(),
            n: values.len() as u64,
            mean_ns: mean(values)?,
            p50_ns: percentile(values, PERCENTILES[0])?,
            p90_ns: percentile(values, PERCENTILES[1])?,
            p99_ns: percentile(values, PERCENTILES[2])?,
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ReasonShare {
    /// snake_case name as in queues.csv, `unknown` for an empty reason.
    pub reason: String,
    pub request_steps: u64,
    /// Of all waiting (step, request) pairs, %.
    pub share_pct: f64,
    pub requests: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Preemptions {
    pub total: u64,
    /// Requests preempted at least once (None without requests.csv).
    pub requests_preempted: Option<u64>,
    pub max_per_request: Option<u64>,
    /// Steps whose schedule() preempted something (None without the column).
    pub steps_with_preemption: Option<u64>,
}

/// The batch bucket label of a batch size, e.g. `5–8`.
pub fn bucket_label(&(lo, hi): &(u32, u32)) -> String {
    match (lo, hi) {
        (lo, hi) if lo == hi => lo.to_string(),
        (lo, u32::MAX) => format!("{lo}+"),
        (lo, hi) => format!("{lo}–{hi}"),
    }
}

/// Step times per batch bucket (label, values); one `all` bucket without batch sizes.
pub fn step_times_by_batch(run: &Run) -> Vec<(String, Vec<u64>)> {
    if run.steps.iter().all(|s| s.batch_size.is_none()) {
        return vec![("all".into(), run.steps.iter().map(|s| s.step_ns).collect())];
    }
    BATCH_BUCKETS
        .iter()
        .map(|bucket| {
            let values = run
                .steps
                .iter()
                .filter(|s| {
                    s.batch_size
                        .is_some_and(|b| (bucket.0..=bucket.1).contains(&b))
                })
                .map(|s| s.step_ns)
                .collect();
            (bucket_label(bucket), values)
        })
        .filter(|(_, v): &(String, Vec<u64>)| !v.is_empty())
        .collect()
}

/// One latency of a request, where it has one.
type Latency = fn(&crate::schema::rows::RequestRow) -> Option<u64>;

/// Latency values per metric (name, ns values) over the requests that have them.
pub fn latencies(run: &Run) -> Vec<(&'static str, Vec<u64>)> {
    let metrics: [(&str, Latency); 3] = [
        ("TTFT", |r| r.ttft_ns),
        ("TPOT", |r| r.tpot_ns),
        ("E2E", |r| r.e2e_ns),
    ];
    metrics
        .iter()
        .map(|(name, get)| (*name, run.requests.iter().filter_map(get).collect()))
        .collect()
}

pub fn reason_name(reason: Option<WaitReason>) -> String {
    reason.map_or("unknown".into(), |r| {
        serde_json::to_value(r)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    })
}

pub fn summarize(run: &Run) -> Summary {
    // Sums of the CSVs' values: saturating (a damaged file must not panic the report).
    let total_step: u64 = run
        .steps
        .iter()
        .map(|s| s.step_ns)
        .fold(0, u64::saturating_add);
    let phases = PHASES
        .iter()
        .map(|(name, get)| {
            let mut values: Vec<u64> = run.steps.iter().map(get).collect();
            values.sort_unstable();
            let total: u64 = values.iter().fold(0, |a, &v| a.saturating_add(v));
            Phase {
                name,
                total_ns: total,
                share_pct: if total_step > 0 {
                    100.0 * total as f64 / total_step as f64
                } else {
                    0.0
                },
                mean_ns: mean(&values).unwrap_or(0.0),
                p50_ns: percentile(&values, 50.0).unwrap_or(0),
                p99_ns: percentile(&values, 99.0).unwrap_or(0),
            }
        })
        .collect();
    let by_batch = step_times_by_batch(run)
        .into_iter()
        .filter_map(|(label, mut v)| Distribution::of(label, &mut v))
        .collect();
    let latency = latencies(run)
        .into_iter()
        .filter_map(|(name, mut v)| Distribution::of(name, &mut v))
        .collect();
    let waiting_total: u64 = run
        .wait_reasons
        .values()
        .map(|c| c.request_steps)
        .fold(0, u64::saturating_add);
    let mut wait_reasons: Vec<ReasonShare> = run
        .wait_reasons
        .iter()
        .map(|(reason, count)| ReasonShare {
            reason: reason_name(*reason),
            request_steps: count.request_steps,
            share_pct: 100.0 * count.request_steps as f64 / waiting_total.max(1) as f64,
            requests: count.requests,
        })
        .collect();
    wait_reasons.sort_by_key(|w| std::cmp::Reverse(w.request_steps));
    let (start, end) = run.window();
    Summary {
        steps: run.steps.len() as u64,
        engines: run.engine_dirs.len(),
        duration_s: end.saturating_sub(start) as f64 / 1e9,
        phases,
        by_batch,
        latency,
        requests: run.has_requests.then_some(run.requests.len() as u64),
        wait_reasons,
        preemptions: preemptions(run),
        model: super::model::fits(run),
        ranks: ranks(run),
        rank_skew: Distribution::of(
            "rank skew",
            &mut run
                .steps
                .iter()
                .filter_map(|s| s.rank_skew_ns)
                .collect::<Vec<_>>(),
        ),
    }
}

fn ranks(run: &Run) -> Vec<RankSummary> {
    run.ranks
        .iter()
        .map(|((engine_pid, rank), totals)| {
            let per_step = |n: u64| n as f64 / totals.steps.max(1) as f64;
            RankSummary {
                rank: rank.clone(),
                engine_pid: *engine_pid,
                worker_pid: totals.worker_pid,
                steps: totals.steps,
                launches_per_step: totals.launches.map(per_step),
                graph_launches_per_step: per_step(totals.graph_launches),
                syncs_per_step: per_step(totals.syncs),
                gpu_wait: Distribution::of(rank.clone(), &mut totals.gpu_wait_ns.clone()),
                slowest_steps: run
                    .steps
                    .iter()
                    .filter(|s| s.pid == *engine_pid && s.slowest_rank.as_ref() == Some(rank))
                    .count() as u64,
            }
        })
        .collect()
}

fn preemptions(run: &Run) -> Option<Preemptions> {
    let steps_column = run.steps.iter().any(|s| s.preempted.is_some());
    if !run.has_requests && !steps_column {
        return None;
    }
    let from_steps: u64 = run
        .steps
        .iter()
        .filter_map(|s| s.preempted)
        .map(u64::from)
        .sum();
    Some(Preemptions {
        total: if run.has_requests {
            run.requests.iter().map(|r| u64::from(r.preemptions)).sum()
        } else {
            from_steps
        },
        requests_preempted: run
            .has_requests
            .then(|| run.requests.iter().filter(|r| r.preemptions > 0).count() as u64),
        max_per_request: run.has_requests.then(|| {
            run.requests
                .iter()
                .map(|r| u64::from(r.preemptions))
                .max()
                .unwrap_or(0)
        }),
        steps_with_preemption: steps_column.then(|| {
            run.steps
                .iter()
                .filter(|s| s.preempted.unwrap_or(0) > 0)
                .count() as u64
        }),
    })
}
