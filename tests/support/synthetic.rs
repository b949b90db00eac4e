//! A synthetic run: a small deterministic engine simulation written as the tracer would
//! (steps/requests/events/queues CSVs and run.json), so that what `report`, `compare` and
//! `export-trace` print can be checked against numbers recomputed from its CSVs.

use std::{collections::HashMap, path::Path};

use tracer::schema::rows::{EventKind, EventRow, Queue, QueueRow, RequestRow, StepRow, WaitReason};

/// Costs of the simulated engine, ns.
#[derive(Clone, Copy)]
pub struct Costs {
    pub schedule: u64,
    pub execute: u64,
    pub per_token: u64,
    pub update: u64,
}

pub const COSTS: Costs = Costs {
    schedule: 40_000,
    execute: 1_000_000,
    per_token: 2_000,
    update: 15_000,
};

const MAX_SEQS: usize = 8;
const TOKEN_BUDGET: u32 = 256;
/// The trace's start (run.json's trace_start_ns).
pub const T0: u64 = 5_000_000_000_000;
/// The engine's pid in every row.
pub const PID: u32 = 4242;

/// xorshift: deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Uniform in ±`half` ns (offset by `half`, so never negative).
    pub fn noise(&mut self, half: u64) -> u64 {
        self.range(0, 2 * half)
    }
}

pub fn write_csv<T: serde::Serialize>(path: &Path, rows: &[T]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    for row in rows {
        w.serialize(row).unwrap();
    }
    w.flush().unwrap();
}

/// Simulates `steps` steps and writes steps/requests/events/queues.csv and run.json into
/// `dir`. Every 50th step preempts the newest running request.
pub fn synthetic_run(dir: &Path, steps: u64, costs: Costs, seed: u64, vllm_version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut sim = Sim::new(seed, costs);
    for step in 0..steps {
        sim.step(step);
    }
    sim.write(dir, vllm_version);
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

/// The engine between steps, and the rows written so far.
struct Sim {
    rng: Rng,
    costs: Costs,
    requests: Vec<SimRequest>,
    waiting: Vec<usize>,
    running: Vec<usize>,
    steps: Vec<StepRow>,
    events: Vec<EventRow>,
    queues: Vec<QueueRow>,
    /// The next step's start.
    t: u64,
}

/// One step's scheduling decisions.
#[derive(Default)]
struct Schedule {
    /// (request, tokens) of each scheduled request.
    scheduled: Vec<(usize, u32)>,
    budget: u32,
    reasons: HashMap<usize, WaitReason>,
    new_requests: u32,
    resumed: u32,
    preempted: u32,
}

fn event(step: u64, t_ns: u64, id: &str, kind: EventKind, tokens: Option<u32>) -> EventRow {
    EventRow {
        step,
        pid: PID,
        t_ns,
        t_rel_ns: (t_ns - T0) as i64,
        request_id: id.into(),
        event: kind,
        tokens,
        detail: String::new(),
    }
}

impl Sim {
    fn new(seed: u64, costs: Costs) -> Self {
        Self {
            rng: Rng(seed | 1),
            costs,
            requests: Vec::new(),
            waiting: Vec::new(),
            running: Vec::new(),
            steps: Vec::new(),
            events: Vec::new(),
            queues: Vec::new(),
            t: T0 + 1_000_000,
        }
    }

    fn step(&mut self, step: u64) {
        self.arrive(step);
        let start = self.t;
        let after_schedule = start + self.costs.schedule;
        let mut schedule = Schedule {
            budget: TOKEN_BUDGET,
            ..Default::default()
        };
        self.preempt(step, after_schedule, &mut schedule);
        self.continue_running(&mut schedule);
        self.admit(step, after_schedule, &mut schedule);
        self.record_queues(step, after_schedule, &schedule);
        let tokens: u32 = schedule.scheduled.iter().map(|s| s.1).sum();
        let prefill: u32 = schedule
            .scheduled
            .iter()
            .filter(|(i, _)| self.requests[*i].computed < self.requests[*i].prompt)
            .map(|s| s.1)
            .sum();
        let execute = self.costs.execute + self.costs.per_token * u64::from(tokens);
        let end = after_schedule + execute + self.costs.update;
        let finished = self.update(step, start, end, &schedule.scheduled);
        self.running
            .retain(|&i| self.requests[i].row.finished_ns.is_none());
        self.steps.push(StepRow {
            step,
            pid: PID,
            tid: PID,
            start_ns: start,
            start_rel_ns: (start - T0) as i64,
            schedule_ns: self.costs.schedule,
            execute_ns: execute,
            update_ns: self.costs.update,
            step_ns: end - start,
            batch_size: Some(schedule.scheduled.len() as u32),
            scheduled_tokens: Some(tokens),
            prefill_tokens: Some(prefill),
            decode_tokens: Some(tokens - prefill),
            new_requests: Some(schedule.new_requests),
            resumed_requests: Some(schedule.resumed),
            running: Some(self.running.len() as u32 + finished),
            waiting: Some(self.waiting.len() as u32),
            preempted: Some(schedule.preempted),
            finished: Some(finished),
            kv_blocks_used: Some(tokens / 16),
            kv_blocks_total: Some(512),
            ..Default::default()
        });
        self.t = end + 5_000;
    }

    /// Arrivals: one in 40 % of the steps (about 6 requests in flight), at the step's start.
    fn arrive(&mut self, step: u64) {
        for _ in 0..u64::from(self.rng.range(0, 99) < 40) {
            let i = self.requests.len();
            let id = format!("req-{i}");
            let (prompt, output) = (self.rng.range(16, 200) as u32, self.rng.range(2, 30) as u32);
            let row = RequestRow {
                request_id: id.clone(),
                pid: PID,
                queued_ns: self.t,
                finish_status: "UNFINISHED".into(),
                prompt_tokens: Some(prompt),
                ..Default::default()
            };
            self.requests.push(SimRequest {
                id: id.clone(),
                prompt,
                output,
                computed: 0,
                generated: 0,
                row,
                waiting_since: Some(self.t),
            });
            self.waiting.push(i);
            self.events
                .push(event(step, self.t, &id, EventKind::Arrived, None));
        }
    }

    /// Every 50th step the newest running request goes back to the head of the queue.
    fn preempt(&mut self, step: u64, now: u64, schedule: &mut Schedule) {
        if step % 50 != 49 || self.running.len() <= 1 {
            return;
        }
        let victim = self.running.pop().unwrap();
        let r = &mut self.requests[victim];
        r.computed = 0;
        r.row.preemptions += 1;
        r.waiting_since = Some(now);
        self.waiting.insert(0, victim);
        schedule.preempted = 1;
        self.events
            .push(event(step, now, &r.id, EventKind::Preempted, None));
    }

    /// Running requests first: a decode token each, or the rest of the prompt.
    fn continue_running(&self, schedule: &mut Schedule) {
        for &i in &self.running {
            let r = &self.requests[i];
            let want = if r.computed < r.prompt {
                r.prompt - r.computed
            } else {
                1
            };
            let n = want.min(schedule.budget);
            if n > 0 {
                schedule.scheduled.push((i, n));
                schedule.budget -= n;
            }
        }
    }

    /// Admits waiting requests in order until one cannot be: it and everyone behind it wait,
    /// each with its reason.
    fn admit(&mut self, step: u64, now: u64, schedule: &mut Schedule) {
        let mut blocked = false;
        for i in self.waiting.clone() {
            let reason = if blocked {
                Some(WaitReason::BlockedBehindHead)
            } else if schedule.preempted > 0 {
                // The step that preempted admits nobody (as vLLM ≤ 0.11).
                Some(WaitReason::Preempted)
            } else if self.running.len() >= MAX_SEQS {
                Some(WaitReason::MaxNumSeqs)
            } else if self.requests[i].prompt > schedule.budget {
                Some(WaitReason::TokenBudget)
            } else {
                None
            };
            if let Some(reason) = reason {
                schedule.reasons.insert(i, reason);
                blocked = true;
                continue;
            }
            self.waiting.retain(|&w| w != i);
            self.running.push(i);
            let r = &mut self.requests[i];
            schedule.budget -= r.prompt;
            schedule.scheduled.push((i, r.prompt));
            let since = r.waiting_since.take().unwrap();
            r.row.waiting_ns += now - since;
            r.row.longest_wait_ns = r.row.longest_wait_ns.max(now - since);
            let kind = if r.row.first_scheduled_ns.is_none() {
                schedule.new_requests += 1;
                r.row.first_scheduled_ns = Some(now);
                EventKind::Scheduled
            } else {
                schedule.resumed += 1;
                EventKind::Resumed
            };
            let prompt = Some(r.prompt);
            self.events.push(event(step, now, &r.id, kind, None));
            self.events
                .push(event(step, now, &r.id, EventKind::PrefillChunk, prompt));
        }
    }

    fn record_queues(&mut self, step: u64, now: u64, schedule: &Schedule) {
        let row = |i: usize, queue: Queue, position: usize| QueueRow {
            step,
            pid: PID,
            t_ns: now,
            request_id: self.requests[i].id.clone(),
            queue,
            position: position as u32,
            computed_tokens: Some(match queue {
                Queue::Waiting => 0,
                _ => self.requests[i].computed,
            }),
            scheduled_tokens: schedule
                .scheduled
                .iter()
                .find(|s| s.0 == i)
                .map_or(0, |s| s.1),
            reason: schedule.reasons.get(&i).copied(),
        };
        let running = self.running.iter().enumerate();
        let mut rows: Vec<QueueRow> = running.map(|(p, &i)| row(i, Queue::Running, p)).collect();
        let waiting = self.waiting.iter().enumerate();
        rows.extend(waiting.map(|(p, &i)| row(i, Queue::Waiting, p)));
        self.queues.extend(rows);
    }

    /// Update: a token for every scheduled request whose prompt is done. Returns how many
    /// finished.
    fn update(&mut self, step: u64, start: u64, end: u64, scheduled: &[(usize, u32)]) -> u32 {
        let mut finished = 0;
        for &(i, n) in scheduled {
            let r = &mut self.requests[i];
            r.computed += n;
            r.row.iterations += 1;
            r.row.execution_ns += end - start;
            if r.computed < r.prompt {
                continue;
            }
            r.generated += 1;
            if r.row.first_token_ns.is_none() {
                r.row.first_token_ns = Some(end);
                self.events
                    .push(event(step, end, &r.id, EventKind::FirstToken, Some(1)));
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
                let mut e = event(step, end, &r.id, EventKind::Finished, Some(r.generated));
                e.detail = "FINISHED_LENGTH_CAPPED".into();
                self.events.push(e);
            }
        }
        finished
    }

    fn write(mut self, dir: &Path, vllm_version: &str) {
        for r in &mut self.requests {
            r.row.output_tokens = r.generated;
        }
        write_csv(&dir.join("steps.csv"), &self.steps);
        let requests: Vec<RequestRow> = self.requests.iter().map(|r| r.row.clone()).collect();
        write_csv(&dir.join("requests.csv"), &requests);
        write_csv(&dir.join("events.csv"), &self.events);
        write_csv(&dir.join("queues.csv"), &self.queues);
        let run = serde_json::json!({
            "tracer_version": "test",
            "pid": PID,
            "python_version": "3.11.7",
            "vllm_version": vllm_version,
            "config": {"max_num_seqs": MAX_SEQS, "max_num_batched_tokens": TOKEN_BUDGET},
            "labels": {"run": "synthetic"},
            "trace_start_ns": T0,
            "trace_end_ns": self.t,
        });
        std::fs::write(dir.join("run.json"), run.to_string()).unwrap();
    }
}
