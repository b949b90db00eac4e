//! Per-batch records for `EngineCore.step_with_batch_queue` (async scheduling, pipeline
//! parallelism): one call of the step function schedules a batch and returns early, or pops
//! the oldest batch, waits for it and updates from it, or both (schedules the next batch,
//! then updates the oldest). The queue is FIFO (`appendleft` / `pop`), so the k-th batch
//! scheduled is the k-th updated, and the same four marks give a batch record: entry of the
//! call that scheduled it, the return of its `schedule()`, then in a later call the mark
//! before its `update_from_output()` and that call's return. Its execute phase is the time
//! between, overlapping the calls in between.

use std::collections::VecDeque;

use super::{CorrelateCounts, Step};
use crate::{
    decode::{Hit, RawSnapshot},
    plan::Mark,
};

/// Batches in flight beyond this mean marks went missing (vLLM queues at most the pipeline
/// depth); the oldest is dropped and counted as incomplete.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Default)]
pub struct BatchQueue {
    /// Entry time of the open call and whether it scheduled or updated yet.
    call: Option<Call>,
    /// Scheduled batches not yet updated, oldest first: (call entry, schedule() return, the
    /// snapshot then).
    in_flight: VecDeque<(u64, u64, Option<RawSnapshot>)>,
    /// The batch being updated: its marks so far, the snapshot before its update and the one
    /// at its schedule.
    updating: Option<(u64, u64, u64, Option<RawSnapshot>, Option<RawSnapshot>)>,
    tid: u32,
}

#[derive(Clone, Copy)]
struct Call {
    entry_ns: u64,
    scheduled: bool,
    updating: bool,
}

impl BatchQueue {
    pub fn push(
        &mut self,
        hit: Hit,
        counts: &mut CorrelateCounts,
        completed: &mut u64,
    ) -> Option<Step> {
        match hit.mark {
            Mark::StepEntry => {
                if let Some(call) = self.call {
                    if !call.scheduled && !call.updating {
                        counts.idle_entries += 1;
                    }
                }
                if self.updating.take().is_some() {
                    counts.incomplete_steps += 1;
                }
                self.call = Some(Call {
                    entry_ns: hit.ktime_ns,
                    scheduled: false,
                    updating: false,
                });
                self.tid = hit.tid;
                None
            }
            _ if hit.tid != self.tid || self.call.is_none() => {
                counts.out_of_order += 1;
                None
            }
            Mark::ScheduleDone => {
                let call = self.call.as_mut().expect("checked above");
                if call.scheduled || call.updating {
                    counts.repeated_marks += 1;
                    return None;
                }
                call.scheduled = true;
                self.in_flight
                    .push_back((call.entry_ns, hit.ktime_ns, hit.snapshot));
                if self.in_flight.len() > MAX_IN_FLIGHT {
                    self.in_flight.pop_front();
                    counts.incomplete_steps += 1;
                }
                None
            }
            Mark::ExecuteDone => {
                let call = self.call.as_mut().expect("checked above");
                if call.updating {
                    counts.repeated_marks += 1;
                    return None;
                }
                call.updating = true;
                // None: its schedule came before the trace started.
                let Some((start, scheduled, at_schedule)) = self.in_flight.pop_front() else {
                    counts.out_of_order += 1;
                    return None;
                };
                self.updating = Some((start, scheduled, hit.ktime_ns, hit.snapshot, at_schedule));
                None
            }
            Mark::UpdateDone => {
                let Some((start, scheduled, executed, after_execute, at_schedule)) =
                    self.updating.take()
                else {
                    counts.out_of_order += 1;
                    return None;
                };
                let step = Step {
                    index: *completed,
                    tid: self.tid,
                    start_ns: start,
                    schedule_done_ns: scheduled,
                    execute_done_ns: executed,
                    update_done_ns: hit.ktime_ns,
                    after_execute,
                    after_update: hit.snapshot,
                    at_schedule,
                };
                *completed += 1;
                Some(step)
            }
        }
    }

    /// Ends the trace: batches scheduled but not updated are counted.
    pub fn finish(&mut self, counts: &mut CorrelateCounts) {
        counts.incomplete_steps +=
            (self.in_flight.len() + usize::from(self.updating.is_some())) as u64;
        self.in_flight.clear();
        self.updating = None;
    }
}

#[cfg(test)]
mod tests {
    use Mark::*;

    use super::*;

    fn run(hits: &[(Mark, u64)]) -> (Vec<(u64, u64, u64, u64)>, CorrelateCounts) {
        let mut queue = BatchQueue::default();
        let (mut counts, mut completed) = (CorrelateCounts::default(), 0);
        let steps = hits
            .iter()
            .filter_map(|&(mark, ktime_ns)| {
                let hit = Hit {
                    ktime_ns,
                    tid: 7,
                    mark,
                    snapshot: None,
                };
                queue.push(hit, &mut counts, &mut completed)
            })
            .map(|s| {
                (
                    s.start_ns,
                    s.schedule_done_ns,
                    s.execute_done_ns,
                    s.update_done_ns,
                )
            })
            .collect();
        queue.finish(&mut counts);
        (steps, counts)
    }

    #[test]
    fn a_batch_is_scheduled_in_one_call_and_updated_in_a_later_one() {
        let (steps, counts) = run(&[
            // call 1 schedules batch A and returns early
            (StepEntry, 100),
            (ScheduleDone, 110),
            // call 2 schedules B, then waits for A and updates from it
            (StepEntry, 200),
            (ScheduleDone, 210),
            (ExecuteDone, 900),
            (UpdateDone, 950),
            // call 3 schedules nothing new: waits for B and updates
            (StepEntry, 1000),
            (ExecuteDone, 1500),
            (UpdateDone, 1540),
            // call 4 schedules C; the trace ends before its update
            (StepEntry, 1600),
            (ScheduleDone, 1610),
        ]);
        assert_eq!(
            steps,
            [(100, 110, 900, 950), (200, 210, 1500, 1540)],
            "FIFO: A's record spans calls 1-2, B's calls 2-3"
        );
        assert_eq!(
            counts,
            CorrelateCounts {
                incomplete_steps: 1,
                ..Default::default()
            }
        );
    }

    /// A snapshot whose running list is `running` and scheduled dict `scheduled`, taking
    /// `copy_ns`.
    fn snapshot(running: &[u64], scheduled: Option<&[u64]>, copy_ns: u64) -> RawSnapshot {
        use tracer_common::capture::{snap, Item, ScheduledEntry, SnapshotHeader};
        RawSnapshot {
            header: SnapshotHeader {
                flags: snap::RUNNING | scheduled.map_or(0, |_| snap::SCHEDULED),
                n_running: running.len() as u32,
                running_len: running.len() as u32,
                n_scheduled: scheduled.map_or(0, |s| s.len() as u32),
                copy_ns,
                ..Default::default()
            },
            running: running
                .iter()
                .map(|&object| Item {
                    object,
                    ..Default::default()
                })
                .collect(),
            waiting: Vec::new(),
            scheduled: scheduled
                .unwrap_or_default()
                .iter()
                .map(|&key| ScheduledEntry {
                    key,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_keeps_the_snapshot_of_its_schedule_and_the_one_before_its_update() {
        let mut queue = BatchQueue::default();
        let (mut counts, mut completed) = (CorrelateCounts::default(), 0);
        let hits = [
            (StepEntry, 100, None),
            // Batch A scheduled requests 1 and 2; its output is not stored yet.
            (ScheduleDone, 110, Some(snapshot(&[1, 2], None, 5))),
            (StepEntry, 200, None),
            // Batch B: request 3 arrived and runs too.
            (ScheduleDone, 210, Some(snapshot(&[1, 2, 3], None, 7))),
            // Before A's update: the queues are B's, the local is A's output.
            (
                ExecuteDone,
                900,
                Some(snapshot(&[1, 2, 3], Some(&[11, 12]), 4)),
            ),
            (UpdateDone, 950, None),
        ];
        let steps: Vec<Step> = hits
            .into_iter()
            .filter_map(|(mark, ktime_ns, snapshot)| {
                let hit = Hit {
                    ktime_ns,
                    tid: 7,
                    mark,
                    snapshot,
                };
                queue.push(hit, &mut counts, &mut completed)
            })
            .collect();
        let [a] = &steps[..] else {
            panic!("one batch updated: {}", steps.len())
        };
        let objects = |s: &Option<RawSnapshot>| -> Vec<u64> {
            s.as_ref()
                .unwrap()
                .running
                .iter()
                .map(|i| i.object)
                .collect()
        };
        assert_eq!(objects(&a.at_schedule), [1, 2], "A's queues, not B's");
        let before_update = a.after_execute.as_ref().unwrap();
        let scheduled: Vec<u64> = before_update.scheduled.iter().map(|e| e.key).collect();
        assert_eq!(scheduled, [11, 12], "A's output");
        // The copy at A's schedule is off execute, the one before its update off update.
        assert_eq!(a.execute_ns(), 900 - 110 - 5);
        assert_eq!(a.update_ns(), 950 - 900 - 4);
        assert_eq!(a.tracer_ns(), 9);
    }

    #[test]
    fn an_update_whose_schedule_came_before_the_trace_is_counted_not_emitted() {
        let (steps, counts) = run(&[
            (StepEntry, 10),
            (ExecuteDone, 20),
            (UpdateDone, 30),
            (StepEntry, 40),
            (StepEntry, 50),
            (ScheduleDone, 60),
            (ExecuteDone, 70),
            (UpdateDone, 80),
        ]);
        assert_eq!(steps, [(50, 60, 70, 80)]);
        assert_eq!(
            counts,
            CorrelateCounts {
                idle_entries: 1,
                out_of_order: 2,
                ..Default::default()
            }
        );
    }
}
