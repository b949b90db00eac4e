//! Stage 5, decode: raw ring-buffer records into typed hits.

use std::ops::Range;

use tracer_common::WatchHit;

use crate::plan::{Mark, ProbePlan};

/// A genuine read of a watched instruction by the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub ktime_ns: u64,
    pub tid: u32,
    pub mark: Mark,
}

/// Records that did not become hits, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeCounts {
    /// Records of the wrong size (never expected: a build mismatch).
    pub malformed: u64,
    /// Hits on an address the plan does not watch.
    pub unknown_watch: u64,
    /// Hits from outside the interpreter loop: the interpreter rewriting the watched byte
    /// (quickening), not executing it.
    pub rewrites: u64,
}

pub struct Decoder {
    marks: Vec<(u64, Mark)>,
    eval_loop: Option<Range<u64>>,
    pub counts: DecodeCounts,
}

impl Decoder {
    /// `eval_loop`: the interpreter loop's code range in the target, if known.
    pub fn new(plan: &ProbePlan, eval_loop: Option<Range<u64>>) -> Self {
        let marks = plan.watches.iter().map(|w| (w.addr, w.mark)).collect();
        Self {
            marks,
            eval_loop,
            counts: DecodeCounts::default(),
        }
    }

    pub fn decode(&mut self, record: &[u8]) -> Option<Hit> {
        let Ok(bytes) = <[u8; size_of::<WatchHit>()]>::try_from(record) else {
            self.counts.malformed += 1;
            return None;
        };
        // SAFETY: WatchHit is plain old data of exactly this size; read_unaligned needs no alignment.
        let raw: WatchHit = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let Some(&(_, mark)) = self.marks.iter().find(|(addr, _)| *addr == raw.watch_addr) else {
            self.counts.unknown_watch += 1;
            return None;
        };
        if self
            .eval_loop
            .as_ref()
            .is_some_and(|range| !range.contains(&raw.ip))
        {
            self.counts.rewrites += 1;
            return None;
        }
        Some(Hit {
            ktime_ns: raw.ktime_ns,
            tid: raw.pid_tgid as u32,
            mark,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Watch;

    fn record(watch_addr: u64, ip: u64) -> Vec<u8> {
        let hit = WatchHit {
            ktime_ns: 42,
            pid_tgid: (7 << 32) | 9,
            watch_addr,
            ip,
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
        };
        let mut decoder = Decoder::new(&plan, Some(0x5000..0x6000));
        assert_eq!(
            decoder.decode(&record(0x1010, 0x5500)),
            Some(Hit {
                ktime_ns: 42,
                tid: 9,
                mark: Mark::ScheduleDone
            })
        );
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
