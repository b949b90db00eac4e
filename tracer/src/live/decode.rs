//! Stage 5, decode: raw ring-buffer records into typed hits. [`tracer_common::parse`] splits
//! the bytes (the hit, and the scheduler snapshot some hits carry: still raw words, what they
//! mean is decided with the CPython layout in [`crate::live::snapshot::state`]); this stage
//! names the watch and drops the reads that are not the interpreter executing it.

pub use tracer_common::parse::RawSnapshot;
use tracer_common::{parse, NO_QUEUE_LEN};

use crate::{
    live::{
        discover::EvalCode,
        plan::{Mark, ProbePlan},
    },
    schema::run_info::DecodeCounts,
};

/// A genuine read of a watched instruction by the interpreter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub ktime_ns: u64,
    pub tid: u32,
    pub mark: Mark,
    pub snapshot: Option<RawSnapshot>,
    /// The engine's batch-queue length at the hit, where the plan reads it.
    pub queue_len: Option<u64>,
}

pub struct Decoder {
    marks: Vec<(u64, Mark)>,
    eval_code: EvalCode,
    pub counts: DecodeCounts,
}

impl Decoder {
    /// `eval_code`: where the target's interpreter executes instructions.
    pub fn new(plan: &ProbePlan, eval_code: EvalCode) -> Self {
        let marks = plan.watches.iter().map(|w| (w.addr, w.mark)).collect();
        Self {
            marks,
            eval_code,
            counts: DecodeCounts::default(),
        }
    }

    pub fn decode(&mut self, record: &[u8]) -> Option<Hit> {
        let Some((raw, snapshot)) = parse::watch_record(record) else {
            self.counts.malformed += 1;
            return None;
        };
        let Some(&(_, mark)) = self.marks.iter().find(|(addr, _)| *addr == raw.watch_addr) else {
            self.counts.unknown_watch += 1;
            return None;
        };
        if !self.eval_code.executes(raw.ip) {
            self.counts.rewrites += 1;
            return None;
        }
        Some(Hit {
            ktime_ns: raw.ktime_ns,
            tid: raw.pid_tgid as u32,
            mark,
            snapshot,
            queue_len: (raw.queue_len != NO_QUEUE_LEN).then_some(raw.queue_len),
        })
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::WatchHit;

    use super::*;
    use crate::live::plan::Watch;

    fn record(watch_addr: u64, ip: u64) -> Vec<u8> {
        let hit = WatchHit {
            ktime_ns: 42,
            pid_tgid: (7 << 32) | 9,
            watch_addr,
            ip,
            queue_len: NO_QUEUE_LEN,
        };
        // SAFETY: viewing a plain-old-data struct as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                (&hit as *const WatchHit).cast::<u8>(),
                size_of::<WatchHit>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn maps_addresses_to_marks_and_filters_rewrites() {
        let plan = ProbePlan {
            tid: 9,
            watches: vec![
                Watch {
                    addr: 0x1000,
                    mark: Mark::StepEntry,
                    offset: 0,
                },
                Watch {
                    addr: 0x1010,
                    mark: Mark::ScheduleDone,
                    offset: 16,
                },
            ],
            per_batch: false,
            queue_len_addr: 0,
        };
        // A tail-call build: the loop's entry and two instruction handlers apart.
        let eval_code = EvalCode::Functions {
            ranges: vec![0x5000..0x5100, 0x5400..0x5600, 0x8000..0x8100],
            tail_call: true,
        };
        let mut decoder = Decoder::new(&plan, eval_code);
        assert_eq!(
            decoder.decode(&record(0x1010, 0x5500)),
            Some(Hit {
                ktime_ns: 42,
                tid: 9,
                mark: Mark::ScheduleDone,
                snapshot: None,
                queue_len: None,
            })
        );
        assert!(decoder.decode(&record(0x1000, 0x8080)).is_some());
        assert_eq!(decoder.decode(&record(0x1000, 0x7000)), None);
        assert_eq!(decoder.decode(&record(0x2000, 0x5500)), None);
        assert_eq!(decoder.decode(&[0u8; 5]), None);
        assert_eq!(
            decoder.counts,
            DecodeCounts {
                malformed: 1,
                unknown_watch: 1,
                rewrites: 1
            }
        );
    }
}
