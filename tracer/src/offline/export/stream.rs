//! The request stream of a trace, as the request-trace formats ([`super::blis`],
//! [`super::vidur`]) replay it: requests.csv in arrival order, timed from the first arrival.

use std::path::Path;

use anyhow::{bail, Result};

use crate::schema::{load::read_all, rows::RequestRow};

/// The requests of one engine directory that a simulator can replay.
pub struct Stream {
    /// By the engine's queueing time, ties (requests met in one snapshot) by vLLM's own
    /// `arrival_time`: the order a replay feeds them in.
    pub requests: Vec<RequestRow>,
    /// The first `queued_ns`: time zero of the exported arrivals.
    pub origin_ns: u64,
    /// Requests already queued at the first snapshot (the leading ones of `requests`): they
    /// arrived before the trace or during its first step, so their arrival time is that
    /// snapshot's, and those in flight have no first-token time.
    pub at_start: usize,
}

impl Stream {
    /// Reads `dir`'s requests.csv. Requests whose prompt length could not be read are left
    /// out: a replay cannot size them.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("requests.csv");
        if !path.exists() {
            bail!(
                "{} has no requests.csv: request traces need the scheduler snapshots \
                 (traced without --phases-only)",
                dir.display()
            );
        }
        let mut requests: Vec<RequestRow> = read_all(&path)?;
        requests.retain(|r| r.prompt_tokens.is_some());
        requests.sort_by(|a, b| {
            a.queued_ns.cmp(&b.queued_ns).then(
                a.arrival_time_s
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.arrival_time_s.unwrap_or(f64::INFINITY)),
            )
        });
        let origin_ns = requests.first().map_or(0, |r| r.queued_ns);
        let at_start = requests
            .iter()
            .take_while(|r| r.queued_ns == origin_ns)
            .count();
        Ok(Self {
            requests,
            origin_ns,
            at_start,
        })
    }

    /// Microseconds from the stream's origin to `t_ns`.
    pub fn micros(&self, t_ns: u64) -> i64 {
        (t_ns.saturating_sub(self.origin_ns) / 1_000) as i64
    }
}
