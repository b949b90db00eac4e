//! Folding CUDA calls into engine steps, by time.
//!
//! Every call carries CLOCK_MONOTONIC stamps (`bpf_ktime_get_ns`), the clock the step marks
//! use too, in whichever process made it. A call belongs to the step whose window
//! `[start, end]` holds the moment it was recorded (a launch's entry, a timed call's
//! return). With TP > 1 the calls come from worker processes while the engine thread waits
//! inside `execute_model`, so they land in that step's execute phase; what a worker does
//! after the engine thread has stopped waiting lands in the update phase or later. Calls
//! between steps (or before the first, or during steps that did not complete) are counted
//! as outside steps, never dropped.

use serde::Serialize;

use super::api::Class;
use crate::correlate::Step;

/// Calls not folded after this long are counted as outside steps: no engine step lasts
/// 10 s, and memory stays bounded while no steps complete.
pub const HORIZON_NS: u64 = 10_000_000_000;

/// One decoded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub start_ns: u64,
    /// When it was recorded: at return for timed calls, at entry (= start) for the others.
    pub end_ns: u64,
    pub class: Class,
}

/// Calls by class, and the host time spent in the timed ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallTotals {
    pub launches: u64,
    pub graph_launches: u64,
    pub syncs: u64,
    pub sync_ns: u64,
    pub d2h_copies: u64,
    pub d2h_ns: u64,
}

impl CallTotals {
    fn add(&mut self, call: &Call) {
        let ns = call.end_ns - call.start_ns;
        match call.class {
            Class::Launch => self.launches += 1,
            Class::GraphLaunch => self.graph_launches += 1,
            Class::Sync => {
                self.syncs += 1;
                self.sync_ns += ns;
            }
            Class::CopyDtoH => {
                self.d2h_copies += 1;
                self.d2h_ns += ns;
            }
        }
    }

    fn add_all(&mut self, other: &CallTotals) {
        self.launches += other.launches;
        self.graph_launches += other.graph_launches;
        self.syncs += other.syncs;
        self.sync_ns += other.sync_ns;
        self.d2h_copies += other.d2h_copies;
        self.d2h_ns += other.d2h_ns;
    }
}

/// A step's boundaries, CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub schedule_done_ns: u64,
    pub execute_done_ns: u64,
    pub end_ns: u64,
}

impl From<&Step> for Window {
    fn from(step: &Step) -> Self {
        Self {
            start_ns: step.start_ns,
            schedule_done_ns: step.schedule_done_ns,
            execute_done_ns: step.execute_done_ns,
            end_ns: step.update_done_ns,
        }
    }
}

/// What one step's calls add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepCalls {
    pub totals: CallTotals,
    /// Time within the execute phase during which some traced thread was blocked in a sync
    /// or a device-to-host copy: the union of those calls' intervals, so parallel workers'
    /// waits count once.
    pub execute_blocked_ns: u64,
}

/// Calls waiting for their step, and the counts of those that got none.
#[derive(Debug, Default)]
pub struct Folder {
    /// Sorted by `end_ns`.
    pending: Vec<Call>,
    /// End of the last folded step: calls recorded before it can no longer be placed.
    folded_until: u64,
    pub in_steps: CallTotals,
    pub outside: CallTotals,
    /// Calls that arrived after their moment had been folded (a producer on another CPU
    /// was between its time stamp and its ring-buffer commit when we drained).
    pub late: u64,
    /// Calls left unfolded for [`HORIZON_NS`].
    pub expired: u64,
}

impl Folder {
    pub fn push(&mut self, calls: impl IntoIterator<Item = Call>) {
        for call in calls {
            if call.end_ns <= self.folded_until {
                self.late += 1;
                self.outside.add(&call);
            } else {
                self.pending.push(call);
            }
        }
        // Rings from several CPUs interleave slightly out of order; a stable sort of a
        // mostly sorted buffer is cheap.
        self.pending.sort_by_key(|c| c.end_ns);
    }

    /// The calls of one step. Steps must come in time order.
    pub fn fold(&mut self, window: Window) -> StepCalls {
        let before = self.pending.partition_point(|c| c.end_ns < window.start_ns);
        for call in self.pending.drain(..before) {
            self.outside.add(&call);
        }
        let inside = self.pending.partition_point(|c| c.end_ns <= window.end_ns);
        let mut step = StepCalls::default();
        let mut blocked = Vec::new();
        for call in self.pending.drain(..inside) {
            step.totals.add(&call);
            if call.class.timed() {
                let start = call.start_ns.max(window.schedule_done_ns);
                let end = call.end_ns.min(window.execute_done_ns);
                if start < end {
                    blocked.push((start, end));
                }
            }
        }
        step.execute_blocked_ns = union_length(&mut blocked);
        self.in_steps.add_all(&step.totals);
        self.folded_until = self.folded_until.max(window.end_ns);
        step
    }

    /// Counts calls recorded before `now_ns - HORIZON_NS` as outside steps.
    pub fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(HORIZON_NS);
        let old = self.pending.partition_point(|c| c.end_ns < cutoff);
        self.expired += old as u64;
        for call in self.pending.drain(..old) {
            self.outside.add(&call);
        }
    }

    /// Ends the trace: whatever is left happened after the last complete step.
    pub fn finish(&mut self) {
        for call in self.pending.drain(..) {
            self.outside.add(&call);
        }
    }
}

/// Total length covered by a set of intervals.
fn union_length(intervals: &mut [(u64, u64)]) -> u64 {
    intervals.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for &(start, end) in intervals.iter() {
        match current {
            Some((s, e)) if start <= e => current = Some((s, e.max(end))),
            _ => {
                if let Some((s, e)) = current {
                    total += e - s;
                }
                current = Some((start, end));
            }
        }
    }
    total + current.map_or(0, |(s, e)| e - s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(at: u64) -> Call {
        Call {
            start_ns: at,
            end_ns: at,
            class: Class::Launch,
        }
    }

    fn timed(class: Class, start_ns: u64, end_ns: u64) -> Call {
        Call {
            start_ns,
            end_ns,
            class,
        }
    }

    fn window(start_ns: u64, schedule_done_ns: u64, execute_done_ns: u64, end_ns: u64) -> Window {
        Window {
            start_ns,
            schedule_done_ns,
            execute_done_ns,
            end_ns,
        }
    }

    #[test]
    fn calls_go_to_the_step_holding_them_and_the_rest_outside() {
        let mut folder = Folder::default();
        folder.push([
            launch(5), // before the first step
            launch(120),
            launch(110),
            timed(Class::Sync, 130, 180),
            timed(Class::CopyDtoH, 180, 190),
            launch(205), // between steps
            timed(Class::Sync, 310, 330),
        ]);
        let first = folder.fold(window(100, 105, 195, 200));
        assert_eq!(
            first,
            StepCalls {
                totals: CallTotals {
                    launches: 2,
                    syncs: 1,
                    sync_ns: 50,
                    d2h_copies: 1,
                    d2h_ns: 10,
                    ..Default::default()
                },
                execute_blocked_ns: 60,
            }
        );
        let second = folder.fold(window(300, 305, 320, 340));
        // The sync ends in the update phase: counted in the step, blocked only until 320.
        assert_eq!(second.totals.sync_ns, 20);
        assert_eq!(second.execute_blocked_ns, 10);
        // A straggler for the first step, drained after it was folded.
        folder.push([launch(150), launch(400)]);
        folder.finish();
        assert_eq!(
            folder.outside,
            CallTotals {
                launches: 4,
                ..Default::default()
            }
        );
        assert_eq!(folder.late, 1);
        assert_eq!(folder.in_steps.launches, 2);
        assert_eq!(folder.in_steps.syncs, 2);
    }

    #[test]
    fn parallel_waits_count_once_in_the_execute_split() {
        let mut folder = Folder::default();
        // Two workers wait at once, partly overlapping.
        folder.push([
            timed(Class::Sync, 20, 60),
            timed(Class::Sync, 40, 80),
            timed(Class::Sync, 90, 95),
        ]);
        let step = folder.fold(window(0, 10, 100, 110));
        assert_eq!(step.totals.sync_ns, 40 + 40 + 5);
        assert_eq!(step.execute_blocked_ns, 60 + 5);
    }

    #[test]
    fn unfolded_calls_expire_into_outside() {
        let mut folder = Folder::default();
        folder.push([launch(1_000), launch(HORIZON_NS + 5_000)]);
        folder.expire(HORIZON_NS + 2_000);
        assert_eq!((folder.expired, folder.outside.launches), (1, 1));
        assert_eq!(
            folder
                .fold(window(HORIZON_NS, 0, 0, HORIZON_NS + 9_000))
                .totals
                .launches,
            1
        );
    }
}
