//! Stage 6, correlate: hits of the four marks into engine steps (here, per batch in
//! [`batch_queue`]), and the scheduler snapshots those steps carry into request lifecycles
//! ([`requests`]) and waiting reasons ([`reasons`]). Imports decode, plan and snapshot's
//! types, and fills schema's rows; sinks and session import it, never the reverse.
//!
//! A step is `StepEntry → ScheduleDone → ExecuteDone → UpdateDone`, in that order, on the
//! engine thread. Anything else is counted, never turned into a row: an entry with no
//! schedule (vLLM's early return when there is nothing to do), a step cut short (a lost hit,
//! or an exception inside the step), a repeated mark (a one-time rewrite the address filter
//! could not tell apart).

pub mod batch_queue;
pub mod reasons;
pub mod requests;

use tracer_common::capture::snap;

use crate::{
    live::{
        decode::{Hit, RawSnapshot},
        plan::Mark,
    },
    schema::run_info::CorrelateCounts,
};

/// One complete engine step, CLOCK_MONOTONIC ns at each mark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// 0-based index among the steps this trace completed.
    pub index: u64,
    pub tid: u32,
    pub start_ns: u64,
    pub schedule_done_ns: u64,
    pub execute_done_ns: u64,
    pub update_done_ns: u64,
    /// The scheduler as `schedule()` left it (copied when `execute_model()` returns, which
    /// changes no queue), and as `update_from_output()` left it (when snapshots are planned
    /// and could be taken).
    pub after_execute: Option<RawSnapshot>,
    pub after_update: Option<RawSnapshot>,
    /// The scheduler when `schedule()` returned: per batch (`step_with_batch_queue`), for its
    /// queue columns (the two above are taken in the call that updates the batch, after
    /// later batches were scheduled; they stay the request lifecycle's view, whose snapshots
    /// must follow each other in time); on the `step` path, a shadow copy (see `shadow`).
    pub at_schedule: Option<RawSnapshot>,
    /// Per batch: where on the engine thread the batch was launched and waited for.
    pub batch: Option<BatchSpans>,
    /// Time at the start of this step that an earlier step still covered (per batch, the
    /// batches in flight overlap): `step_ns - overlap_ns` adds up, over a run, to the wall
    /// time during which the engine had a step or batch in flight.
    pub overlap_ns: u64,
}

/// A batch of `step_with_batch_queue` runs in two calls of the step function: the one that
/// schedules it launches it (`execute_model(non_block=True)`) and may then wait for an older
/// batch; a later call may first schedule and launch a newer batch, then waits for this
/// one's output and updates from it. The engine thread's marks bound those two stretches;
/// where a stretch holds two batches' work, the CUDA calls in it tell where one ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSpans {
    /// End of the stretch that began when this batch's `schedule()` returned: the next mark
    /// on the thread (the older batch's output in, or the next call's entry).
    pub launch_until_ns: u64,
    /// That stretch ended with waiting for an older batch.
    pub launch_shared: bool,
    /// Start of the stretch that ended with this batch's output in: the previous mark in the
    /// call that waited for it (a newer batch's `schedule()` return, or the call's entry).
    pub wait_from_ns: u64,
    /// That stretch began with launching a newer batch.
    pub wait_shared: bool,
    /// Entry of the call that updated this batch: every batch not yet complete started at
    /// or after it.
    pub update_call_ns: u64,
}

/// Phases leave out the time the tracer's snapshots held the engine thread: the copy after
/// `execute_model()` returns runs before `update_from_output()` starts, so it comes off
/// update (and the step); the copy after `update_from_output()` falls after the step's end.
/// Per batch, the copy when `schedule()` returned comes off execute.
impl Step {
    fn copy_ns(snapshot: &Option<RawSnapshot>) -> u64 {
        snapshot.as_ref().map_or(0, |s| s.header.copy_ns)
    }
    pub fn schedule_ns(&self) -> u64 {
        self.schedule_done_ns - self.start_ns
    }
    pub fn execute_ns(&self) -> u64 {
        (self.execute_done_ns - self.schedule_done_ns)
            .saturating_sub(Self::copy_ns(&self.at_schedule))
    }
    pub fn update_ns(&self) -> u64 {
        (self.update_done_ns - self.execute_done_ns)
            .saturating_sub(Self::copy_ns(&self.after_execute))
    }
    pub fn step_ns(&self) -> u64 {
        self.schedule_ns() + self.execute_ns() + self.update_ns()
    }

    /// How long the engine thread left the scheduler alone after `schedule()` returned: to
    /// the batch's next mark per batch, else to the end of execute.
    pub fn still_ns(&self) -> u64 {
        match self.batch {
            Some(batch) => batch.launch_until_ns.saturating_sub(self.schedule_done_ns),
            None => self.execute_done_ns - self.schedule_done_ns,
        }
    }

    /// When vLLM stamped the outputs this step's update returned (its request stats'
    /// first-token and last-token times): the stamp the snapshot after the update read, if
    /// it falls inside the update; else the update's return.
    pub fn outputs_ns(&self) -> u64 {
        self.after_update
            .as_ref()
            .filter(|s| s.header.flags & snap::OUTPUTS != 0)
            .map(|s| f64::from_bits(s.header.outputs_stamp) * 1e9)
            .filter(|ns| (self.execute_done_ns as f64..=self.update_done_ns as f64).contains(ns))
            .map_or(self.update_done_ns, |ns| ns.round() as u64)
    }

    /// Time the tracer's snapshots of this step held the engine thread.
    pub fn tracer_ns(&self) -> u64 {
        Self::copy_ns(&self.at_schedule)
            + Self::copy_ns(&self.after_execute)
            + Self::copy_ns(&self.after_update)
    }
}

#[derive(Default)]
pub struct Correlator {
    /// Times of the marks seen so far in the open step, in mark order.
    open: Vec<u64>,
    /// Snapshots of the open step, by position in [`ORDER`].
    snapshots: [Option<RawSnapshot>; 4],
    tid: u32,
    completed: u64,
    /// Latest end of the steps completed so far (for [`Step::overlap_ns`]).
    covered_until_ns: u64,
    pub counts: CorrelateCounts,
    /// Per-batch records instead (`step_with_batch_queue`).
    batch: Option<batch_queue::BatchQueue>,
}

const ORDER: [Mark; 4] = [
    Mark::StepEntry,
    Mark::ScheduleDone,
    Mark::ExecuteDone,
    Mark::UpdateDone,
];

impl Correlator {
    /// A correlator for the plan's step function: per call, or per batch when a batch is
    /// scheduled in one call and updated in a later one.
    pub fn new(per_batch: bool) -> Self {
        Self {
            batch: per_batch.then(Default::default),
            ..Default::default()
        }
    }

    pub fn push(&mut self, hit: Hit) -> Option<Step> {
        let mut step = self.push_mark(hit)?;
        step.overlap_ns = self
            .covered_until_ns
            .saturating_sub(step.start_ns)
            .min(step.step_ns());
        self.covered_until_ns = self.covered_until_ns.max(step.update_done_ns);
        Some(step)
    }

    fn push_mark(&mut self, hit: Hit) -> Option<Step> {
        if let Some(batch) = &mut self.batch {
            return batch.push(hit, &mut self.counts, &mut self.completed);
        }
        let position = ORDER
            .iter()
            .position(|m| *m == hit.mark)
            .expect("every mark is in ORDER");
        if hit.mark == Mark::StepEntry {
            match self.open.len() {
                0 => {}
                1 => self.counts.idle_entries += 1,
                _ => self.counts.incomplete_steps += 1,
            }
            self.open.clear();
            self.snapshots = Default::default();
            self.open.push(hit.ktime_ns);
            self.tid = hit.tid;
            return None;
        }
        if position == self.open.len() && hit.tid == self.tid {
            self.open.push(hit.ktime_ns);
            self.snapshots[position] = hit.snapshot;
        } else if position + 1 == self.open.len() {
            self.counts.repeated_marks += 1;
            return None;
        } else {
            self.counts.out_of_order += 1;
            return None;
        }
        if self.open.len() < ORDER.len() {
            return None;
        }
        let step = Step {
            index: self.completed,
            tid: self.tid,
            start_ns: self.open[0],
            schedule_done_ns: self.open[1],
            execute_done_ns: self.open[2],
            update_done_ns: self.open[3],
            at_schedule: self.snapshots[1].take(),
            after_execute: self.snapshots[2].take(),
            after_update: self.snapshots[3].take(),
            ..Step::default()
        };
        self.completed += 1;
        self.open.clear();
        Some(step)
    }

    /// Ends the trace: a step still open is counted, not emitted.
    pub fn finish(&mut self) {
        if let Some(batch) = &mut self.batch {
            batch.finish(&mut self.counts);
        }
        if self.open.len() > 1 {
            self.counts.incomplete_steps += 1;
        }
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(mark: Mark, ktime_ns: u64) -> Hit {
        Hit {
            ktime_ns,
            tid: 5,
            mark,
            snapshot: None,
            queue_len: None,
        }
    }

    fn feed(correlator: &mut Correlator, hits: &[(Mark, u64)]) -> Vec<Step> {
        hits.iter()
            .filter_map(|&(mark, t)| correlator.push(hit(mark, t)))
            .collect()
    }

    use Mark::*;

    /// vLLM's stamp counts only inside the update it was read after (a stale or foreign
    /// value in the slot must not move a request's times).
    #[test]
    fn outputs_stamp_inside_the_update_is_taken() {
        let step = |stamp_s: Option<f64>| Step {
            execute_done_ns: 2_000_000_000,
            update_done_ns: 2_000_300_000,
            after_update: stamp_s.map(|s| RawSnapshot {
                header: tracer_common::capture::SnapshotHeader {
                    flags: snap::OUTPUTS,
                    outputs_stamp: s.to_bits(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Step::default()
        };
        assert_eq!(step(Some(2.000_1)).outputs_ns(), 2_000_100_000);
        assert_eq!(step(None).outputs_ns(), 2_000_300_000);
        for outside in [1.999_9, 2.000_4, f64::NAN, -1.0, 0.0] {
            assert_eq!(step(Some(outside)).outputs_ns(), 2_000_300_000, "{outside}");
        }
    }

    #[test]
    fn four_marks_make_a_step() {
        let mut c = Correlator::default();
        let steps = feed(
            &mut c,
            &[
                (StepEntry, 100),
                (ScheduleDone, 130),
                (ExecuteDone, 1130),
                (UpdateDone, 1150),
            ],
        );
        assert_eq!(steps.len(), 1);
        let s = &steps[0];
        assert_eq!(
            (
                s.index,
                s.tid,
                s.schedule_ns(),
                s.execute_ns(),
                s.update_ns(),
                s.step_ns()
            ),
            (0, 5, 30, 1000, 20, 1050)
        );
        assert_eq!(c.counts, CorrelateCounts::default());
    }

    #[test]
    fn mid_step_start_idle_entries_and_repeats_are_counted_not_emitted() {
        let mut c = Correlator::default();
        let steps = feed(
            &mut c,
            &[
                // attached mid-step: the tail of a step with no entry
                (ExecuteDone, 1),
                (UpdateDone, 2),
                // an idle entry (early return)
                (StepEntry, 10),
                // a real step with a repeated mark
                (StepEntry, 20),
                (ScheduleDone, 25),
                (ScheduleDone, 26),
                (ExecuteDone, 40),
                (UpdateDone, 45),
                // a step cut short, then another complete one
                (StepEntry, 50),
                (ScheduleDone, 55),
                (StepEntry, 60),
                (ScheduleDone, 61),
                (ExecuteDone, 62),
                (UpdateDone, 63),
                // still open at the end
                (StepEntry, 70),
                (ScheduleDone, 71),
            ],
        );
        assert_eq!(
            steps
                .iter()
                .map(|s| (s.index, s.start_ns, s.schedule_ns()))
                .collect::<Vec<_>>(),
            [(0, 20, 5), (1, 60, 1)]
        );
        c.finish();
        assert_eq!(
            c.counts,
            CorrelateCounts {
                idle_entries: 1,
                incomplete_steps: 2,
                repeated_marks: 1,
                out_of_order: 2
            }
        );
    }
}
