//! Folding CUDA calls into engine steps, by time.
//!
//! Every call carries CLOCK_MONOTONIC stamps (`bpf_ktime_get_ns`), the clock the step marks
//! use too, in whichever process made it. A call is placed by the moment it was recorded (a
//! launch's entry, a timed call's return). A step owns its window `[start, end]`. With TP > 1
//! the calls come from worker processes while the engine thread waits inside
//! `execute_model`, so they land in that step's execute phase; what a worker does after the
//! engine thread has stopped waiting lands in the update phase or later.
//!
//! A batch of `step_with_batch_queue` owns less than its window, which overlaps its
//! neighbours' ([`BatchSpans`]): its `schedule()`, the stretch after it up to where the
//! engine thread starts waiting for an older batch (its launch), the stretch from where a
//! newer batch's launch ends to its own output (its wait), and its update. Where a stretch
//! holds a launch and a wait, the wait is the last synchronization in it (the future's
//! `result()` blocks on the batch's output event): calls before that sync's entry are the
//! launch, the sync and what follows are the wait. Without a sync in the stretch it is all
//! launch.
//!
//! A worker process whose batches are marked ([`BatchMark`]: the entry of its per-batch
//! function, watched on the thread that runs it) is not folded by the engine's spans: under
//! async scheduling it launches batch N+1 while the engine still waits for N, and waits for
//! N's output in another thread. It begins batches in the order the engine sends them: N's
//! mark is its next after the engine's `schedule()` of N returned (the engine sends N after
//! that; an older mark is a batch before the trace's first row). A rank that begins N only
//! after N's row was written has its mark skipped when it comes. The marking thread's calls
//! from that mark up to its next are N's; the process's other threads' calls after N's last
//! launch, up to the first sync that ends by N's output, are N's wait
//! ([`Folder::marked_batches`]). Where the engine makes no sync of its own, a batch's launch
//! ends where its first worker began it.
//!
//! Calls no step claims (between steps, before the first, during steps that did not
//! complete) are counted as outside steps, never dropped.
//!
//! Each call carries its process, so a step's calls also add up per process
//! ([`ProcessCalls`]): with tensor parallelism, per rank. The same spans decide for every
//! process, so the per-process shares of a step sum to its totals.

use super::api::Class;
use crate::{
    live::correlate::{BatchSpans, Step},
    schema::run_info::CallTotals,
};

/// Calls not folded after this long are counted as outside steps: no engine step lasts
/// 10 s, and memory stays bounded while no steps complete.
pub const HORIZON_NS: u64 = 10_000_000_000;

/// One decoded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The process and thread that made it.
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    /// When it was recorded: at return for timed calls, at entry (= start) for the others.
    pub end_ns: u64,
    pub class: Class,
}

impl CallTotals {
    fn add(&mut self, call: &Call) {
        let ns = call.end_ns.saturating_sub(call.start_ns);
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

/// A step's marks, CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub schedule_done_ns: u64,
    pub execute_done_ns: u64,
    pub end_ns: u64,
    pub batch: Option<BatchSpans>,
}

impl Window {
    /// The earliest start of a step not complete when this one completed: calls before it
    /// that no step claimed happened between steps.
    fn next_start_bound(&self) -> u64 {
        self.batch.map_or(self.end_ns, |batch| batch.update_call_ns)
    }
}

impl From<&Step> for Window {
    fn from(step: &Step) -> Self {
        Self {
            start_ns: step.start_ns,
            schedule_done_ns: step.schedule_done_ns,
            execute_done_ns: step.execute_done_ns,
            end_ns: step.update_done_ns,
            batch: step.batch,
        }
    }
}

/// One process's share of a step's calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCalls {
    pub pid: u32,
    pub totals: CallTotals,
    /// Time within the step's launch and wait stretches during which this process was
    /// blocked in a sync or a device-to-host copy (the union of its calls' intervals).
    pub blocked_ns: u64,
    /// Entry and return of its last sync or copy in the step (the last to begin): where it
    /// had launched its share and started waiting for the result, and where that ended.
    pub last_wait: Option<(u64, u64)>,
}

/// What one step's calls add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepCalls {
    pub totals: CallTotals,
    /// Length of the stretch in which the step's work was launched: its whole execute phase
    /// for a step, from `schedule()`'s return to the start of a wait for an older batch (or
    /// the next call) for a batch.
    pub launch_ns: u64,
    /// Time within the launch stretch, and within the batch's wait stretch, during which some
    /// traced thread was blocked in a sync or a device-to-host copy: the union of those
    /// calls' intervals, so parallel workers' waits count once.
    pub launch_blocked_ns: u64,
    pub wait_blocked_ns: u64,
    /// Per process that made calls in the step, by pid.
    pub processes: Vec<ProcessCalls>,
}

/// A worker thread began a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMark {
    pub pid: u32,
    pub tid: u32,
    pub ns: u64,
}

/// A thread that marks the batches of its process.
#[derive(Clone, Copy, Debug)]
struct MarkedThread {
    pid: u32,
    tid: u32,
    /// When its watch went in.
    since_ns: u64,
    /// One of its marks was matched (since the last [`Folder::realign`]): from then on each
    /// step takes its next.
    aligned: bool,
    /// One of its marks was ever matched.
    matched_any: bool,
    /// Steps written before their mark came: the next marks to come are theirs.
    owed: u64,
}

/// Where the calls of a marked worker go, for one step.
struct MarkedBatch {
    pid: u32,
    /// The thread that marks batches.
    tid: u32,
    /// Its mark of this batch, if one was found.
    began_ns: Option<u64>,
    /// Its next mark, if already in: the marking thread's calls from then on are a later
    /// batch's.
    next_ns: u64,
    /// Other threads' calls that began after `output_from_ns` and end no later than
    /// `output_until_ns` are this batch's.
    output_from_ns: u64,
    output_until_ns: u64,
}

/// Where a call goes when a step is folded.
enum Place {
    Step,
    Later,
    Outside,
}

impl MarkedBatch {
    fn place(&self, call: &Call) -> Place {
        let end = call.end_ns;
        if call.tid == self.tid {
            match self.began_ns {
                _ if end >= self.next_ns => Place::Later,
                Some(began) if end >= began => Place::Step,
                // No mark for this batch: a later one may claim what came after it began.
                None if end > self.output_from_ns => Place::Later,
                _ => Place::Outside,
            }
        } else if end > self.output_until_ns {
            Place::Later
        } else if call.start_ns > self.output_from_ns {
            Place::Step
        } else {
            Place::Outside
        }
    }
}

/// Calls waiting for their step, and the counts of those that got none.
#[derive(Debug, Default)]
pub struct Folder {
    /// Sorted by `end_ns`.
    pending: Vec<Call>,
    /// Calls recorded before this can no longer be placed: every step still to come starts
    /// after it.
    folded_until: u64,
    pub in_steps: CallTotals,
    pub outside: CallTotals,
    /// Calls that arrived after their moment had been folded (a producer on another CPU
    /// was between its time stamp and its ring-buffer commit when we drained).
    pub late: u64,
    /// Calls left unfolded for [`HORIZON_NS`].
    pub expired: u64,
    /// Where the wait began in stretches shared by two batches, by the stretch's end: the
    /// older batch, folded first, takes the sync; the newer finds its launch's end here.
    wait_starts: Vec<(u64, u64)>,
    /// Processes whose batches are marked.
    marked: Vec<MarkedThread>,
    /// Marks not matched to a batch yet, by time.
    marks: Vec<BatchMark>,
    /// Marks matched to a batch, and marks that fit none (a batch before the trace's first,
    /// or one whose engine step was not complete).
    pub marks_matched: u64,
    pub marks_unmatched: u64,
}

/// `[from, to]` in ns, inclusive of the moment a call at `to` was recorded.
type Span = (u64, u64);

impl Folder {
    pub fn push(&mut self, calls: impl IntoIterator<Item = Call>) {
        for call in calls {
            if call.end_ns < self.folded_until {
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

    /// Marks the batches of process `pid`: its calls are placed by the marks thread `tid`
    /// makes ([`Folder::push_mark`]) from the first step scheduled after `since_ns`, when the
    /// watch on the thread was in (an earlier step's mark may be missing).
    pub fn mark_batches(&mut self, pid: u32, tid: u32, since_ns: u64) {
        if !self.marked.iter().any(|m| (m.pid, m.tid) == (pid, tid)) {
            self.marked.push(MarkedThread {
                pid,
                tid,
                since_ns,
                aligned: false,
                matched_any: false,
                owed: 0,
            });
        }
    }

    pub fn push_mark(&mut self, mark: BatchMark) {
        let at = self.marks.partition_point(|m| m.ns <= mark.ns);
        self.marks.insert(at, mark);
    }

    /// Matches each marked process's marks afresh from steps scheduled after `now_ns` (marks
    /// may have been lost before then, which would leave a rank a batch ahead for good).
    pub fn realign(&mut self, now_ns: u64) {
        for thread in &mut self.marked {
            thread.aligned = false;
            thread.owed = 0;
            thread.since_ns = now_ns;
        }
    }

    /// Marked processes none of whose marks fitted a step: their calls were folded by time.
    pub fn never_marked(&self) -> impl Iterator<Item = u32> + '_ {
        self.marked.iter().filter(|m| !m.matched_any).map(|m| m.pid)
    }

    fn is_marked(&self, pid: u32) -> bool {
        self.marked.iter().any(|m| m.pid == pid)
    }

    /// Where the wait for an older batch starts in a stretch `[from, to]` that began with a
    /// launch: the entry of the last sync the engine's own threads recorded in it, else the
    /// first batch mark in it (a worker began the batch: it was sent), else `to` (all launch).
    fn wait_start(&mut self, (from, to): Span) -> u64 {
        if let Some(&(_, start)) = self.wait_starts.iter().find(|(end, _)| *end == to) {
            return start;
        }
        let within = |ns: u64| from <= ns && ns <= to;
        let start = self
            .pending
            .iter()
            .rev()
            .find(|c| c.class == Class::Sync && within(c.end_ns) && !self.is_marked(c.pid))
            .map(|c| c.start_ns.max(from))
            .or_else(|| self.marks.iter().map(|m| m.ns).find(|&ns| within(ns)))
            .unwrap_or(to);
        self.wait_starts.push((to, start));
        start
    }

    /// The spans a step owns (calls recorded in them are its), its launch stretch and its
    /// wait stretch (per batch only).
    fn stretches(&mut self, window: &Window) -> (Vec<Span>, Span, Option<Span>) {
        match window.batch {
            None => (
                vec![(window.start_ns, window.end_ns)],
                (window.schedule_done_ns, window.execute_done_ns),
                None,
            ),
            Some(batch) => {
                let launch_end = if batch.launch_shared {
                    self.wait_start((window.schedule_done_ns, batch.launch_until_ns))
                } else {
                    batch.launch_until_ns
                };
                let wait_start = if batch.wait_shared {
                    self.wait_start((batch.wait_from_ns, window.execute_done_ns))
                } else {
                    batch.wait_from_ns
                };
                let launch = (window.schedule_done_ns, launch_end);
                let wait = (wait_start, window.execute_done_ns);
                // The end of the launch stretch belongs to the wait it holds: half-open.
                let launch_owned = if batch.launch_shared {
                    (launch.0, launch.1.saturating_sub(1))
                } else {
                    launch
                };
                let owned = vec![
                    (window.start_ns, window.schedule_done_ns),
                    launch_owned,
                    wait,
                    (window.execute_done_ns, window.end_ns),
                ];
                (owned, launch, Some(wait))
            }
        }
    }

    /// Each marked process's batch for the step in `window`: its next mark, once marks of
    /// steps already written and marks from before `schedule()` returned are dropped. The
    /// first is the first mark between `schedule()`'s return and the output's arrival (the
    /// worker begins a batch before it answers it).
    ///
    /// The batch's output is waited for in another thread once the marking thread has
    /// launched it, with one sync (vLLM's async output thread: one event synchronize per
    /// batch), and batches are answered in order: the batch's are the other threads' calls
    /// that began after its last launch (or its mark), up to the end of the first sync among
    /// them. A later batch's sync can end before the engine takes this one's output (the
    /// engine was busy), so the output's arrival bounds the wait only from above; an older
    /// batch's sync can begin after this one's mark (the output thread was late), rarely
    /// after its last launch.
    fn marked_batches(&mut self, window: &Window) -> Vec<MarkedBatch> {
        let (after, until) = (window.schedule_done_ns, window.execute_done_ns);
        let mut batches = Vec::with_capacity(self.marked.len());
        for i in 0..self.marked.len() {
            let MarkedThread { pid, tid, .. } = self.marked[i];
            while self.marked[i].owed > 0 {
                let Some(at) = self.marks.iter().position(|m| m.pid == pid) else {
                    break;
                };
                self.marks.remove(at);
                self.marked[i].owed -= 1;
                self.marks_unmatched += 1;
            }
            let stale = |m: &BatchMark| m.pid == pid && m.ns <= after;
            self.marks_unmatched += self.marks.iter().filter(|m| stale(m)).count() as u64;
            self.marks.retain(|m| !stale(m));
            let mut own = self.marks.iter().filter(|m| m.pid == pid).map(|m| m.ns);
            let (began_ns, next_ns) = (own.next(), own.next().unwrap_or(u64::MAX));
            // The first match needs a step sent after the watch was in (its mark cannot be
            // missing, so the first after `schedule()` is its own or an older batch's, which
            // a later step drops as stale), and the mark before its output came in.
            let thread = self.marked[i];
            let began_ns =
                began_ns.filter(|&ns| thread.aligned || (thread.since_ns < after && ns < until));
            match began_ns {
                Some(began) => {
                    self.marks_matched += 1;
                    self.marked[i].aligned = true;
                    self.marked[i].matched_any = true;
                    self.marks.retain(|m| !(m.pid == pid && m.ns == began));
                }
                None if self.marked[i].aligned => self.marked[i].owed += 1,
                // No batch of it marked yet (or its batches run on another thread): by time.
                None => continue,
            }
            let output_from_ns = match began_ns {
                Some(began) => self
                    .pending
                    .iter()
                    .filter(|c| c.pid == pid && c.tid == tid)
                    .map(|c| c.end_ns)
                    .filter(|&end| began <= end && end < next_ns)
                    .max()
                    .unwrap_or(began),
                None => after,
            };
            let output_until_ns = self
                .pending
                .iter()
                .filter(|c| c.pid == pid && c.tid != tid && c.class == Class::Sync)
                .filter(|c| c.start_ns > output_from_ns && c.end_ns <= until)
                .min_by_key(|c| c.start_ns)
                .map_or(until, |c| c.end_ns);
            batches.push(MarkedBatch {
                pid,
                tid,
                began_ns,
                next_ns,
                output_from_ns,
                output_until_ns,
            });
        }
        batches
    }

    /// The calls of one step. Steps must come in the order they complete.
    pub fn fold(&mut self, window: Window) -> StepCalls {
        let (owned, launch, wait) = self.stretches(&window);
        let marked = self.marked_batches(&window);
        let horizon = window.next_start_bound();
        let place = |c: &Call| match marked.iter().find(|m| m.pid == c.pid) {
            Some(batch) => batch.place(c),
            None if owned.iter().any(|&(a, b)| a <= c.end_ns && c.end_ns <= b) => Place::Step,
            None if c.end_ns < horizon => Place::Outside,
            None => Place::Later,
        };
        let mut step = StepCalls {
            launch_ns: launch.1.saturating_sub(launch.0),
            ..Default::default()
        };
        let (mut launch_blocked, mut wait_blocked) = (Vec::new(), Vec::new());
        // Per process: its share, and its blocked intervals in the launch and wait stretches.
        let mut processes: Vec<(ProcessCalls, Vec<Span>)> = Vec::new();
        let clip = |c: &Call, (a, b): Span| (c.start_ns.max(a), c.end_ns.min(b));
        let mut kept = Vec::with_capacity(self.pending.len());
        for call in self.pending.drain(..) {
            let place = place(&call);
            if let Place::Step = place {
                step.totals.add(&call);
                let (share, blocked) = share_of(&mut processes, call.pid);
                share.totals.add(&call);
                if call.class.timed() {
                    launch_blocked.push(clip(&call, launch));
                    blocked.push(clip(&call, launch));
                    if let Some(wait) = wait {
                        wait_blocked.push(clip(&call, wait));
                        blocked.push(clip(&call, wait));
                    }
                    if share
                        .last_wait
                        .is_none_or(|(start, _)| call.start_ns >= start)
                    {
                        share.last_wait = Some((call.start_ns, call.end_ns));
                    }
                }
            } else if let Place::Outside = place {
                self.outside.add(&call);
            } else {
                kept.push(call);
            }
        }
        self.pending = kept;
        step.launch_blocked_ns = union_length(&mut launch_blocked);
        step.wait_blocked_ns = union_length(&mut wait_blocked);
        step.processes = processes
            .into_iter()
            .map(|(share, mut blocked)| ProcessCalls {
                // One union over both stretches: a call in both counts once.
                blocked_ns: union_length(&mut blocked),
                ..share
            })
            .collect();
        step.processes.sort_unstable_by_key(|p| p.pid);
        self.in_steps.add_all(&step.totals);
        self.folded_until = self.folded_until.max(horizon);
        let folded_until = self.folded_until;
        self.wait_starts.retain(|(end, _)| *end >= folded_until);
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

/// The share of the step's calls of process `pid`, with its blocked intervals (added on
/// first sight).
fn share_of(
    processes: &mut Vec<(ProcessCalls, Vec<Span>)>,
    pid: u32,
) -> &mut (ProcessCalls, Vec<Span>) {
    let i = match processes.iter().position(|(p, _)| p.pid == pid) {
        Some(i) => i,
        None => {
            let share = ProcessCalls {
                pid,
                ..Default::default()
            };
            processes.push((share, Vec::new()));
            processes.len() - 1
        }
    };
    &mut processes[i]
}

/// Total length covered by a set of intervals.
fn union_length(intervals: &mut [(u64, u64)]) -> u64 {
    intervals.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for &(start, end) in intervals.iter().filter(|(start, end)| start < end) {
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
            pid: 1,
            tid: 1,
            start_ns: at,
            end_ns: at,
            class: Class::Launch,
        }
    }

    fn timed(class: Class, start_ns: u64, end_ns: u64) -> Call {
        Call {
            pid: 1,
            tid: 1,
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
            batch: None,
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
        let totals = CallTotals {
            launches: 2,
            syncs: 1,
            sync_ns: 50,
            d2h_copies: 1,
            d2h_ns: 10,
            ..Default::default()
        };
        assert_eq!(
            first,
            StepCalls {
                totals,
                launch_ns: 90,
                launch_blocked_ns: 60,
                wait_blocked_ns: 0,
                processes: vec![ProcessCalls {
                    pid: 1,
                    totals,
                    blocked_ns: 60,
                    last_wait: Some((180, 190)),
                }],
            }
        );
        let second = folder.fold(window(300, 305, 320, 340));
        // The sync ends in the update phase: counted in the step, blocked only until 320.
        assert_eq!(second.totals.sync_ns, 20);
        assert_eq!(second.launch_blocked_ns, 10);
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
    fn a_batch_gets_its_own_launch_and_its_own_wait() {
        // Call 1 (100-190): schedules A (to 110), launches it (8 kernels), waits for Z (the
        // sync at 150-180), updates Z. Call 2 (200-300): schedules B, launches it (1 graph),
        // waits for A (sync 250-280), updates A.
        let mut folder = Folder::default();
        let mut calls: Vec<Call> = (0..8).map(|i| launch(120 + i)).collect();
        calls.extend([
            timed(Class::Sync, 150, 180),
            launch(215),
            Call {
                pid: 1,
                tid: 1,
                start_ns: 220,
                end_ns: 220,
                class: Class::GraphLaunch,
            },
            timed(Class::Sync, 250, 280),
        ]);
        folder.push(calls);
        let z = folder.fold(Window {
            batch: Some(BatchSpans {
                launch_until_ns: 110,
                launch_shared: false,
                wait_from_ns: 110,
                wait_shared: true,
                update_call_ns: 100,
            }),
            ..window(0, 10, 185, 190)
        });
        assert_eq!(
            (z.totals.launches, z.totals.syncs, z.wait_blocked_ns),
            (0, 1, 30),
            "Z: the wait in call 1, not A's launches before it"
        );
        let a = folder.fold(Window {
            batch: Some(BatchSpans {
                launch_until_ns: 185,
                launch_shared: true,
                wait_from_ns: 210,
                wait_shared: true,
                update_call_ns: 200,
            }),
            ..window(100, 110, 285, 300)
        });
        assert_eq!(
            (a.totals.launches, a.totals.graph_launches, a.totals.syncs),
            (8, 0, 1),
            "A: its 8 kernels in call 1 and its wait in call 2, not B's graph"
        );
        assert_eq!(
            (a.launch_ns, a.launch_blocked_ns, a.wait_blocked_ns),
            (40, 0, 30)
        );
        let b = folder.fold(Window {
            batch: Some(BatchSpans {
                launch_until_ns: 285,
                launch_shared: true,
                wait_from_ns: 300,
                wait_shared: false,
                update_call_ns: 300,
            }),
            ..window(200, 210, 390, 400)
        });
        assert_eq!((b.totals.launches, b.totals.graph_launches), (1, 1));
        assert_eq!(
            b.launch_ns, 40,
            "B's launch ends where the wait for A starts"
        );
        folder.finish();
        assert_eq!(folder.outside, CallTotals::default());
    }

    #[test]
    fn a_marked_worker_gives_each_batch_its_own_launches_and_output_wait() {
        // The engine (no calls of its own) schedules and sends A, B, C, D, each call waiting
        // for the batch before. Worker 9 begins each batch on thread 9 as soon as it is
        // sent, launching it while its thread 10 still waits for the one before; X was
        // begun before the trace's first batch.
        let mut folder = Folder::default();
        folder.mark_batches(9, 9, 0);
        let worker = |tid, class, start_ns, end_ns| Call {
            pid: 9,
            tid,
            start_ns,
            end_ns,
            class,
        };
        let main = |at| worker(9, Class::Launch, at, at);
        let output = |start, end| worker(10, Class::Sync, start, end);
        // X, A, B, C, D.
        for ns in [2, 12, 72, 172, 272] {
            folder.push_mark(BatchMark { pid: 9, tid: 9, ns });
        }
        folder.push([
            main(3),
            main(4),
            output(5, 45),
            main(13),
            main(14),
            main(15),
            output(46, 140),
            worker(9, Class::GraphLaunch, 73, 73),
            output(141, 240),
            main(173),
            main(174),
            output(241, 340),
            main(273),
            output(341, 430),
        ]);
        let batch = |start, schedule_done, older_out, next_schedule_done, out| Window {
            batch: Some(BatchSpans {
                launch_until_ns: older_out,
                launch_shared: true,
                wait_from_ns: next_schedule_done,
                wait_shared: true,
                update_call_ns: start + 60,
            }),
            ..window(start, schedule_done, out, out + 10)
        };
        let a = folder.fold(batch(0, 10, 50, 70, 150));
        assert_eq!(
            (a.totals.launches, a.totals.graph_launches, a.totals.syncs),
            (3, 0, 1),
            "A: its three launches and its own output's sync, not X's"
        );
        assert_eq!(a.totals.sync_ns, 94);
        assert_eq!(a.launch_ns, 2, "A's launch ends where the worker began it");
        assert_eq!(a.wait_blocked_ns, 140 - 72);
        // The engine takes B's output late, at 345: C's sync has ended by then.
        let b = folder.fold(batch(60, 70, 150, 170, 345));
        assert_eq!(
            (b.totals.launches, b.totals.graph_launches, b.totals.syncs),
            (0, 1, 1),
            "B: its graph and its sync, not C's launches and sync before B's output"
        );
        let c = folder.fold(batch(160, 170, 345, 270, 350));
        assert_eq!((c.totals.launches, c.totals.syncs), (2, 1));
        assert_eq!(c.processes[0].last_wait, Some((241, 340)));
        folder.finish();
        assert_eq!(
            (folder.marks_matched, folder.marks_unmatched),
            (3, 1),
            "X's mark fits no batch; D's is left"
        );
        assert_eq!(
            (folder.outside.launches, folder.outside.syncs),
            (3, 2),
            "X's and D's calls"
        );
    }

    /// A folder marking the batches of rank 5 (no output thread) on its thread 5, which
    /// began its first batch at 12 and launched it at 13, folded: its rows' launches.
    fn rank_5() -> Folder {
        let mut folder = Folder::default();
        folder.mark_batches(5, 5, 0);
        folder.push_mark(rank_5_mark(12));
        folder.push([rank_5_launch(13)]);
        assert_eq!(folder.fold(window(0, 10, 100, 110)).totals.launches, 1);
        folder
    }

    fn rank_5_mark(ns: u64) -> BatchMark {
        BatchMark { pid: 5, tid: 5, ns }
    }

    fn rank_5_launch(at: u64) -> Call {
        Call {
            pid: 5,
            tid: 5,
            ..launch(at)
        }
    }

    #[test]
    fn a_mark_that_comes_after_its_row_is_skipped() {
        // Rank 5 begins the second batch only after its row was written, and after the third
        // was scheduled.
        let mut folder = rank_5();
        assert_eq!(folder.fold(window(100, 110, 200, 210)).totals.launches, 0);
        for ns in [320, 420] {
            folder.push_mark(rank_5_mark(ns));
        }
        folder.push([rank_5_launch(321), rank_5_launch(421), rank_5_launch(422)]);
        let third = folder.fold(window(250, 310, 500, 510));
        assert_eq!(
            third.totals.launches, 2,
            "the launches after its own mark, 420"
        );
        folder.finish();
        assert_eq!((folder.outside.launches, folder.late), (1, 0));
        assert_eq!((folder.marks_matched, folder.marks_unmatched), (2, 1));
    }

    #[test]
    fn a_worker_that_never_marks_a_batch_is_folded_by_time() {
        // Its batches run on another thread than the watched one.
        let mut folder = Folder::default();
        folder.mark_batches(9, 9, 0);
        folder.push([Call {
            pid: 9,
            tid: 12,
            ..launch(50)
        }]);
        assert_eq!(folder.fold(window(0, 10, 100, 110)).totals.launches, 1);
        assert_eq!(folder.never_marked().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn marks_are_matched_afresh_after_the_ring_lost_calls() {
        let mut folder = rank_5();
        // The full ring lost the second batch's mark; the third's came.
        folder.realign(150);
        folder.push_mark(rank_5_mark(212));
        folder.push([rank_5_launch(213)]);
        let second = folder.fold(window(100, 110, 200, 210));
        assert_eq!(second.totals.launches, 0, "not the third batch's launch");
        assert_eq!(folder.fold(window(205, 211, 300, 310)).totals.launches, 1);
        assert_eq!(folder.never_marked().count(), 0);
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
        assert_eq!(step.launch_blocked_ns, 60 + 5);
    }

    #[test]
    fn each_process_gets_its_share_and_its_last_wait() {
        let mut folder = Folder::default();
        let of = |pid, call: Call| Call {
            pid,
            tid: pid,
            ..call
        };
        // Rank 7 launches late and waits least; rank 5 waits for it. The engine (3) makes a
        // launch of its own; rank 5's copy before its sync is not its last wait.
        folder.push([
            of(5, launch(20)),
            of(5, timed(Class::CopyDtoH, 22, 25)),
            of(5, timed(Class::Sync, 30, 90)),
            of(7, launch(60)),
            of(7, launch(61)),
            of(7, timed(Class::Sync, 70, 92)),
            of(3, launch(15)),
            of(7, launch(150)), // after the step
        ]);
        let step = folder.fold(window(0, 10, 100, 110));
        let share = |pid| *step.processes.iter().find(|p| p.pid == pid).unwrap();
        assert_eq!(
            step.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [3, 5, 7]
        );
        assert_eq!(share(3).totals.launches, 1);
        assert_eq!(share(3).last_wait, None);
        assert_eq!(
            (
                share(5).totals.launches,
                share(5).totals.syncs,
                share(5).totals.d2h_copies
            ),
            (1, 1, 1)
        );
        assert_eq!(share(5).blocked_ns, 3 + 60);
        assert_eq!(share(5).last_wait, Some((30, 90)));
        assert_eq!((share(7).totals.launches, share(7).blocked_ns), (2, 22));
        assert_eq!(share(7).last_wait, Some((70, 92)));
        let launches: u64 = step.processes.iter().map(|p| p.totals.launches).sum();
        assert_eq!(launches, step.totals.launches);
        // Both ranks' waits overlap: the step's blocked time counts them once.
        assert_eq!(step.launch_blocked_ns, 3 + 62);
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
