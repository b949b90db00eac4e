//! Replays what [`crate::live::record`] captured of a real trace: its ring records through
//! decode → correlate → requests, as the session folds them (less CUDA and replanning: the
//! recorded plan changes stand in), with no target and no root; checked against the fixture
//! engine's own truth for that run (tests/fixtures/captured/, made by its record.sh).

use std::{collections::VecDeque, path::Path};

use tracer_common::capture::{snap, Plan};

use crate::{
    inspect::{
        cpython::{layout, PyReader, TypeAddrs},
        memory::Snapshot,
        vllm::V1_STATE,
    },
    live::{
        correlate::{
            requests::{Requests, Scheduled},
            Correlator, Step,
        },
        decode::{Decoder, RawSnapshot},
        discover::EvalCode,
        plan::{Mark, ProbePlan, Watch},
        record::{tag, Setup},
        session::{scheduled_state, state_at},
        sinks::StepRow,
        snapshot::{state::Typing, Budgets, LiveRequests, SchedulerState},
    },
    schema::{rows::RequestRow, run_info::DecodeCounts},
};

/// The entries of a records file: tag and bytes.
fn entries(mut bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&tag, rest) = bytes.split_first()?;
        let (len, rest) = rest.split_first_chunk::<4>().expect("an entry's length");
        let (entry, rest) = rest.split_at(u32::from_le_bytes(*len) as usize);
        bytes = rest;
        Some((tag, entry))
    })
}

/// A plan entry: the step after whose fold it applies, and the plan.
fn plan_entry(bytes: &[u8]) -> (u64, Plan) {
    let (after, plan) = bytes.split_first_chunk::<8>().expect("a plan entry's step");
    assert_eq!(plan.len(), size_of::<Plan>(), "a plan of another build");
    // SAFETY: `Plan` is repr(C) of integers (any bit pattern is valid) and the slice holds
    // exactly its bytes.
    let plan = unsafe { std::ptr::read_unaligned(plan.as_ptr().cast::<Plan>()) };
    (u64::from_le_bytes(*after), plan)
}

fn probe_plan(setup: &Setup) -> ProbePlan {
    let marks = [
        Mark::StepEntry,
        Mark::ScheduleDone,
        Mark::ExecuteDone,
        Mark::UpdateDone,
    ];
    let watches = (setup.watches.iter())
        .map(|(addr, name, offset)| Watch {
            addr: *addr,
            mark: *marks.iter().find(|m| m.to_string() == *name).expect(name),
            offset: *offset,
        })
        .collect();
    ProbePlan {
        tid: setup.tid,
        watches,
        per_batch: setup.per_batch,
        queue_len_addr: 0,
    }
}

fn eval_code(setup: &Setup) -> EvalCode {
    match &setup.eval_code {
        Some((ranges, tail_call)) => EvalCode::Functions {
            ranges: ranges.iter().map(|&(start, end)| start..end).collect(),
            tail_call: *tail_call,
        },
        None => EvalCode::Unknown("not recorded".into()),
    }
}

/// What a replay gives: steps.csv's and requests.csv's rows, and the decoder's counts.
#[derive(Default)]
struct Rows {
    steps: Vec<StepRow>,
    requests: Vec<RequestRow>,
    decode: DecodeCounts,
}

/// A step waiting for its update to be folded, as the session's `PendingUpdate`.
struct Pending {
    step: Step,
    row: StepRow,
    scheduled: Option<Scheduled>,
    updated: Option<SchedulerState>,
}

/// The session's fold of steps into rows (its `fold_step`, less CUDA and replanning).
struct Fold {
    setup: Setup,
    typing: Typing,
    plan: Plan,
    budgets: Budgets,
    requests: Requests,
    pending: VecDeque<Pending>,
    rows: Rows,
}

impl Fold {
    fn new(setup: Setup) -> Self {
        let [max_num_seqs, max_num_batched_tokens, block_size, kv_blocks_total] = setup.budgets;
        Self {
            typing: Typing {
                layout: layout::for_version(setup.python).expect("a CPython with a layout row"),
                statuses: setup.statuses.clone().into_iter().collect(),
            },
            plan: Plan::default(),
            budgets: Budgets {
                max_num_seqs,
                max_num_batched_tokens,
                block_size,
                kv_blocks_total,
            },
            requests: Requests::new(setup.pid, setup.trace_start_ns, setup.idle_at_start),
            pending: VecDeque::new(),
            rows: Rows::default(),
            setup,
        }
    }

    fn step(&mut self, source: &mut LiveRequests<Snapshot>, step: Step) {
        let state = |raw: &RawSnapshot| self.typing.state(&self.plan, raw);
        let mut row = StepRow::new(&step, self.setup.pid, self.setup.trace_start_ns);
        let scheduled = scheduled_state(&state, &step, self.setup.per_batch);
        while let Some(update) = self
            .pending
            .pop_front_if(|u| u.step.update_done_ns < step.schedule_done_ns)
        {
            Self::update(&mut self.requests, &mut self.rows, update);
        }
        let (out, token) =
            self.requests
                .schedule(source, &step, scheduled.as_ref(), &self.budgets, &mut row);
        self.rows.requests.extend(out.finished);
        let updated = state_at(&state, &step.after_update);
        self.pending.push_back(Pending {
            step,
            row,
            scheduled: token,
            updated,
        });
    }

    fn update(requests: &mut Requests, rows: &mut Rows, mut update: Pending) {
        let out = requests.update(
            &update.step,
            update.scheduled,
            update.updated.as_ref(),
            &mut update.row,
        );
        rows.requests.extend(out.finished);
        rows.steps.push(update.row);
    }

    fn finish(mut self, trace_end_ns: u64) -> Rows {
        for update in std::mem::take(&mut self.pending) {
            Self::update(&mut self.requests, &mut self.rows, update);
        }
        let out = self.requests.finish(trace_end_ns);
        self.rows.requests.extend(out.finished);
        self.rows
    }
}

/// The rows the session would have written from the records at `path` (and its sidecar).
fn replay(path: &Path) -> Rows {
    let setup: Setup = serde_json::from_slice(&std::fs::read(Setup::path(path)).unwrap()).unwrap();
    let records = std::fs::read(path).unwrap();
    // No target: the request facts come from the kernel side's copies only.
    let memory = Snapshot { regions: vec![] };
    let types = TypeAddrs {
        str: setup.str_type,
        ..TypeAddrs::default()
    };
    let layout = layout::for_version(setup.python).unwrap();
    let reader = PyReader::new(&memory, layout, types);
    let mut source = LiveRequests::new(&reader, &V1_STATE);
    let mut decoder = Decoder::new(&probe_plan(&setup), eval_code(&setup));
    let mut correlator = Correlator::new(setup.per_batch);
    let mut fold = Fold::new(setup);
    let (mut steps, mut plans) = (Vec::new(), VecDeque::new());
    for (tag, bytes) in entries(&records) {
        match tag {
            tag::EVENTS => {
                let hit = decoder.decode(bytes);
                let shadow = |s: &RawSnapshot| s.header.flags & snap::SHADOW != 0;
                assert!(!hit.iter().flat_map(|h| &h.snapshot).any(shadow));
                steps.extend(hit.and_then(|hit| correlator.push(hit)));
            }
            tag::FACTS => assert!(source.learn(bytes), "a facts record of another build"),
            tag::PLAN => match plan_entry(bytes) {
                (u64::MAX, plan) => fold.plan = plan,
                later => plans.push_back(later),
            },
            tag::DRAIN => {
                for step in steps.drain(..) {
                    let index = step.index;
                    fold.step(&mut source, step);
                    while let Some((_, plan)) = plans.pop_front_if(|(after, _)| *after == index) {
                        fold.plan = plan;
                    }
                }
                source.end_drain();
            }
            tag::END => {
                correlator.finish();
                let end_ns = u64::from_le_bytes(bytes.try_into().expect("an end stamp"));
                let rows = fold.finish(end_ns);
                return Rows {
                    decode: decoder.counts,
                    ..rows
                };
            }
            other => panic!("unknown entry tag {other}"),
        }
    }
    panic!("the records end before the trace does")
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::PathBuf};

    use super::*;

    type Row = HashMap<String, String>;

    fn captured() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/captured")
    }

    /// CSV rows by column, from a file or from rows serialized as the sinks write them.
    fn csv_rows(reader: impl std::io::Read) -> Vec<Row> {
        csv::Reader::from_reader(reader)
            .deserialize()
            .map(Result::unwrap)
            .collect()
    }

    fn written<T: serde::Serialize>(rows: &[T]) -> Vec<Row> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        rows.iter().for_each(|row| writer.serialize(row).unwrap());
        csv_rows(&writer.into_inner().unwrap()[..])
    }

    fn truth(name: &str) -> Vec<Row> {
        csv_rows(std::fs::File::open(captured().join(name)).unwrap())
    }

    fn num(row: &Row, column: &str) -> u64 {
        row[column].parse().unwrap_or_else(|_| panic!("{column}"))
    }

    /// Every step's batch columns and KV blocks as the fixture engine logged them.
    #[test]
    fn captured_steps_match_the_engines_truth() {
        let rows = replay(&captured().join("records.bin"));
        assert_eq!(rows.decode, DecodeCounts::default());
        let (traced, truth) = (written(&rows.steps), truth("steps.csv"));
        assert_eq!(traced.len(), truth.len(), "steps lost or invented");
        for (s, t) in traced.iter().zip(&truth) {
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
            // The fixture counts the whole pool's free blocks; the tracer, blocks in use of
            // those requests can get (the pool less vLLM's null block).
            let used = num(t, "kv_total_blocks") - 1 - num(t, "kv_free_blocks");
            assert_eq!(num(s, "kv_blocks_used"), used, "step {}", t["step"]);
        }
        // The load queues, preempts and finishes requests: the columns are not all zeros.
        for column in ["waiting", "preempted", "finished", "prefill_requests"] {
            assert!(truth.iter().any(|t| num(t, column) > 0), "{column}");
        }
    }

    /// The requests the trace saw are the engine's, with its token counts and ends.
    #[test]
    fn captured_requests_match_the_engines_truth() {
        let rows = replay(&captured().join("records.bin"));
        let traced: HashMap<String, Row> = written(&rows.requests)
            .into_iter()
            .map(|r| (r["request_id"].clone(), r))
            .collect();
        let first_step_ns = num(&truth("steps.csv")[0], "start_ns");
        // Those still in the engine when the trace began, or come since.
        let truth: Vec<Row> = truth("requests.csv")
            .into_iter()
            .filter(|t| t["finished_ns"].is_empty() || num(t, "finished_ns") >= first_step_ns)
            .collect();
        let mut ids: Vec<&String> = traced.keys().collect();
        let mut truth_ids: Vec<&String> = truth.iter().map(|t| &t["request_id"]).collect();
        ids.sort();
        truth_ids.sort();
        assert_eq!(ids, truth_ids);
        assert!(truth.len() > 40, "{} requests", truth.len());
        for t in &truth {
            let s = &traced[&t["request_id"]];
            for column in ["prompt_tokens", "output_tokens", "preemptions"] {
                assert_eq!(s[column], t[column], "{}: {column}", t["request_id"]);
            }
            assert_eq!(
                s["arrival_time_s"], t["arrival_time"],
                "{}",
                t["request_id"]
            );
            // The status is told from token counts: a stop token that is exactly the last
            // allowed one reads as length-capped (tests/fixtures/engine/README.md).
            let stopped_at_max =
                t["finish_status"] == "FINISHED_STOPPED" && t["output_tokens"] == t["max_tokens"];
            if !stopped_at_max {
                assert_eq!(
                    s["finish_status"], t["finish_status"],
                    "{}",
                    t["request_id"]
                );
            }
            if t["num_cached_tokens"] != "-1" {
                assert_eq!(
                    s["cached_tokens"], t["num_cached_tokens"],
                    "{}",
                    t["request_id"]
                );
            }
        }
        let finished = |t: &&Row| t["finish_status"].starts_with("FINISHED");
        assert!(truth.iter().filter(finished).count() > 20);
    }
}
