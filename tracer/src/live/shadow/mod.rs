//! Shadow copies: the per-request half of a scheduler snapshot, read by the loader while the
//! engine thread executes the batch, instead of by the watch program inside the trap.
//!
//! From the hit that ends `schedule()` to the next mark the engine thread does not touch the
//! scheduler (it launches the batch and waits for the GPU; one thread mutates the state), so
//! a copy made in that window is the state `schedule()` left. The watch program copies only
//! which requests each queue holds and the step's frame (a fixed handful of reads, whatever
//! the queues' lengths); this module reads each request's planned fields and the batch's
//! scheduled tokens, the same words the program would have copied, so everything downstream
//! reads a shadow snapshot as a synchronous one. The copy counts only if it ended before the
//! engine thread's next mark ([`Shadow::settle`]); otherwise its snapshot is dropped, as one
//! the ring buffer lost would be.
//!
//! `--snapshots auto` starts with synchronous copies, moves to shadow ones when the steps
//! leave a window worth reading in (≥ [`AUTO_MIN_STILL_NS`] from `schedule()`'s return to
//! the next mark in the median step, half that in the 10th percentile), and back for good
//! when too many shadow copies end late.
//!
//! Imports inspect's memory and CPython readers, decode's hits and snapshot's
//! [`LiveRequests`] (and session's clock); the session drives it.

use std::collections::{HashSet, VecDeque};

use tracer_common::capture::{
    self as wire, snap, Item, Plan, RequestFacts, ScheduledEntry, MAX_SCHEDULED,
};

mod fields;

use crate::{
    clock::monotonic_ns,
    inspect::{
        cpython::{AttrLocation, PyReader},
        memory::{Batch, ProcessMemory, ReadId},
        vllm::{RequestField, StateNames},
    },
    live::{
        decode::{Hit, RawSnapshot},
        snapshot::LiveRequests,
    },
    schema::run_info::ShadowCounts,
};

/// Where the first snapshot of a step is copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Synchronous copies while the batch's steps are short; shadow copies once they leave
    /// time to read in; back to synchronous if shadow copies keep ending late.
    Auto,
    /// In the trap: the engine thread waits for every request's fields (exact always).
    Sync,
    /// Off the engine thread, while the batch executes (a late copy loses its step's
    /// batch columns, counted in run.json).
    Shadow,
}

/// Median window from which `auto` reads in the shadow (and half of it in the 10th
/// percentile): a GPU step's wait, not a CPU stand-in's sub-millisecond one.
pub const AUTO_MIN_STILL_NS: u64 = 2_000_000;
/// Steps `auto` looks at before choosing, and shadow copies it judges at a time.
const AUTO_WINDOW: usize = 32;
/// Late copies in a window of [`AUTO_WINDOW`] after which `auto` goes back to synchronous.
const AUTO_MAX_LATE: usize = 4;

/// How long a copy waits for the step's `scheduler_output` local to be stored after its hit,
/// yielding its CPU between looks (which hands it straight to an engine thread waiting on
/// the same one). The tracer, woken by the hit at a higher priority, reads first: on the dev
/// VM the first look found the local unset in 500 of 500 fixture copies, and it was stored
/// p50 8 us, p99 148 us after the hit (under two busy loops: p50 5, p99 133 us, 1 of 500
/// later than this). A copy that finds it unset after this goes on without the step's
/// scheduled tokens, which the correlator tells from the requests' computed counts against
/// the last copy's; waiting on would risk ending the copy after the next mark, which loses
/// the whole step's columns.
const STORE_SPIN_NS: u64 = 200_000;
/// The trace's first copy has no earlier counts to tell tokens from: it waits for the store
/// this long, sleeping between looks so that the engine thread gets a CPU to store it (on
/// the dev VM at load average ~5, up to 16 ms after the hit). The store comes before the
/// engine thread's next mark; the bound is for one that never comes back.
const FIRST_STORE_WAIT_NS: u64 = 50_000_000;
/// Pause between the first copy's looks after [`STORE_SPIN_NS`].
const STORE_POLL: std::time::Duration = std::time::Duration::from_micros(20);

/// The trace's first copy found the step's `scheduler_output` local still unset after
/// [`FIRST_STORE_WAIT_NS`]: without it and without earlier counts the batch is unknown, and
/// the copy counts as failed.
struct NotStored;

/// What a copy does after finding the `scheduler_output` local unset.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    AfterYield,
    AfterSleep,
    /// Without the step's scheduled tokens (the computed counts tell them).
    GoOnWithout,
    GiveUp,
}

/// After `waited_ns` since the hit; `first`: no copy that counted had scheduled tokens yet.
fn next_look(waited_ns: u64, first: bool) -> Look {
    match (waited_ns, first) {
        (w, _) if w < STORE_SPIN_NS => Look::AfterYield,
        (_, false) => Look::GoOnWithout,
        (w, true) if w < FIRST_STORE_WAIT_NS => Look::AfterSleep,
        _ => Look::GiveUp,
    }
}

/// Reads shadow snapshots' fields, and judges them against the engine thread's next mark.
pub struct Shadow<'r, M: ProcessMemory> {
    reader: &'r PyReader<'r, M>,
    names: &'static StateNames,
    output_class: Option<u64>,
    output_local: u64,
    per_batch: bool,
    scheduled_at: Option<AttrLocation>,
    /// Requests (object, id) the last copy listed: their facts are copied already.
    listed: HashSet<(u64, u64)>,
    /// No copy that counted has had the step's scheduled tokens yet (see
    /// [`FIRST_STORE_WAIT_NS`]).
    first_pending: bool,
    /// A shadow hit waiting for the next hit of its thread, and when its copy ended.
    held: Option<(Hit, u64)>,
    pub mode: Mode,
    /// `auto`: currently shadow; recent windows (sync) or copy outcomes (shadow).
    shadowing: bool,
    recent_still: VecDeque<u64>,
    recent_late: VecDeque<bool>,
    pub counts: ShadowCounts,
}

impl<'r, M: ProcessMemory> Shadow<'r, M> {
    pub fn new(
        reader: &'r PyReader<'r, M>,
        names: &'static StateNames,
        snapshots: &crate::live::snapshot::SnapshotPlan,
        mode: Mode,
    ) -> Self {
        Self {
            reader,
            names,
            output_class: snapshots.output_class(),
            output_local: snapshots.plan.output_local,
            per_batch: snapshots.per_batch(),
            scheduled_at: None,
            listed: HashSet::new(),
            // `auto` copies in the trap first: its shadow copies have earlier counts.
            first_pending: mode == Mode::Shadow,
            held: None,
            mode,
            shadowing: mode == Mode::Shadow,
            recent_still: VecDeque::new(),
            recent_late: VecDeque::new(),
            counts: ShadowCounts::default(),
        }
    }

    /// Takes the next decoded hit; gives back the hits that may go on to the correlator, in
    /// order. A shadow hit's fields are read now, and the hit is held until the next hit
    /// shows whether the engine thread was still executing when the reads ended.
    pub fn pass(
        &mut self,
        mut hit: Hit,
        plan: &Plan,
        source: Option<&mut LiveRequests<'_, M>>,
    ) -> Vec<Hit> {
        let mut out = Vec::with_capacity(2);
        if let Some(held) = self.settle(hit.ktime_ns) {
            out.push(held);
        }
        let shadow = hit
            .snapshot
            .as_ref()
            .is_some_and(|s| s.header.flags & snap::SHADOW != 0);
        if !shadow {
            out.push(hit);
            return out;
        }
        self.counts.copies += 1;
        let raw = hit.snapshot.as_mut().expect("a shadow hit has a snapshot");
        let Some(facts) = self.fill(raw, plan) else {
            self.counts.failed += 1;
            drop_copy(raw);
            out.push(hit);
            return out;
        };
        let done_ns = monotonic_ns();
        // After the window (facts are immutable), before the request's first output takes
        // vLLM's queueing stamp.
        if let Some(source) = source {
            for facts in facts {
                source.stamp_queued(facts.object, facts.id);
                source.know(facts);
            }
        }
        self.held = Some((hit, done_ns));
        out
    }

    /// The held shadow hit, judged against `next_ns` (the next hit's stamp; `u64::MAX` at the
    /// end of the trace, when no later mark came).
    pub fn settle(&mut self, next_ns: u64) -> Option<Hit> {
        let (mut hit, done_ns) = self.held.take()?;
        let late = done_ns >= next_ns;
        let scheduled = |s: &RawSnapshot| s.header.flags & snap::SCHEDULED != 0;
        if !late && hit.snapshot.as_ref().is_some_and(scheduled) {
            self.first_pending = false;
        }
        if late {
            self.counts.late += 1;
            if let Some(raw) = &mut hit.snapshot {
                drop_copy(raw);
            }
        }
        if self.mode == Mode::Auto {
            self.recent_late.push_back(late);
            if self.recent_late.len() > AUTO_WINDOW {
                self.recent_late.pop_front();
            }
        }
        Some(hit)
    }

    /// `auto`: whether to copy in the shadow from now on, given the step's window (see
    /// [`crate::live::correlate::Step::still_ns`]); `Some` when that changes.
    pub fn choose(&mut self, still_ns: u64) -> Option<bool> {
        if self.mode != Mode::Auto {
            return None;
        }
        if self.shadowing {
            // Judged over a full window only: late copies can bunch at the start (on an H200,
            // up to 12 of a window's first 13, against 0–5 of ~2 000 over the run), and a
            // partial window would send a workload that suits the shadow back.
            let late = self.recent_late.iter().filter(|&&late| late).count();
            if self.recent_late.len() >= AUTO_WINDOW && late >= AUTO_MAX_LATE {
                // For good: a workload whose windows are too short stays so.
                self.mode = Mode::Sync;
                self.shadowing = false;
                self.counts.switches += 1;
                return Some(false);
            }
            return None;
        }
        self.recent_still.push_back(still_ns);
        if self.recent_still.len() > AUTO_WINDOW {
            self.recent_still.pop_front();
        }
        let mut window: Vec<u64> = self.recent_still.iter().copied().collect();
        if window.len() < AUTO_WINDOW {
            return None;
        }
        window.sort_unstable();
        // Most windows long, and few short ones (a batch whose GPU work ended before its
        // launch did leaves next to none).
        if window[window.len() / 2] < AUTO_MIN_STILL_NS
            || window[window.len() / 10] < AUTO_MIN_STILL_NS / 2
        {
            return None;
        }
        self.shadowing = true;
        self.counts.switches += 1;
        self.recent_late.clear();
        Some(true)
    }

    /// Reads the fields of every request `raw` lists and the step's scheduled tokens, as the
    /// watch program would have copied them, and the facts of requests listed for the first
    /// time; `None` if the step's state was unreadable.
    fn fill(&mut self, raw: &mut RawSnapshot, plan: &Plan) -> Option<Vec<RequestFacts>> {
        let mut items: Vec<&mut Item> = raw
            .running
            .iter_mut()
            .chain(raw.waiting.iter_mut())
            .collect();
        let listed = &self.listed;
        let facts = fields::fill(self.reader.mem, plan, &mut items, |object, id| {
            listed.contains(&(object, id))
        });
        // Per batch the step's `scheduler_output` local is soon the older batch's (the call
        // pops it into the same name): the copy before the batch's update has its tokens.
        if !self.per_batch {
            match self.scheduled(raw.header.frame) {
                Ok(Some(entries)) => {
                    raw.header.flags |= snap::SCHEDULED;
                    raw.header.n_scheduled = entries.len() as u32;
                    raw.scheduled = entries;
                }
                Ok(None) => {}
                Err(NotStored) => return None,
            }
        }
        self.listed = raw
            .running
            .iter()
            .chain(&raw.waiting)
            .filter(|item| item.missing & (1 << RequestField::Id as u64) == 0)
            .map(|item| (item.object, item.fields[RequestField::Id as usize][0]))
            .collect();
        (raw.header.flags & snap::READ_ERROR == 0).then_some(facts)
    }

    /// `scheduler_output.num_scheduled_tokens` from the step's frame, stored right after the
    /// hit (a frame whose local is not what the plan expects gives nothing).
    fn scheduled(&mut self, frame: u64) -> Result<Option<Vec<ScheduledEntry>>, NotStored> {
        if frame == 0 || self.output_local == u64::MAX {
            return Ok(None);
        }
        let slot = frame
            .wrapping_add(self.reader.layout.frame_localsplus)
            .wrapping_add(8 * self.output_local);
        // The hit is on the instruction that stores the local (see [`STORE_SPIN_NS`]).
        let start = monotonic_ns();
        let output = loop {
            let Ok(word) = self.reader.mem.read_u64(slot) else {
                return Ok(None);
            };
            let output = word & !self.reader.layout.stackref_tag_bits;
            if output != 0 {
                break output;
            }
            match next_look(monotonic_ns() - start, self.first_pending) {
                Look::AfterYield => std::thread::yield_now(),
                Look::AfterSleep => std::thread::sleep(STORE_POLL),
                Look::GoOnWithout => return Ok(None),
                Look::GiveUp => return Err(NotStored),
            }
        };
        Ok(self.scheduled_of(output))
    }

    /// The scheduled-token counts of a `scheduler_output` object.
    fn scheduled_of(&mut self, output: u64) -> Option<Vec<ScheduledEntry>> {
        let reader = self.reader;
        if Some(reader.type_of(output).ok()?) != self.output_class {
            return None;
        }
        let location = match &self.scheduled_at {
            Some(location) => *location,
            None => {
                let location = reader
                    .attr_location(output, self.names.output_scheduled)
                    .ok()??;
                *self.scheduled_at.insert(location)
            }
        };
        let dict = reader.read_location(output, &location).ok()??;
        let items = reader.dict_items(dict).ok()?;
        // Every count's 16 bytes after its header, in one batch.
        let mut batch = Batch::default();
        let reads: Vec<(u64, u64, ReadId)> = items
            .into_iter()
            .take(MAX_SCHEDULED)
            .map(|(key, value)| (key, value, batch.push(value + reader.layout.var_size, 16)))
            .collect();
        reader.mem.read_batch(&mut batch);
        Some(
            reads
                .into_iter()
                .filter_map(|(key, object, read)| {
                    Some(ScheduledEntry {
                        key,
                        object,
                        value: [batch.word(read, 0)?, batch.word(read, 1)?],
                    })
                })
                .collect(),
        )
    }
}

/// Nice value the tracer takes while it may copy in the shadow: a copy must end within the
/// batch's execute time, and on a busy machine a tracer at the engine's priority waits its
/// turn for milliseconds (fixture, dev VM at load 7: 96 of 602 copies late at nice 0, 11
/// of 543 at −10). The tracer's own CPU time is small: this takes nothing from the engine
/// while it waits for its GPU.
const HURRY_NICE: libc::c_int = -10;

/// Raises the tracer's priority for shadow copies (best effort: without CAP_SYS_NICE the
/// copies only end late more often, which run.json counts).
pub fn hurry() {
    // SAFETY: plain syscall on this process.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HURRY_NICE) };
}

/// Empties a shadow copy that does not count, keeping how long its kernel half held the
/// engine thread.
fn drop_copy(raw: &mut RawSnapshot) {
    *raw = RawSnapshot {
        header: wire::SnapshotHeader {
            flags: snap::SHADOW | snap::DROPPED,
            copy_ns: raw.header.copy_ns,
            ..Default::default()
        },
        ..Default::default()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_waits_briefly_for_the_store_and_the_first_one_longer() {
        for first in [false, true] {
            assert_eq!(next_look(0, first), Look::AfterYield);
            assert_eq!(next_look(STORE_SPIN_NS - 1, first), Look::AfterYield);
        }
        assert_eq!(next_look(STORE_SPIN_NS, false), Look::GoOnWithout);
        assert_eq!(next_look(FIRST_STORE_WAIT_NS * 2, false), Look::GoOnWithout);
        assert_eq!(next_look(STORE_SPIN_NS, true), Look::AfterSleep);
        assert_eq!(next_look(FIRST_STORE_WAIT_NS - 1, true), Look::AfterSleep);
        assert_eq!(next_look(FIRST_STORE_WAIT_NS, true), Look::GiveUp);
    }
}
