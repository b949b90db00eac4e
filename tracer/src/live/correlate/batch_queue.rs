//! Per-batch records for `EngineCore.step_with_batch_queue` (async scheduling, pipeline
//! parallelism): one call of the step function schedules a batch and returns early, or pops
//! the oldest batch, waits for it and updates from it, or both (schedules the next batch,
//! then updates the oldest). The queue is FIFO (`appendleft` / `pop`), so the k-th batch
//! scheduled is the k-th updated, and the same four marks give a batch record: entry of the
//! call that scheduled it, the return of its `schedule()`, then in a later call the mark
//! before its `update_from_output()` and that call's return. Its execute phase is the time
//! between, overlapping the calls in between. Where on the engine thread the batch was
//! launched and waited for ([`BatchSpans`]) is what the CUDA fold needs. The engine's queue
//! length, read at every hit, keeps the FIFO pairing right when the trace starts with batches
//! in flight (or a mark was lost).

use std::collections::VecDeque;

use super::{BatchSpans, CorrelateCounts, Step};
use crate::live::{
    decode::{Hit, RawSnapshot},
    plan::Mark,
};

/// Batches in flight beyond this mean marks went missing (vLLM queues at most the pipeline
/// depth); the oldest is dropped and counted as incomplete.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Default)]
pub struct BatchQueue {
    /// The open call of the step function.
    call: Option<Call>,
    /// Calls seen, to tell whether a batch is updated by the call that scheduled it.
    calls: u64,
    /// Scheduled batches not yet updated, oldest first.
    in_flight: VecDeque<Scheduled>,
    /// The batch being updated.
    updating: Option<Updating>,
    tid: u32,
}

#[derive(Clone, Copy)]
struct Call {
    serial: u64,
    entry_ns: u64,
    /// When its `schedule()` returned, if it scheduled.
    scheduled_ns: Option<u64>,
    updating: bool,
}

struct Scheduled {
    call: u64,
    start_ns: u64,
    scheduled_ns: u64,
    /// The scheduler when its `schedule()` returned.
    at_schedule: Option<RawSnapshot>,
    /// The next mark after its `schedule()` returned, and whether that mark ended a wait for
    /// an older batch.
    launch_until: Option<(u64, bool)>,
}

struct Updating {
    batch: Scheduled,
    executed_ns: u64,
    /// The snapshot before its update.
    after_execute: Option<RawSnapshot>,
    wait_from_ns: u64,
    wait_shared: bool,
    update_call_ns: u64,
}

impl BatchQueue {
    /// Ends the launch stretch of the newest batch at the thread's next mark.
    fn end_launch(&mut self, at_ns: u64, waited: bool) {
        if let Some(newest) = self.in_flight.back_mut() {
            newest.launch_until.get_or_insert((at_ns, waited));
        }
    }

    /// Takes in the engine thread's next hit; the batch record it completes, if any.
    pub fn push(
        &mut self,
        hit: Hit,
        counts: &mut CorrelateCounts,
        completed: &mut u64,
    ) -> Option<Step> {
        match hit.mark {
            Mark::StepEntry => {
                self.entry(&hit, counts);
                None
            }
            _ if hit.tid != self.tid || self.call.is_none() => {
                counts.out_of_order += 1;
                None
            }
            Mark::ScheduleDone => {
                self.scheduled(hit, counts);
                None
            }
            Mark::ExecuteDone => {
                self.executed(hit, counts);
                None
            }
            Mark::UpdateDone => {
                let Some(updating) = self.updating.take() else {
                    counts.out_of_order += 1;
                    return None;
                };
                let step = self.step(updating, hit, *completed);
                *completed += 1;
                Some(step)
            }
        }
    }

    /// A call of the step function starts.
    fn entry(&mut self, hit: &Hit, counts: &mut CorrelateCounts) {
        if let Some(call) = self.call {
            if call.scheduled_ns.is_none() && !call.updating {
                counts.idle_entries += 1;
            }
        }
        if self.updating.take().is_some() {
            counts.incomplete_steps += 1;
        }
        self.end_launch(hit.ktime_ns, false);
        self.calls += 1;
        self.call = Some(Call {
            serial: self.calls,
            entry_ns: hit.ktime_ns,
            scheduled_ns: None,
            updating: false,
        });
        self.tid = hit.tid;
    }

    /// The open call's `schedule()` returned: a batch is in flight.
    fn scheduled(&mut self, hit: Hit, counts: &mut CorrelateCounts) {
        let call = self.call.as_mut().expect("checked by push");
        if call.scheduled_ns.is_some() || call.updating {
            counts.repeated_marks += 1;
            return;
        }
        call.scheduled_ns = Some(hit.ktime_ns);
        self.in_flight.push_back(Scheduled {
            call: call.serial,
            start_ns: call.entry_ns,
            scheduled_ns: hit.ktime_ns,
            at_schedule: hit.snapshot,
            launch_until: None,
        });
        if self.in_flight.len() > MAX_IN_FLIGHT {
            self.in_flight.pop_front();
            counts.incomplete_steps += 1;
        }
    }

    /// The open call has the oldest batch's output: that batch is being updated.
    fn executed(&mut self, hit: Hit, counts: &mut CorrelateCounts) {
        let call = *self.call.as_ref().expect("checked by push");
        if call.updating {
            counts.repeated_marks += 1;
            return;
        }
        self.call.as_mut().expect("checked by push").updating = true;
        self.end_launch(hit.ktime_ns, true);
        // The engine popped its oldest batch; `queue_len` are those left. Batches we hold
        // beyond them plus the popped one lost their update; fewer, and the popped one was
        // scheduled before the trace started.
        // A length beyond any pipeline depth is not a queue's: ignored.
        let left = hit
            .queue_len
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n < MAX_IN_FLIGHT);
        if let Some(left) = left {
            while self.in_flight.len() > left + 1 {
                self.in_flight.pop_front();
                counts.incomplete_steps += 1;
            }
            if self.in_flight.len() <= left {
                counts.out_of_order += 1;
                return;
            }
        }
        // None: its schedule came before the trace started.
        let Some(mut batch) = self.in_flight.pop_front() else {
            counts.out_of_order += 1;
            return;
        };
        // Scheduled by this very call (the queue had room but nothing more to schedule):
        // one stretch from its schedule() to its output, its own.
        let (wait_from_ns, wait_shared) = if batch.call == call.serial {
            batch.launch_until = Some((hit.ktime_ns, false));
            (batch.scheduled_ns, false)
        } else {
            (
                call.scheduled_ns.unwrap_or(call.entry_ns),
                call.scheduled_ns.is_some(),
            )
        };
        self.updating = Some(Updating {
            batch,
            executed_ns: hit.ktime_ns,
            after_execute: hit.snapshot,
            wait_from_ns,
            wait_shared,
            update_call_ns: call.entry_ns,
        });
    }

    /// The record of the batch `updating`, whose update ended at `hit`.
    fn step(&self, updating: Updating, hit: Hit, index: u64) -> Step {
        let batch = updating.batch;
        let (launch_until_ns, launch_shared) =
            batch.launch_until.unwrap_or((updating.executed_ns, false));
        Step {
            index,
            tid: self.tid,
            start_ns: batch.start_ns,
            schedule_done_ns: batch.scheduled_ns,
            execute_done_ns: updating.executed_ns,
            update_done_ns: hit.ktime_ns,
            after_execute: updating.after_execute,
            after_update: hit.snapshot,
            at_schedule: batch.at_schedule,
            batch: Some(BatchSpans {
                launch_until_ns,
                launch_shared,
                wait_from_ns: updating.wait_from_ns,
                wait_shared: updating.wait_shared,
                update_call_ns: updating.update_call_ns,
            }),
            overlap_ns: 0,
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

    /// Feeds hits (mark, time, batch-queue length) to a queue; the steps and the counts.
    fn feed(hits: &[(Mark, u64, Option<u64>)]) -> (Vec<Step>, CorrelateCounts) {
        let mut queue = BatchQueue::default();
        let (mut counts, mut completed) = (CorrelateCounts::default(), 0);
        let steps = hits
            .iter()
            .filter_map(|&(mark, ktime_ns, queue_len)| {
                let hit = Hit {
                    ktime_ns,
                    tid: 7,
                    mark,
                    snapshot: None,
                    queue_len,
                };
                queue.push(hit, &mut counts, &mut completed)
            })
            .collect();
        queue.finish(&mut counts);
        (steps, counts)
    }

    fn run(hits: &[(Mark, u64)]) -> (Vec<(u64, u64, u64, u64)>, CorrelateCounts) {
        let hits: Vec<_> = hits.iter().map(|&(mark, t)| (mark, t, None)).collect();
        let (steps, counts) = feed(&hits);
        let marks = steps
            .iter()
            .map(|s| {
                (
                    s.start_ns,
                    s.schedule_done_ns,
                    s.execute_done_ns,
                    s.update_done_ns,
                )
            })
            .collect();
        (marks, counts)
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

    #[test]
    fn a_batch_knows_the_stretches_of_its_launch_and_its_wait() {
        let hits = [
            // call 1 schedules A and returns early: A's launch runs to call 2's entry
            (StepEntry, 100, None),
            (ScheduleDone, 110, None),
            // call 2 schedules and launches B, then waits for A
            (StepEntry, 200, None),
            (ScheduleDone, 210, None),
            (ExecuteDone, 900, None),
            (UpdateDone, 950, None),
            // call 3 has nothing to schedule: waits for B only
            (StepEntry, 1000, None),
            (ExecuteDone, 1500, None),
            (UpdateDone, 1540, None),
            // call 4 schedules C and, the queue having room, waits for it at once
            (StepEntry, 1600, None),
            (ScheduleDone, 1610, None),
            (ExecuteDone, 1700, None),
            (UpdateDone, 1720, None),
        ];
        let spans: Vec<BatchSpans> = feed(&hits)
            .0
            .into_iter()
            .map(|step| step.batch.expect("per batch"))
            .collect();
        let span = |launch_until_ns, launch_shared, wait_from_ns, wait_shared, update_call_ns| {
            BatchSpans {
                launch_until_ns,
                launch_shared,
                wait_from_ns,
                wait_shared,
                update_call_ns,
            }
        };
        assert_eq!(
            spans,
            [
                span(200, false, 210, true, 200),
                span(900, true, 1000, false, 1000),
                span(1700, false, 1610, false, 1600),
            ]
        );
    }

    #[test]
    fn the_queue_length_pairs_updates_when_the_trace_starts_with_a_batch_in_flight() {
        let (steps, counts) = feed(&[
            // Batch A was scheduled before the trace. Call 1 schedules B, then pops A: one
            // batch (B) is left in vLLM's queue, which is all we hold: A is not ours.
            (StepEntry, 100, Some(1)),
            (ScheduleDone, 110, Some(2)),
            (ExecuteDone, 500, Some(1)),
            (UpdateDone, 520, Some(1)),
            // Call 2 schedules C and pops B, leaving C.
            (StepEntry, 600, Some(1)),
            (ScheduleDone, 610, Some(2)),
            (ExecuteDone, 900, Some(1)),
            (UpdateDone, 950, Some(1)),
        ]);
        let marks: Vec<_> = steps
            .iter()
            .map(|s| (s.start_ns, s.schedule_done_ns, s.execute_done_ns))
            .collect();
        assert_eq!(
            marks,
            [(100, 110, 900)],
            "B: scheduled in call 1, out in call 2"
        );
        assert_eq!(counts.out_of_order, 2, "A's update is not paired with B");
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
                    queue_len: None,
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
