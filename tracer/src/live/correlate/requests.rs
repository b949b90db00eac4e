//! Request lifecycles from successive scheduler snapshots.
//!
//! A request is identified by its object address and its request-id `str` address (both
//! change when a freed request's memory is reused). A snapshot may list a request without
//! its id (not planned yet at the first snapshot, or torn): it is tracked by its object
//! alone, named `request@0x<object>` until its id can be read, and one request still, not
//! two, when a later snapshot shows the id. At each step: requests seen for the
//! first time arrived; tokens in the step's `num_scheduled_tokens` mean it ran (a prefill
//! chunk while its computed tokens are below its prompt); a `PREEMPTED` status in the
//! waiting queue after `schedule()` means it was preempted; a request gone from the queues
//! after `update_from_output()` finished, one gone between steps was aborted. Times are the
//! marks at which the change became visible: arrival at the step's start, scheduling and
//! preemption when `schedule()` returned, tokens and finishing when vLLM stamped the update's
//! outputs (the update's return where that stamp was not read).

use std::collections::{HashMap, HashSet};

use super::{reasons, Step};
use crate::{
    inspect::vllm::REQUEST_STATUSES as STATUSES,
    live::snapshot::{
        facts::{RequestInfo, RequestSource},
        Budgets, RequestState, SchedulerState,
    },
    schema::{
        rows::{EventKind, EventRow, Queue, QueueRow, RequestRow, StepRow},
        run_info::RequestCounts,
    },
};

/// Times a request listed with an id its facts could not be read for is tried again.
const ID_TRIES: u8 = 16;

type Key = (u64, u64);

fn key(r: &RequestState) -> Key {
    (r.object, r.id)
}

struct Track {
    info: RequestInfo,
    /// Whether `info` came from the target; else its id is `request@0x<object>`, and it is
    /// read again (up to [`ID_TRIES`] times) when the request is listed with an id.
    id_known: bool,
    id_tries: u8,
    row: RequestRow,
    waiting_since: Option<u64>,
    preempted: bool,
    /// Already in the engine when the trace started: when it was first scheduled is unknown.
    in_flight_at_start: bool,
    /// Computed tokens and output tokens when last seen.
    computed: i32,
    output: u32,
    /// Tokens scheduled since its first scheduling, while its prefix-cache hit is still to be
    /// told from a computed count (first scheduled before the plan named that attribute).
    cached_pending: Option<u32>,
}

/// What a step's `schedule()` half hands to its update half: the requests whose scheduled
/// tokens complete their known tokens, so the update gives each a new token.
pub struct Scheduled {
    produced: HashSet<Key>,
}

/// What one step adds to the outputs.
#[derive(Default)]
pub struct StepOutput {
    pub events: Vec<EventRow>,
    pub queues: Vec<QueueRow>,
    pub finished: Vec<RequestRow>,
}

pub struct Requests {
    pid: u32,
    trace_start_ns: u64,
    tracks: HashMap<Key, Track>,
    /// Keys seen for a request tracked under another (its object first listed without an
    /// id) → the key it is tracked under.
    aliases: HashMap<Key, Key>,
    /// The key each object was last tracked under.
    by_object: HashMap<u64, Key>,
    /// A snapshot has been folded in (or the queues were empty at the start): requests
    /// listed from now on arrived during the trace.
    started: bool,
    /// The last update folded in: its step and when vLLM stamped its outputs.
    last_update: Option<(u64, u64)>,
    /// The queues of the last `schedule()` folded in, less what updates since ended: what
    /// an update can finish.
    last_running: Vec<Key>,
    last_waiting: Vec<Key>,
    /// Requests of the last update that produced a token and still run: their count is
    /// known only from the next `schedule()`'s snapshot.
    produced_last: HashSet<Key>,
    /// Requests that were decoding before the last update's unseen `schedule()` and still
    /// run: taken to have produced a token there (while the token budget lasts, vLLM
    /// schedules every running request), which the next snapshot's count replaces.
    guessed_last: HashSet<Key>,
    /// The last `schedule()` folded in, if no snapshot showed it (its copy was dropped): its
    /// step and return. A request first seen scheduled now may have been first scheduled by it.
    unseen_schedule: Option<(u64, u64)>,
    /// The engine may hit its prefix cache (unless its config says not): a request's
    /// computed count may then hold a hit when it is scheduled (again).
    prefix_caching: bool,
    pub counts: RequestCounts,
}

impl Requests {
    /// `idle_at_start`: the scheduler's queues were empty when the trace started, so every
    /// request it lists arrived since (its first snapshot need not tell, from its status).
    pub fn new(pid: u32, trace_start_ns: u64, idle_at_start: bool) -> Self {
        Self {
            pid,
            trace_start_ns,
            tracks: HashMap::new(),
            aliases: HashMap::new(),
            by_object: HashMap::new(),
            started: idle_at_start,
            last_update: None,
            last_running: Vec::new(),
            last_waiting: Vec::new(),
            produced_last: HashSet::new(),
            guessed_last: HashSet::new(),
            unseen_schedule: None,
            prefix_caching: true,
            counts: RequestCounts::default(),
        }
    }

    /// Whether the engine may hit its prefix cache (its config's `enable_prefix_caching`).
    pub fn with_prefix_caching(self, prefix_caching: bool) -> Self {
        Self {
            prefix_caching,
            ..self
        }
    }

    fn event(&self, out: &mut StepOutput, step: u64, t_ns: u64, key: Key, event: EventKind) {
        self.event_with(out, step, t_ns, key, event, None, String::new());
    }

    #[allow(clippy::too_many_arguments)]
    fn event_with(
        &self,
        out: &mut StepOutput,
        step: u64,
        t_ns: u64,
        key: Key,
        event: EventKind,
        tokens: Option<u32>,
        detail: String,
    ) {
        out.events.push(EventRow {
            step,
            pid: self.pid,
            t_ns,
            t_rel_ns: (t_ns as i64).saturating_sub(self.trace_start_ns as i64),
            request_id: self.tracks[&key].info.id.clone(),
            event,
            tokens,
            detail,
        });
    }

    /// The key request `r` is tracked under: its own, or that of the track of its object
    /// when one of the two sightings lacks the id (one request, listed before its id could
    /// be read, or in a torn copy since). A track whose id is still unknown is given it
    /// here, when `r` shows one that reads.
    fn resolve(&mut self, source: &mut dyn RequestSource, r: &RequestState) -> Key {
        let seen = key(r);
        let k = if self.tracks.contains_key(&seen) {
            seen
        } else if let Some(&k) = self
            .aliases
            .get(&seen)
            .filter(|k| self.tracks.contains_key(k))
        {
            k
        } else {
            match self.by_object.get(&r.object) {
                Some(&k) if self.tracks.contains_key(&k) && (k.1 == 0 || r.id == 0) => {
                    if r.id != 0 {
                        self.aliases.insert(seen, k);
                    }
                    k
                }
                _ => seen,
            }
        };
        if r.id != 0 {
            if let Some(track) = self
                .tracks
                .get_mut(&k)
                .filter(|t| !t.id_known && t.id_tries < ID_TRIES)
            {
                track.id_tries += 1;
                if let Some(info) = source.info(r.object, r.id) {
                    track.row.request_id = info.id.clone();
                    track.row.arrival_time_s = info.arrival_time_s;
                    track.row.prompt_tokens = info.prompt_tokens;
                    track.info = info;
                    track.id_known = true;
                }
            }
        }
        k
    }

    /// Starts tracking request `r`, under key `k`, first seen in the step starting at `t_ns`.
    #[allow(clippy::too_many_arguments)]
    fn arrive(
        &mut self,
        source: &mut dyn RequestSource,
        k: Key,
        r: &RequestState,
        fresh: bool,
        step: u64,
        t_ns: u64,
        out: &mut StepOutput,
    ) {
        if self.tracks.contains_key(&k) {
            return;
        }
        // Without an id there is nothing to read it by: named after the object until a
        // later snapshot shows the id (see `resolve`).
        let read = (r.id != 0).then(|| source.info(r.object, r.id)).flatten();
        let id_known = read.is_some();
        let info = read.unwrap_or_else(|| RequestInfo {
            id: format!("request@{:#x}", r.object),
            ..RequestInfo::default()
        });
        self.counts.requests_seen += 1;
        let (scheduled_unseen, output) = self.scheduled_unseen(r);
        let (seen_step, seen_ns) = scheduled_unseen.unwrap_or((step, t_ns));
        let arrived_in_trace = self.started || fresh;
        let stamp = info
            .queued_ns
            .filter(|&queued| arrived_in_trace && queued <= seen_ns);
        self.counts.queued_from_step += u64::from(arrived_in_trace && stamp.is_none());
        let row = RequestRow {
            request_id: info.id.clone(),
            pid: self.pid,
            arrival_time_s: info.arrival_time_s,
            // vLLM's own stamp when it was read: it comes from `add_request`, before the
            // step in which the tracer first sees the request.
            queued_ns: stamp.unwrap_or(seen_ns),
            first_scheduled_ns: scheduled_unseen.map(|(_, ns)| ns),
            finish_status: "UNFINISHED".into(),
            prompt_tokens: info.prompt_tokens,
            // Set at first scheduling (−1 before), so known for requests in flight too.
            cached_tokens: r.cached_tokens.and_then(|c| u32::try_from(c).ok()),
            preemptions: 0,
            ..RequestRow::default()
        };
        self.by_object.insert(r.object, k);
        self.tracks.insert(
            k,
            Track {
                info,
                id_known,
                id_tries: u8::from(r.id != 0),
                row,
                waiting_since: scheduled_unseen.is_none().then_some(t_ns),
                // In the first snapshot a preempted request's preemption may be older than
                // the trace: it is not counted.
                preempted: !self.started && r.status.as_deref() == Some(STATUSES.preempted),
                // Running or preempted: scheduled before the trace (the `WAITING*` statuses
                // are those of requests never scheduled), unless `fresh`.
                in_flight_at_start: !self.started
                    && !fresh
                    && !r
                        .status
                        .as_deref()
                        .is_some_and(|s| s.starts_with(STATUSES.never_scheduled_prefix)),
                computed: r.computed_tokens.unwrap_or(0),
                output,
                cached_pending: None,
            },
        );
        self.event(out, seen_step, seen_ns, k, EventKind::Arrived);
        if scheduled_unseen.is_some() {
            self.event(out, seen_step, seen_ns, k, EventKind::Scheduled);
        }
    }

    /// For request `r`, first listed now: the step and `schedule()` return of the unseen step
    /// before, if it was first scheduled there (listed during the trace with tokens out), and
    /// the output count its track starts from (its one token, if one, is that step's update's).
    fn scheduled_unseen(&self, r: &RequestState) -> (Option<(u64, u64)>, u32) {
        let output = r.output_tokens.unwrap_or(0).max(0) as u32;
        let unseen = self.unseen_schedule.filter(|_| self.started && output > 0);
        (
            unseen,
            if unseen.is_some() && output == 1 {
                0
            } else {
                output
            },
        )
    }

    /// Request `k`'s first output came from the update of `step`, ending at `t_ns`.
    fn first_token(&mut self, k: Key, step: u64, t_ns: u64, out: &mut StepOutput) {
        let track = self.tracks.get_mut(&k).expect("tracked");
        track.row.first_token_ns = Some(t_ns);
        track.row.ttft_ns = Some(t_ns.saturating_sub(track.row.queued_ns));
        let output = track.output;
        self.event_with(
            out,
            step,
            t_ns,
            k,
            EventKind::FirstToken,
            Some(output),
            String::new(),
        );
    }

    fn close_wait(track: &mut Track, t_ns: u64) {
        if let Some(since) = track.waiting_since.take() {
            let wait = t_ns.saturating_sub(since);
            track.row.waiting_ns = track.row.waiting_ns.saturating_add(wait);
            track.row.longest_wait_ns = track.row.longest_wait_ns.max(wait);
        }
    }

    /// Ends a request that left the queues: its row, with the end filled in.
    fn end(&mut self, k: Key, step: u64, t_ns: u64, finished: bool, out: &mut StepOutput) {
        let Some(track) = self.tracks.get(&k) else {
            return;
        };
        let output = track.output;
        let status = if !finished {
            STATUSES.finished_aborted
        } else if track.info.max_tokens.is_some_and(|max| output >= max) {
            STATUSES.finished_length_capped
        } else {
            STATUSES.finished_stopped
        };
        let kind = if finished {
            self.counts.finished += 1;
            EventKind::Finished
        } else {
            self.counts.aborted += 1;
            EventKind::Aborted
        };
        self.event_with(out, step, t_ns, k, kind, Some(output), status.into());
        let mut track = self.tracks.remove(&k).expect("checked above");
        self.forget(k);
        Self::close_wait(&mut track, t_ns);
        let row = &mut track.row;
        row.finished_ns = Some(t_ns);
        row.finish_status = status.into();
        row.output_tokens = output;
        row.e2e_ns = Some(t_ns.saturating_sub(row.queued_ns));
        if let Some(first) = row.first_token_ns.filter(|_| output > 1) {
            row.tpot_ns = Some(t_ns.saturating_sub(first) / u64::from(output - 1));
        }
        out.finished.push(track.row);
    }

    /// Drops the lookups that lead to the ended track `k`.
    fn forget(&mut self, k: Key) {
        if self.by_object.get(&k.0) == Some(&k) {
            self.by_object.remove(&k.0);
        }
        if !self.aliases.is_empty() {
            self.aliases.retain(|_, to| *to != k);
        }
    }

    /// Folds in the scheduler as a step's `schedule()` left it, with the step's output
    /// (`s.scheduled`); fills the step row's batch and queue columns. Schedules and updates
    /// are folded in the order they ran: per batch, a batch's schedule comes before the
    /// previous batch's update.
    pub fn schedule(
        &mut self,
        source: &mut dyn RequestSource,
        step: &Step,
        scheduled: Option<&SchedulerState>,
        budgets: &Budgets,
        row: &mut StepRow,
    ) -> (StepOutput, Option<Scheduled>) {
        let mut out = StepOutput::default();
        let (Some(s), Some(running), Some(waiting)) = (
            scheduled,
            scheduled.and_then(|s| s.running.as_ref()),
            scheduled.and_then(|s| s.waiting.as_ref()),
        ) else {
            self.counts.steps_without_snapshot += 1;
            self.unseen_schedule = Some((step.index, step.schedule_done_ns));
            return (out, None);
        };
        // The lengths are the target's: a copy longer than its queue reads as whole.
        let not_copied = |len: u32, copied: usize| u64::from(len).saturating_sub(copied as u64);
        self.counts.queue_items_not_copied +=
            not_copied(s.running_len, running.len()) + not_copied(s.waiting_len, waiting.len());
        // Every listed request's key, running ones first, in queue order.
        let listed: Vec<&RequestState> = running.iter().chain(waiting).collect();
        let keys: Vec<Key> = listed.iter().map(|r| self.resolve(source, r)).collect();
        let (running_keys, waiting_keys) = keys.split_at(running.len());
        // Only a whole copy tells who is gone: past MAX_QUEUE_ITEMS a request is out of view.
        if s.running_len as usize == running.len() && s.waiting_len as usize == waiting.len() {
            self.abort_unlisted(&keys, step, &mut out);
        }
        self.arrive_listed(source, &keys, &listed, s, step, &mut out);
        self.take_outputs(&keys, &listed, &mut out);

        let mut batch = Batch::default();
        let mut produced: HashSet<Key> = HashSet::new();
        for (position, (&k, r)) in running_keys.iter().zip(running).enumerate() {
            if self.fold_running(position, k, r, s, step, &mut batch, &mut out) {
                produced.insert(k);
            }
        }
        let preempted_now = self.preempt(waiting_keys, waiting, step, &mut out);
        self.waiting_rows(
            waiting_keys,
            waiting,
            &reasons::Context {
                budgets,
                running: s.running_len,
                scheduled_tokens: batch.scheduled_tokens,
                kv_free: s.kv_free,
                any_preempted: !preempted_now.is_empty(),
            },
            &preempted_now,
            step,
            &mut out,
        );
        self.started = true;
        self.unseen_schedule = None;
        self.last_running = running_keys.to_vec();
        self.last_waiting = waiting_keys.to_vec();
        // This snapshot shows the outputs of the updates before it.
        self.produced_last.clear();
        self.guessed_last.clear();

        self.counts.steps_tokens_unknown += u64::from(batch.tokens_unknown);
        batch.fill(row);
        row.preempted = Some(preempted_now.len() as u32);
        queue_columns(row, s, budgets);
        (out, Some(Scheduled { produced }))
    }

    /// Ends the tracked requests a whole copy of the queues no longer lists: gone between
    /// the last update and this schedule, so aborted (finishing happens in
    /// update_from_output, which the previous snapshot already saw).
    fn abort_unlisted(&mut self, keys: &[Key], step: &Step, out: &mut StepOutput) {
        let now: HashSet<Key> = keys.iter().copied().collect();
        let gone: Vec<Key> = self
            .tracks
            .keys()
            .filter(|k| !now.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.end(k, step.index, step.start_ns, false, out);
        }
    }

    /// Starts tracking the listed requests seen for the first time.
    fn arrive_listed(
        &mut self,
        source: &mut dyn RequestSource,
        keys: &[Key],
        listed: &[&RequestState],
        s: &SchedulerState,
        step: &Step,
        out: &mut StepOutput,
    ) {
        for (&k, r) in keys.iter().zip(listed) {
            // Running in the first snapshot with no output, and nothing computed before this
            // step but its prefix-cache hit: scheduled for the first time by this very step.
            let fresh = r.output_tokens == Some(0)
                && r.computed_tokens
                    .zip(s.scheduled.as_ref().and_then(|m| m.get(&r.id)))
                    .is_some_and(|(computed, &tokens)| {
                        i64::from(computed) - i64::from(tokens)
                            == i64::from(r.cached_tokens.unwrap_or(0).max(0))
                    });
            self.arrive(source, k, r, fresh, step.index, step.start_ns, out);
        }
    }

    /// Takes in the listed requests' outputs as the last update left them (and a prefix-cache
    /// hit not known before). They survive preemption: the first token is the first output
    /// ever, produced by the previous step's update.
    fn take_outputs(&mut self, keys: &[Key], listed: &[&RequestState], out: &mut StepOutput) {
        for (&k, r) in keys.iter().zip(listed) {
            let output = r.output_tokens.unwrap_or(0).max(0) as u32;
            let track = self.tracks.get_mut(&k).expect("arrived above");
            // vLLM's own count of its prefix-cache hit, until its first token (vLLM reports
            // the count then: one a preemption before it reset is the resumed scheduling's),
            // and where its first scheduling could not tell it.
            let vllm_count = r.cached_tokens.and_then(|c| u32::try_from(c).ok());
            if vllm_count.is_some() && (track.row.cached_tokens.is_none() || output == 0) {
                track.row.cached_tokens = vllm_count;
                track.cached_pending = None;
            }
            let first_token = track.output == 0 && output > 0;
            track.output = output;
            if let (true, Some((update_step, update_ns))) = (first_token, self.last_update) {
                self.first_token(k, update_step, update_ns, out);
            }
        }
    }

    /// Folds in running request `r`, tracked as `k`, at `position` in the running queue:
    /// its tokens in the step and its queue row. `true` if the update gives it a new token.
    #[allow(clippy::too_many_arguments)]
    fn fold_running(
        &mut self,
        position: usize,
        k: Key,
        r: &RequestState,
        s: &SchedulerState,
        step: &Step,
        batch: &mut Batch,
        out: &mut StepOutput,
    ) -> bool {
        let computed = r.computed_tokens.unwrap_or(0);
        // Tokens the step's output names, else told from the computed count.
        let from_output = s.scheduled.as_ref().and_then(|m| m.get(&r.id).copied());
        let mut told = true;
        let tokens = from_output.unwrap_or_else(|| {
            // What was computed before this step: the last count seen, which is the last
            // step's unless that step went unseen; for a request (re)starting here, its
            // prefix-cache hit, which vLLM counts only at a first scheduling (none without
            // prefix caching).
            let track = &self.tracks[&k];
            let starts_here = track.row.first_scheduled_ns.is_none() && !track.in_flight_at_start;
            let (before, known) = if starts_here || track.preempted {
                let cached = (r.cached_tokens.filter(|&c| c >= 0 && starts_here))
                    .or((!self.prefix_caching).then_some(0));
                (cached.unwrap_or(0), cached.is_some())
            } else if track.row.first_scheduled_ns.is_some()
                && track.row.first_scheduled_ns == self.unseen_schedule.map(|(_, ns)| ns)
            {
                // First listed now, first scheduled by the unseen step before and decoding
                // since: its count before this step was never seen; a decode computes one.
                (computed - 1, false)
            } else {
                (track.computed, true)
            };
            told = known && self.unseen_schedule.is_none();
            let n =
                u32::try_from((i64::from(computed) - i64::from(before)).max(0)).unwrap_or(u32::MAX);
            self.counts.scheduled_from_computed += u64::from(n > 0);
            batch.tokens_unknown |= n > 0 && !told;
            n
        });
        // Counts are the target's (any i32 or u32): summed and compared as i64.
        let before = i64::from(computed) - i64::from(tokens);
        // Its count before this step is known from the step's output and a computed count.
        let exact = from_output.is_some() && r.computed_tokens.is_some();
        let produces = tokens > 0 && self.run(k, r, tokens, before, exact, !told, step, batch, out);
        self.tracks.get_mut(&k).expect("arrived above").computed = computed;
        out.queues.push(QueueRow {
            step: step.index,
            pid: self.pid,
            t_ns: step.schedule_done_ns,
            request_id: self.tracks[&k].info.id.clone(),
            queue: Queue::Running,
            position: position as u32,
            computed_tokens: u32::try_from(before).ok(),
            scheduled_tokens: tokens,
            reason: None,
        });
        produces
    }

    /// Request `k` runs `tokens` in the step, `before` computed before them (`exact`: as
    /// vLLM counts them; `doubtful`: the tokens may hold an unseen step's or a prefix-cache
    /// hit): the batch's sums, the request's row and events. `true` if its tokens complete
    /// all it has, so the update gives it a new one.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        k: Key,
        r: &RequestState,
        tokens: u32,
        before: i64,
        exact: bool,
        doubtful: bool,
        step: &Step,
        batch: &mut Batch,
        out: &mut StepOutput,
    ) -> bool {
        let prompt = self.tracks[&k].row.prompt_tokens;
        // Its tokens so far (prompt and outputs, as the last update left them).
        let known = prompt.map(|p| i64::from(p) + i64::from(self.tracks[&k].output));
        // A decode computes the newest token of a request past its prompt (with async
        // scheduling, the one after it: its newest is not out of the update yet); anything
        // else (a prompt chunk, recomputing after preemption) is prefill.
        let decode = prompt
            .zip(known)
            .is_some_and(|(p, known)| before >= i64::from(p) && before >= known - 1);
        let prefill = !decode;
        batch.add(
            tokens,
            prefill,
            u32::try_from(before.max(0)).unwrap_or(u32::MAX),
        );
        let doubtful = doubtful || self.unseen_schedule.is_some();
        let track = self.tracks.get_mut(&k).expect("arrived above");
        Self::close_wait(track, step.schedule_done_ns);
        track.row.iterations += 1;
        track.row.execution_ns = track.row.execution_ns.saturating_add(step.step_ns());
        let first = track.row.first_scheduled_ns.is_none() && !track.in_flight_at_start;
        let resumed = std::mem::take(&mut track.preempted);
        if first {
            track.row.first_scheduled_ns = Some(step.schedule_done_ns);
            batch.new_requests += 1;
        }
        // The hit vLLM reports is its last scheduling's before the first token: a preemption
        // before it starts the count over (real vLLM 0.22.1: 64 for 464 before).
        if first || (resumed && track.output == 0) {
            // After an unseen step, what was computed before may hold that step's chunk.
            let before = (exact && !doubtful).then_some(before);
            Self::cached_at_first(track, r, tokens, before, doubtful);
        } else if let Some(since) = track.cached_pending {
            Self::cached_later(track, since, resumed, tokens, exact.then_some(before));
        }
        let t = step.schedule_done_ns;
        let tokens_event = |requests: &Self, out: &mut StepOutput, kind| {
            requests.event_with(out, step.index, t, k, kind, Some(tokens), String::new());
        };
        if first {
            tokens_event(self, out, EventKind::Scheduled);
        } else if resumed {
            batch.resumed_requests += 1;
            tokens_event(self, out, EventKind::Resumed);
        }
        if prefill {
            tokens_event(self, out, EventKind::PrefillChunk);
        }
        known.is_some_and(|known| before + i64::from(tokens) >= known)
    }

    /// A request's prefix-cache hit at its first scheduling (or one that resumed it before its
    /// first token): its own count, else (releases without the attribute: 0.22.1 to 0.34.0
    /// keep it in the request's prefill stats, set at each such scheduling) what was computed
    /// before (`before`, where exact), else told at its next scheduling; unknown (empty) when
    /// the tokens are in doubt (`doubtful`: the step before went unseen, and may have been its
    /// first; or they came from its computed count, which holds the hit too).
    fn cached_at_first(
        track: &mut Track,
        r: &RequestState,
        tokens: u32,
        before: Option<i64>,
        doubtful: bool,
    ) {
        let computed_before = before.and_then(|b| u32::try_from(b).ok());
        track.row.cached_tokens = r
            .cached_tokens
            .and_then(|c| u32::try_from(c).ok())
            .or(computed_before);
        // Its computed count not planned yet (the plan is completed from the first running
        // request): told at its next scheduling, less what ran since.
        track.cached_pending =
            (track.row.cached_tokens.is_none() && r.cached_tokens.is_none() && !doubtful)
                .then_some(tokens);
    }

    /// A later scheduling of a request whose prefix-cache hit is still to be told, `since`
    /// tokens scheduled after its first: told once `before` is exact; never after a
    /// preemption (the computed count starts over).
    fn cached_later(
        track: &mut Track,
        since: u32,
        resumed: bool,
        tokens: u32,
        before: Option<i64>,
    ) {
        track.cached_pending = match before {
            _ if resumed => None,
            Some(before) => {
                track.row.cached_tokens = u32::try_from(before - i64::from(since)).ok();
                None
            }
            None => Some(since.saturating_add(tokens)),
        };
    }

    /// Marks the waiting requests this `schedule()` preempted; their keys.
    fn preempt(
        &mut self,
        waiting_keys: &[Key],
        waiting: &[RequestState],
        step: &Step,
        out: &mut StepOutput,
    ) -> HashSet<Key> {
        let mut preempted_now = HashSet::new();
        for (&k, r) in waiting_keys.iter().zip(waiting) {
            let track = self.tracks.get_mut(&k).expect("arrived above");
            if r.status.as_deref() == Some(STATUSES.preempted) && !track.preempted {
                track.preempted = true;
                track.row.preemptions += 1;
                track.waiting_since = Some(step.schedule_done_ns);
                track.computed = r.computed_tokens.unwrap_or(0);
                preempted_now.insert(k);
                self.event(
                    out,
                    step.index,
                    step.schedule_done_ns,
                    k,
                    EventKind::Preempted,
                );
            }
        }
        preempted_now
    }

    /// The waiting queue's rows, each with why it waits.
    fn waiting_rows(
        &self,
        waiting_keys: &[Key],
        waiting: &[RequestState],
        context: &reasons::Context,
        preempted_now: &HashSet<Key>,
        step: &Step,
        out: &mut StepOutput,
    ) {
        let queue: Vec<reasons::Waiting> = waiting_keys
            .iter()
            .zip(waiting)
            .map(|(k, r)| reasons::Waiting {
                state: r,
                prompt_tokens: self.tracks[k].row.prompt_tokens,
                preempted_now: preempted_now.contains(k),
            })
            .collect();
        let reasons = reasons::classify(context, &queue);
        for (position, ((k, r), reason)) in
            waiting_keys.iter().zip(waiting).zip(reasons).enumerate()
        {
            out.queues.push(QueueRow {
                step: step.index,
                pid: self.pid,
                t_ns: step.schedule_done_ns,
                request_id: self.tracks[k].info.id.clone(),
                queue: Queue::Waiting,
                position: position as u32,
                computed_tokens: r.computed_tokens.and_then(|c| u32::try_from(c).ok()),
                scheduled_tokens: 0,
                reason: Some(reason),
            });
        }
    }

    /// Folds in the scheduler as the step's `update_from_output()` left it (`updated`: which
    /// requests each queue holds): requests of the last `schedule()` it no longer lists
    /// finished, or were aborted. Fills the row's `finished`.
    pub fn update(
        &mut self,
        step: &Step,
        scheduled: Option<Scheduled>,
        updated: Option<&SchedulerState>,
        row: &mut StepRow,
    ) -> StepOutput {
        let mut out = StepOutput::default();
        // No snapshot showed this step's `schedule()` (a shadow copy that ended late).
        let unseen = scheduled.is_none();
        let produced = scheduled.map(|s| s.produced).unwrap_or_default();
        let index = step.index;
        // Two updates with no schedule() folded between (the trace ended while the batch
        // scheduled between them ran): no snapshot showed the first one's tokens.
        self.count_unseen_outputs(&mut out);
        // Tokens are stamped as vLLM stamps them: when it built this update's outputs.
        let outputs_ns = step.outputs_ns();
        self.last_update = Some((index, outputs_ns));
        let Some(running_after) = updated.and_then(|u| u.running.as_ref()) else {
            return out;
        };
        // What the requests still running produced, the next schedule's snapshot shows.
        let after: HashSet<u64> = running_after.iter().map(|r| r.object).collect();
        self.produced_last = produced
            .iter()
            .filter(|k| after.contains(&k.0))
            .copied()
            .collect();
        if unseen {
            let decoding = |k: &&Key| self.tracks.get(k).is_some_and(|t| t.output > 0);
            self.guessed_last = (self.last_running.iter())
                .filter(|k| after.contains(&k.0))
                .filter(decoding)
                .copied()
                .collect();
        }
        let waiting_after: Option<HashSet<u64>> = updated
            .and_then(|u| u.waiting.as_ref())
            .map(|w| w.iter().map(|r| r.object).collect());
        let (running_gone, waiting_gone, moved) = self.gone(&after, waiting_after.as_ref());
        // Moved between queues by a `schedule()` no snapshot showed: this step's.
        self.moved_unseen(moved, (index, step.schedule_done_ns), &mut out);
        let mut finished = 0;
        for (k, was_running) in running_gone
            .into_iter()
            .map(|k| (k, true))
            .chain(waiting_gone.into_iter().map(|k| (k, false)))
        {
            if !self.tracks.contains_key(&k) {
                continue;
            }
            // Its last token came from this update; the request is gone before we see it.
            // After an unseen `schedule()` a running one is taken to have made it: vLLM's
            // update frees a running request only once a new token stopped it (an abort
            // between the steps cannot be told apart then; counted).
            let made_token = produced.contains(&k) || (unseen && was_running);
            self.counts.tokens_unseen += u64::from(unseen && was_running);
            if made_token {
                let track = self.tracks.get_mut(&k).expect("checked above");
                track.output = track.output.saturating_add(1);
                if track.output == 1 {
                    self.first_token(k, index, outputs_ns, &mut out);
                }
            }
            let ended = was_running || made_token;
            let end_ns = if made_token {
                outputs_ns
            } else {
                step.update_done_ns
            };
            self.end(k, index, end_ns, ended, &mut out);
            finished += u32::from(ended);
        }
        row.finished = Some(finished);
        out
    }

    /// Requests an update left in the other queue than the last snapshot showed them in
    /// (`moved`: to waiting, to running): moved by a `schedule()` no snapshot showed, at `at`
    /// (step, its return). Those now waiting were preempted; those now running were scheduled:
    /// resumed, or scheduled for the first time.
    fn moved_unseen(&mut self, moved: Moved, at: (u64, u64), out: &mut StepOutput) {
        for k in moved.to_waiting {
            let Some(track) = self.tracks.get_mut(&k).filter(|t| !t.preempted) else {
                continue;
            };
            track.preempted = true;
            track.row.preemptions += 1;
            track.waiting_since = Some(at.1);
            self.event(out, at.0, at.1, k, EventKind::Preempted);
        }
        for k in moved.to_running {
            let Some(track) = self.tracks.get_mut(&k) else {
                continue;
            };
            let first = track.row.first_scheduled_ns.is_none() && !track.in_flight_at_start;
            let kind = if std::mem::take(&mut track.preempted) {
                EventKind::Resumed
            } else if first {
                track.row.first_scheduled_ns = Some(at.1);
                EventKind::Scheduled
            } else {
                continue;
            };
            Self::close_wait(track, at.1);
            self.event(out, at.0, at.1, k, kind);
        }
    }

    /// The requests last seen running, and those last seen waiting, that an update left in
    /// neither queue (`running_after`, `waiting_after`: what it left there), and those it
    /// left in the other queue; the rest are kept as last seen.
    fn gone(
        &mut self,
        running_after: &HashSet<u64>,
        waiting_after: Option<&HashSet<u64>>,
    ) -> (Vec<Key>, Vec<Key>, Moved) {
        let (mut running_gone, still_running): (Vec<Key>, Vec<Key>) =
            std::mem::take(&mut self.last_running)
                .into_iter()
                .partition(|k| !running_after.contains(&k.0));
        self.last_running = still_running;
        // A request preempted after its batch was scheduled (per batch) can be finished by
        // that batch's update while it waits; without a token there it was aborted.
        let (mut waiting_gone, mut moved) = (Vec::new(), Moved::default());
        if let Some(waiting_after) = waiting_after {
            (waiting_gone, self.last_waiting) = std::mem::take(&mut self.last_waiting)
                .into_iter()
                .partition(|k| !running_after.contains(&k.0) && !waiting_after.contains(&k.0));
            // Left waiting for the running queue: scheduled by a `schedule()` no snapshot
            // showed (an update moves none there).
            (moved.to_running, self.last_waiting) = std::mem::take(&mut self.last_waiting)
                .into_iter()
                .partition(|k| running_after.contains(&k.0));
            self.last_running.extend(&moved.to_running);
            // Left running for the waiting queue: preempted by a `schedule()` after the last
            // one seen (the running list is that one's), not finished.
            (moved.to_waiting, running_gone) = running_gone
                .into_iter()
                .partition(|k| waiting_after.contains(&k.0));
            self.last_waiting.extend(&moved.to_waiting);
        }
        (running_gone, waiting_gone, moved)
    }

    /// The tokens of the last update that no `schedule()` snapshot showed, counted as
    /// finishing ones are.
    fn count_unseen_outputs(&mut self, out: &mut StepOutput) {
        let Some((step, update_ns)) = self.last_update else {
            return;
        };
        let guessed = std::mem::take(&mut self.guessed_last);
        self.counts.tokens_unseen += guessed.len() as u64;
        for k in std::mem::take(&mut self.produced_last)
            .into_iter()
            .chain(guessed)
        {
            let Some(track) = self.tracks.get_mut(&k) else {
                continue;
            };
            track.output = track.output.saturating_add(1);
            if track.output == 1 {
                self.first_token(k, step, update_ns, out);
            }
        }
    }

    /// Ends the trace: rows for the requests still in the engine, and the tokens of the last
    /// update (no later snapshot showed them).
    pub fn finish(&mut self, end_ns: u64) -> StepOutput {
        let mut out = StepOutput::default();
        self.count_unseen_outputs(&mut out);
        self.aliases.clear();
        self.by_object.clear();
        out.finished = self
            .tracks
            .drain()
            .map(|(_, mut track)| {
                Self::close_wait(&mut track, end_ns);
                track.row.output_tokens = track.output;
                track.row
            })
            .collect();
        out.finished.sort_by_key(|r| r.queued_ns);
        out
    }
}

/// Requests an update left in the other queue than the last snapshot showed them in.
#[derive(Default)]
struct Moved {
    to_waiting: Vec<Key>,
    to_running: Vec<Key>,
}

/// A step's batch, summed over its scheduled requests.
#[derive(Default)]
struct Batch {
    size: u32,
    scheduled_tokens: u32,
    prefill_tokens: u32,
    decode_tokens: u32,
    prefill_requests: u32,
    decode_requests: u32,
    new_requests: u32,
    resumed_requests: u32,
    context_sum: u64,
    context_max: u32,
    /// A request's tokens would have come from its computed count, which could not tell
    /// them: the token columns are left empty.
    tokens_unknown: bool,
}

impl Batch {
    fn add(&mut self, tokens: u32, prefill: bool, context: u32) {
        self.size += 1;
        self.scheduled_tokens = self.scheduled_tokens.saturating_add(tokens);
        if prefill {
            self.prefill_tokens = self.prefill_tokens.saturating_add(tokens);
            self.prefill_requests += 1;
        } else {
            self.decode_tokens = self.decode_tokens.saturating_add(tokens);
            self.decode_requests += 1;
        }
        self.context_sum += u64::from(context);
        self.context_max = self.context_max.max(context);
    }

    /// The step row's batch columns.
    fn fill(&self, row: &mut StepRow) {
        row.batch_size = Some(self.size);
        row.new_requests = Some(self.new_requests);
        row.resumed_requests = Some(self.resumed_requests);
        if self.tokens_unknown {
            return;
        }
        row.scheduled_tokens = Some(self.scheduled_tokens);
        row.prefill_tokens = Some(self.prefill_tokens);
        row.decode_tokens = Some(self.decode_tokens);
        row.prefill_requests = Some(self.prefill_requests);
        row.decode_requests = Some(self.decode_requests);
        row.context_tokens_sum = Some(self.context_sum);
        row.context_tokens_max = Some(self.context_max);
    }
}

/// A step row's queue lengths and KV blocks used, from the scheduler state `s`.
fn queue_columns(row: &mut StepRow, s: &SchedulerState, budgets: &Budgets) {
    row.running = Some(s.running_len);
    row.waiting = Some(s.waiting_len);
    row.kv_blocks_total = budgets.kv_blocks_total;
    row.kv_blocks_used = budgets
        .kv_blocks_total
        .zip(s.kv_free)
        .map(|(total, free)| total.saturating_sub(free));
}

#[cfg(test)]
mod tests {
    use tracer_common::{
        capture::{self as wire, Field, Item, Plan, ScheduledEntry, SnapshotHeader},
        WatchHit,
    };

    use super::*;
    use crate::{
        inspect::{cpython::layout, vllm::RequestField},
        live::{
            decode::Decoder,
            plan::{Mark, ProbePlan, Watch},
            snapshot::state::Typing,
        },
        test_rng::Rng,
    };

    struct OnePrompt;
    impl RequestSource for OnePrompt {
        fn info(&mut self, _: u64, _: u64) -> Option<RequestInfo> {
            Some(RequestInfo {
                id: "req-0".into(),
                prompt_tokens: Some(200),
                ..RequestInfo::default()
            })
        }
    }

    /// The scheduler with request (1, 10) running: `computed` tokens (as `schedule()`
    /// advanced them), `output` tokens, `tokens` scheduled in the step.
    fn scheduled(computed: Option<i32>, output: i32, tokens: u32) -> SchedulerState {
        SchedulerState {
            running: Some(vec![RequestState {
                object: 1,
                id: 10,
                status: Some("RUNNING".into()),
                computed_tokens: computed,
                output_tokens: Some(output),
                ..RequestState::default()
            }]),
            waiting: Some(Vec::new()),
            running_len: 1,
            scheduled: Some(HashMap::from([(10, tokens)])),
            ..SchedulerState::default()
        }
    }

    /// After an update: which requests still run (objects only).
    fn updated(running: &[u64]) -> SchedulerState {
        SchedulerState {
            running: Some(
                running
                    .iter()
                    .map(|&object| RequestState {
                        object,
                        ..RequestState::default()
                    })
                    .collect(),
            ),
            ..SchedulerState::default()
        }
    }

    fn step(index: u64) -> Step {
        let t = 1000 * index;
        Step {
            index,
            start_ns: t,
            schedule_done_ns: t + 100,
            execute_done_ns: t + 800,
            update_done_ns: t + 900,
            ..Step::default()
        }
    }

    /// Facts by id address; reads of `unreadable` ids fail (a torn or freed string).
    struct Ids {
        unreadable: Vec<u64>,
        asked: Vec<(u64, u64)>,
    }
    impl RequestSource for Ids {
        fn info(&mut self, object: u64, id: u64) -> Option<RequestInfo> {
            self.asked.push((object, id));
            (!self.unreadable.contains(&id)).then(|| RequestInfo {
                id: format!("req-{id}"),
                prompt_tokens: Some(200),
                ..RequestInfo::default()
            })
        }
    }

    /// vLLM 0.33's first snapshot can list the first request before its id field is planned
    /// (id 0), the next ones with its id: still one row, not a `request@0x…`
    /// FINISHED_ABORTED one next to the real one.
    #[test]
    fn a_request_listed_first_without_its_id_is_one_request() {
        let mut requests = Requests::new(1, 0, true);
        let mut source = Ids {
            unreadable: vec![20],
            asked: Vec::new(),
        };
        let mut rows = Vec::new();
        let mut events = Vec::new();
        // Request A (object 1, id 10): no id at step 0. Request B (object 2, id 20): its id
        // does not read at steps 0 and 1, then does.
        let state = |a_id: u64, computed: i32| {
            let mut s = scheduled(Some(computed), 0, 100);
            let running = s.running.as_mut().unwrap();
            running[0].id = a_id;
            running.push(RequestState {
                object: 2,
                id: 20,
                status: Some("RUNNING".into()),
                computed_tokens: Some(computed),
                output_tokens: Some(0),
                ..RequestState::default()
            });
            s.running_len = 2;
            s.scheduled = Some(HashMap::from([(10, 100), (20, 100)]));
            s
        };
        for (index, a_id) in [0, 10, 10, 10].into_iter().enumerate() {
            if index == 2 {
                source.unreadable.clear();
            }
            let step = step(index as u64);
            let mut row = StepRow::default();
            let (out, token) = requests.schedule(
                &mut source,
                &step,
                Some(&state(a_id, 100 * (index as i32 + 1))),
                &Budgets::default(),
                &mut row,
            );
            events.extend(out.events);
            rows.extend(out.finished);
            let out = requests.update(&step, token, Some(&updated(&[1, 2])), &mut row);
            rows.extend(out.finished);
            // Without its id, A's tokens are not found in the step's output at step 0: told
            // from its computed count, which may hold a prefix-cache hit (not told).
            assert_eq!(row.batch_size, Some(2), "step {index}");
            assert_eq!(row.scheduled_tokens.is_none(), index == 0, "step {index}");
        }
        rows.extend(requests.finish(10_000).finished);
        let mut ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["req-10", "req-20"], "one row per real request");
        assert!(rows.iter().all(|r| r.finish_status == "UNFINISHED"));
        assert!(rows.iter().all(|r| r.prompt_tokens == Some(200)));
        assert_eq!(requests.counts.requests_seen, 2);
        assert_eq!(requests.counts.aborted, 0);
        let arrived = events.iter().filter(|e| e.event == EventKind::Arrived);
        assert_eq!(arrived.count(), 2);
        // Never asked for id 0; B's id tried at each step until it read, then no more.
        assert!(source.asked.iter().all(|&(_, id)| id != 0));
        assert_eq!(source.asked.iter().filter(|a| a.1 == 20).count(), 3);
    }

    /// A request known by its id, then listed once without it (a torn copy), stays one.
    #[test]
    fn a_torn_copy_without_the_id_is_the_request_already_tracked() {
        let mut requests = Requests::new(1, 0, true);
        let mut source = Ids {
            unreadable: Vec::new(),
            asked: Vec::new(),
        };
        for (index, id) in [10, 0, 10].into_iter().enumerate() {
            let mut s = scheduled(Some(100 * (index as i32 + 1)), 0, 100);
            s.running.as_mut().unwrap()[0].id = id;
            let step = step(index as u64);
            let mut row = StepRow::default();
            let (out, token) =
                requests.schedule(&mut source, &step, Some(&s), &Budgets::default(), &mut row);
            assert!(out.finished.is_empty(), "step {index}");
            let out = requests.update(&step, token, Some(&updated(&[1])), &mut row);
            assert!(out.finished.is_empty(), "step {index}");
        }
        let rows = requests.finish(10_000).finished;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].request_id, "req-10");
        assert_eq!(rows[0].iterations, 3);
    }

    #[test]
    fn a_prefix_hit_first_scheduled_before_the_computed_count_was_planned_is_told_later() {
        let mut requests = Requests::new(1, 0, true);
        // 64 prompt tokens from the prefix cache, then chunks of 36: the first step's
        // snapshot could not read the computed count, the second's reads 64 + 36 + 36.
        for (index, state) in [scheduled(None, 0, 36), scheduled(Some(136), 0, 36)]
            .iter()
            .enumerate()
        {
            let mut row = StepRow::default();
            let step = step(index as u64);
            let (_, token) = requests.schedule(
                &mut OnePrompt,
                &step,
                Some(state),
                &Budgets::default(),
                &mut row,
            );
            requests.update(&step, token, Some(&updated(&[1])), &mut row);
        }
        let rows = requests.finish(5000).finished;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cached_tokens, Some(64));
    }

    /// Request (1, 10): a 200-token prompt, at most 3 output tokens.
    struct Capped;
    impl RequestSource for Capped {
        fn info(&mut self, _: u64, _: u64) -> Option<RequestInfo> {
            Some(RequestInfo {
                id: "req-10".into(),
                prompt_tokens: Some(200),
                max_tokens: Some(3),
                ..RequestInfo::default()
            })
        }
    }

    /// What [`run_steps`] left.
    struct Run {
        requests: Requests,
        rows: Vec<RequestRow>,
        events: Vec<EventKind>,
        steps: Vec<StepRow>,
    }

    /// Steps of request (1, 10): `Some(state)` after `schedule()`, `None` for a step whose
    /// `schedule()` no snapshot showed, each with what its update left.
    fn run_steps(states: Vec<(Option<SchedulerState>, SchedulerState)>) -> Run {
        let mut requests = Requests::new(1, 0, true);
        let (mut rows, mut events, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        for (index, (at_schedule, after_update)) in states.into_iter().enumerate() {
            let step = step(index as u64);
            let mut row = StepRow::default();
            let (out, token) = requests.schedule(
                &mut Capped,
                &step,
                at_schedule.as_ref(),
                &Budgets::default(),
                &mut row,
            );
            events.extend(out.events.iter().map(|e| e.event));
            rows.extend(out.finished);
            let out = requests.update(&step, token, Some(&after_update), &mut row);
            events.extend(out.events.iter().map(|e| e.event));
            rows.extend(out.finished);
            steps.push(row);
        }
        rows.extend(requests.finish(100_000).finished);
        Run {
            requests,
            rows,
            events,
            steps,
        }
    }

    /// The update after an unseen `schedule()` (a shadow copy that ended late) frees a running
    /// request: its last token is counted, so it reaches `max_tokens` (it read one short and
    /// FINISHED_STOPPED on real vLLM 0.34.0 before).
    #[test]
    fn a_request_finishing_after_an_unseen_schedule_gets_its_last_token() {
        let Run { requests, rows, .. } = run_steps(vec![
            (Some(scheduled(Some(200), 0, 200)), updated(&[1])),
            (Some(scheduled(Some(201), 1, 1)), updated(&[1])),
            (None, updated(&[])),
        ]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].output_tokens, 3);
        assert_eq!(rows[0].finish_status, "FINISHED_LENGTH_CAPPED");
        assert_eq!(requests.counts.tokens_unseen, 1);
        assert_eq!(requests.counts.finished, 1);
    }

    /// A step after an unseen one whose copy lacks the scheduled tokens: its tokens would
    /// come from computed counts two steps apart, so its token columns stay empty.
    #[test]
    fn tokens_told_across_an_unseen_step_are_left_empty() {
        let without_output = |computed| SchedulerState {
            scheduled: None,
            ..scheduled(Some(computed), 0, 0)
        };
        let Run {
            requests,
            steps: rows,
            ..
        } = run_steps(vec![
            (Some(scheduled(Some(64), 0, 64)), updated(&[1])),
            (None, updated(&[1])),
            (Some(without_output(192)), updated(&[1])),
        ]);
        assert_eq!(rows[0].scheduled_tokens, Some(64));
        assert_eq!(rows[2].batch_size, Some(1));
        assert_eq!(
            rows[2].scheduled_tokens, None,
            "192 - 64 spans steps 1 and 2"
        );
        assert_eq!(requests.counts.steps_tokens_unknown, 1);
    }

    /// A request first scheduled in a step whose copy lacks the scheduled tokens: its
    /// computed count holds its prefix-cache hit too, told by vLLM's own count of it where
    /// the copy shows one; else the step's token columns stay empty, and its hit is taken
    /// from the first copy that shows vLLM's count (real vLLM 0.22.1: empty before).
    #[test]
    fn a_first_scheduling_without_the_step_output_is_told_by_its_prefix_hit() {
        for cached in [Some(64), None] {
            let mut waiting = scheduled(Some(0), 0, 0);
            let request = waiting.running.take().unwrap().remove(0);
            waiting.waiting = Some(vec![RequestState {
                status: Some("WAITING".into()),
                ..request
            }]);
            (waiting.running, waiting.running_len, waiting.waiting_len) = (Some(vec![]), 0, 1);
            let mut first = scheduled(Some(164), 0, 0);
            first.scheduled = None;
            first.running.as_mut().unwrap()[0].cached_tokens = cached;
            // Where vLLM's count was not set yet at the first copy, a later one shows it.
            let mut later = scheduled(Some(165), 1, 1);
            later.running.as_mut().unwrap()[0].cached_tokens = Some(64);
            // (A count changed before the first token, as a preemption resets it, is taken;
            // after it, not.)
            let mut after_first = scheduled(Some(166), 2, 1);
            after_first.running.as_mut().unwrap()[0].cached_tokens = Some(96);
            let Run { rows, steps, .. } = run_steps(vec![
                (Some(waiting), updated(&[])),
                (Some(first), updated(&[1])),
                (Some(later), updated(&[1])),
                (Some(after_first), updated(&[1])),
            ]);
            assert_eq!(steps[1].batch_size, Some(1), "{cached:?}");
            assert_eq!(steps[1].scheduled_tokens, cached.map(|_| 100), "{cached:?}");
            assert_eq!(rows[0].cached_tokens, Some(64), "{cached:?}");
        }
    }

    /// vLLM reports a request's prefix-cache hit with its first token: where a preemption
    /// before it reset the count, that of the resumed scheduling (real vLLM 0.22.1, async
    /// scheduling: 64 for 128 before).
    #[test]
    fn the_prefix_hit_is_vllm_s_count_at_the_first_token() {
        let with_cached = |mut s: SchedulerState, cached: i32| {
            s.running.as_mut().unwrap()[0].cached_tokens = Some(cached);
            s
        };
        let mut preempted = scheduled(Some(0), 0, 0);
        let request = preempted.running.take().unwrap().remove(0);
        preempted.waiting = Some(vec![RequestState {
            status: Some("PREEMPTED".into()),
            cached_tokens: Some(-1),
            ..request
        }]);
        (preempted.running, preempted.running_len) = (Some(vec![]), 0);
        let Run { rows, .. } = run_steps(vec![
            (
                Some(with_cached(scheduled(Some(134), 0, 70), 64)),
                updated(&[1]),
            ),
            (Some(preempted), updated(&[])),
            (
                Some(with_cached(scheduled(Some(241), 0, 113), 128)),
                updated(&[1]),
            ),
        ]);
        assert_eq!(rows[0].cached_tokens, Some(128));
    }

    /// Where the release keeps no count on the request (0.22.1 to 0.34.0: its prefill stats, set
    /// at each scheduling until the first token), a request resumed before its first token
    /// has the resumed scheduling's hit: what was computed before it (real vLLM 0.22.1, async
    /// scheduling: 64 for 464 before).
    #[test]
    fn a_hit_without_vllm_s_count_is_the_resumed_scheduling_s_before_the_first_token() {
        let mut preempted = scheduled(Some(0), 0, 0);
        let request = preempted.running.take().unwrap().remove(0);
        preempted.waiting = Some(vec![RequestState {
            status: Some("PREEMPTED".into()),
            ..request
        }]);
        (preempted.running, preempted.running_len) = (Some(vec![]), 0);
        // First scheduled for 70 tokens after a hit of 64; resumed for 113 after a hit of
        // 128: 241 computed after that step.
        let Run { rows, .. } = run_steps(vec![
            (Some(scheduled(Some(134), 0, 70)), updated(&[1])),
            (Some(preempted), updated(&[])),
            (Some(scheduled(Some(241), 0, 113)), updated(&[1])),
        ]);
        assert_eq!(rows[0].cached_tokens, Some(128));
    }

    /// A request that arrived and was first scheduled in a step no snapshot showed, first
    /// listed after it with its first token: first scheduled there, its token from that
    /// step's update, not new in the step that lists it (real vLLM 0.11.0 at the step where
    /// `auto` moved to shadow copies: new there, and no first token).
    #[test]
    fn a_request_first_scheduled_in_an_unseen_step_starts_there() {
        let empty = SchedulerState {
            running: Some(Vec::new()),
            waiting: Some(Vec::new()),
            ..SchedulerState::default()
        };
        let Run {
            rows,
            events,
            steps,
            ..
        } = run_steps(vec![
            (Some(empty), updated(&[])),
            (None, updated(&[1])),
            (Some(scheduled(Some(201), 1, 1)), updated(&[1])),
        ]);
        assert_eq!(steps[2].new_requests, Some(0));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].first_scheduled_ns, Some(step(1).schedule_done_ns));
        assert_eq!(rows[0].first_token_ns, Some(step(1).outputs_ns()));
        assert_eq!(
            events[..3],
            [
                EventKind::Arrived,
                EventKind::Scheduled,
                EventKind::FirstToken
            ]
        );
    }

    /// A request first listed after an unseen step, without the step's scheduled tokens,
    /// finishing in that step: its decode there is counted (its computed count before the
    /// step was never seen).
    #[test]
    fn a_request_first_listed_after_an_unseen_step_without_the_step_output_decodes() {
        let empty = SchedulerState {
            running: Some(Vec::new()),
            waiting: Some(Vec::new()),
            ..SchedulerState::default()
        };
        let mut listed = scheduled(Some(201), 1, 0);
        listed.scheduled = None;
        let Run { rows, steps, .. } = run_steps(vec![
            (Some(empty), updated(&[])),
            (None, updated(&[1])),
            (Some(listed), updated(&[])),
        ]);
        assert_eq!(steps[2].batch_size, Some(1));
        assert_eq!(steps[2].scheduled_tokens, None, "not told");
        assert_eq!(rows[0].output_tokens, 2);
    }

    /// A request that an unseen `schedule()` preempted waits after the update: still one
    /// request, not finished, its preemption counted when a snapshot shows it.
    #[test]
    fn a_request_preempted_by_an_unseen_schedule_is_not_finished() {
        let waiting = |status: &str| {
            let mut s = scheduled(Some(0), 1, 0);
            let request = s.running.take().unwrap().remove(0);
            s.waiting = Some(vec![RequestState {
                status: Some(status.into()),
                ..request
            }]);
            (s.running, s.running_len, s.scheduled) = (Some(Vec::new()), 0, None);
            s
        };
        let mut after_preemption = updated(&[]);
        after_preemption.waiting = Some(vec![RequestState {
            object: 1,
            ..RequestState::default()
        }]);
        let Run {
            requests,
            rows,
            events,
            ..
        } = run_steps(vec![
            (Some(scheduled(Some(200), 0, 200)), updated(&[1])),
            (None, after_preemption),
            (Some(waiting("PREEMPTED")), updated(&[])),
        ]);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].finish_status, "UNFINISHED");
        assert_eq!(rows[0].preemptions, 1);
        assert!(!events.contains(&EventKind::Finished), "{events:?}");
        assert_eq!(requests.counts.tokens_unseen, 0);
        // Running again by the next snapshot: its preemption still counted, then its resume.
        let mut after_preemption = updated(&[]);
        after_preemption.waiting = Some(vec![RequestState {
            object: 1,
            ..RequestState::default()
        }]);
        let Run {
            rows,
            events,
            steps,
            ..
        } = run_steps(vec![
            (Some(scheduled(Some(200), 0, 200)), updated(&[1])),
            (None, after_preemption),
            (Some(scheduled(Some(201), 1, 201)), updated(&[1])),
        ]);
        assert_eq!(rows[0].preemptions, 1);
        assert_eq!(steps[2].resumed_requests, Some(1));
        let preempted = events.iter().position(|e| *e == EventKind::Preempted);
        let resumed = events.iter().position(|e| *e == EventKind::Resumed);
        assert!(preempted.is_some() && preempted < resumed, "{events:?}");
        // Seen preempted, resumed by an unseen step, seen preempted again: two preemptions
        // (the late-copies test's cmpl-fixture-133: one fewer before).
        let queues = |running: &[u64], waiting: &[u64]| SchedulerState {
            waiting: updated(waiting).running,
            ..updated(running)
        };
        let Run { rows, events, .. } = run_steps(vec![
            (Some(scheduled(Some(200), 0, 200)), queues(&[1], &[])),
            (Some(waiting("PREEMPTED")), queues(&[], &[1])),
            (None, queues(&[1], &[])),
            (Some(waiting("PREEMPTED")), queues(&[], &[1])),
        ]);
        assert_eq!(rows[0].preemptions, 2, "{events:?}");
        let kinds: Vec<_> = (events.iter())
            .filter(|e| matches!(e, EventKind::Preempted | EventKind::Resumed))
            .collect();
        assert_eq!(
            kinds,
            [
                &EventKind::Preempted,
                &EventKind::Resumed,
                &EventKind::Preempted
            ]
        );
    }

    /// A request whose vLLM queueing stamp was gone when read is queued at the step that
    /// first listed it, and counted; one with its stamp keeps it.
    #[test]
    fn a_queueing_stamp_gone_when_read_is_the_step_start_and_counted() {
        struct Stamped(Option<u64>);
        impl RequestSource for Stamped {
            fn info(&mut self, _: u64, _: u64) -> Option<RequestInfo> {
                Some(RequestInfo {
                    id: "req-0".into(),
                    prompt_tokens: Some(200),
                    queued_ns: self.0,
                    ..RequestInfo::default()
                })
            }
        }
        let queued = |stamp: Option<u64>| {
            let mut requests = Requests::new(1, 0, true);
            let step = step(3);
            let mut row = StepRow::default();
            let (_, token) = requests.schedule(
                &mut Stamped(stamp),
                &step,
                Some(&scheduled(Some(36), 0, 36)),
                &Budgets::default(),
                &mut row,
            );
            requests.update(&step, token, Some(&updated(&[1])), &mut row);
            let from_step = requests.counts.queued_from_step;
            (requests.finish(5000).finished[0].queued_ns, from_step)
        };
        assert_eq!(queued(Some(2500)), (2500, 0));
        assert_eq!(queued(None), (3000, 1));
    }

    /// A request first seen scheduled after a step whose snapshot was lost: that step may
    /// have scheduled its first chunk, so what was computed before is no prefix-cache hit.
    #[test]
    fn a_prefix_hit_is_unknown_when_the_first_scheduling_may_have_gone_unseen() {
        // 64 prompt tokens from the prefix cache, chunks of 36; the lost step scheduled the
        // first: seen at the next, 64 + 36 were computed before it.
        let cached = |lost: bool| {
            let mut requests = Requests::new(1, 0, true);
            let states = [None, Some(scheduled(Some(136), 0, 36))];
            let first = usize::from(!lost);
            for (index, state) in states.iter().enumerate().skip(first) {
                let mut row = StepRow::default();
                let step = step(index as u64);
                let (_, token) = requests.schedule(
                    &mut OnePrompt,
                    &step,
                    state.as_ref(),
                    &Budgets::default(),
                    &mut row,
                );
                requests.update(&step, token, Some(&updated(&[1])), &mut row);
            }
            requests.finish(5000).finished[0].cached_tokens
        };
        assert_eq!(cached(true), None);
        // Without a lost step, the same snapshot is read as a first scheduling with 100
        // tokens computed before (the case the flag guards against).
        assert_eq!(cached(false), Some(100));
    }

    /// Per batch with async scheduling: a batch is scheduled before the previous one's update,
    /// and a request's computed count runs ahead of its outputs.
    #[test]
    fn batches_folded_in_the_order_they_ran_finish_a_request_at_its_update() {
        let mut requests = Requests::new(1, 0, true);
        let (steps, mut rows) = (
            [step(0), step(1), step(2)],
            [(); 3].map(|_| StepRow::default()),
        );
        // Every event of the run, in the order the calls made them.
        let mut events = Vec::new();
        let mut schedule =
            |requests: &mut Requests, i: usize, state: SchedulerState, row: &mut StepRow| {
                let (out, token) = requests.schedule(
                    &mut OnePrompt,
                    &steps[i],
                    Some(&state),
                    &Budgets::default(),
                    row,
                );
                events.extend(out.events);
                token
            };
        // The prompt (200 tokens) in batch 0; batches 1 and 2 decode, each scheduled before
        // the previous batch's outputs are in; the update of batch 1 ends the request.
        let [row0, row1, row2] = &mut rows;
        let t0 = schedule(&mut requests, 0, scheduled(Some(200), 0, 200), row0);
        let t1 = schedule(&mut requests, 1, scheduled(Some(201), 0, 1), row1);
        let u0 = requests.update(&steps[0], t0, Some(&updated(&[1])), row0);
        let t2 = schedule(&mut requests, 2, scheduled(Some(202), 1, 1), row2);
        let u1 = requests.update(&steps[1], t1, Some(&updated(&[])), row1);
        let u2 = requests.update(&steps[2], t2, Some(&updated(&[])), row2);
        assert_eq!(u1.finished.len(), 1);
        assert_eq!(u1.finished[0].output_tokens, 2);
        assert_eq!(
            u1.finished[0].tpot_ns,
            Some(steps[1].update_done_ns - steps[0].update_done_ns)
        );
        assert!(
            u0.finished.is_empty() && u2.finished.is_empty(),
            "ended once"
        );
        events.extend(u0.events.into_iter().chain(u1.events).chain(u2.events));
        let at = |kind| -> Vec<u64> {
            events
                .iter()
                .filter(|e| e.event == kind)
                .map(|e| e.t_ns)
                .collect()
        };
        assert_eq!(
            at(EventKind::Arrived).len(),
            1,
            "listed again after its end"
        );
        assert_eq!(at(EventKind::FirstToken), [steps[0].update_done_ns]);
        assert_eq!(at(EventKind::Finished), [steps[1].update_done_ns]);
        assert_eq!(
            rows.iter().map(|r| r.finished).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(0)]
        );
        assert_eq!(
            rows.iter()
                .map(|r| (r.prefill_tokens, r.decode_tokens))
                .collect::<Vec<_>>(),
            [(Some(200), Some(0)), (Some(0), Some(1)), (Some(0), Some(1))]
        );
    }

    /// The trace ends while a batch runs: its schedule() is never folded, so the two
    /// updates before it come one after the other (vLLM 0.11 async); the last request still
    /// ends with every token, not UNFINISHED and short of the tokens no snapshot showed.
    #[test]
    fn two_updates_without_a_schedule_between_finish_a_request_with_every_token() {
        let mut requests = Requests::new(1, 0, true);
        let (steps, mut row) = ([step(0), step(1)], StepRow::default());
        let schedule = |requests: &mut Requests, i: usize, state: SchedulerState| {
            requests
                .schedule(
                    &mut OnePrompt,
                    &steps[i],
                    Some(&state),
                    &Budgets::default(),
                    &mut StepRow::default(),
                )
                .1
        };
        let t0 = schedule(&mut requests, 0, scheduled(Some(200), 0, 200));
        let t1 = schedule(&mut requests, 1, scheduled(Some(201), 0, 1));
        let u0 = requests.update(&steps[0], t0, Some(&updated(&[1])), &mut row);
        let u1 = requests.update(&steps[1], t1, Some(&updated(&[])), &mut row);
        assert!(u0.finished.is_empty());
        assert_eq!(u1.finished.len(), 1, "ended by the second update");
        assert_eq!(u1.finished[0].output_tokens, 2);
        assert_eq!(u1.finished[0].first_token_ns, Some(steps[0].update_done_ns));
        assert_eq!(u1.finished[0].finished_ns, Some(steps[1].update_done_ns));
        assert!(requests.finish(5000).finished.is_empty());
    }

    #[test]
    fn a_request_preempted_while_its_batch_runs_is_finished_by_that_batch_s_update() {
        let mut requests = Requests::new(1, 0, true);
        let mut row = StepRow::default();
        let budgets = Budgets::default();
        let (steps, mut events) = ([step(0), step(1)], Vec::new());
        // Batch 0 computes the request's prompt; batch 1's schedule() preempts it (its
        // tokens run in batch 0 still); batch 0's update gives it its last token.
        let t0 = requests
            .schedule(
                &mut OnePrompt,
                &steps[0],
                Some(&scheduled(Some(200), 0, 200)),
                &budgets,
                &mut row,
            )
            .1;
        let mut preempted = scheduled(Some(0), 0, 0);
        preempted.waiting = preempted.running.take().map(|mut r| {
            r[0].status = Some(STATUSES.preempted.into());
            r
        });
        (
            preempted.running,
            preempted.running_len,
            preempted.waiting_len,
        ) = (Some(Vec::new()), 0, 1);
        let (out, _) = requests.schedule(
            &mut OnePrompt,
            &steps[1],
            Some(&preempted),
            &budgets,
            &mut row,
        );
        events.extend(out.events);
        let mut gone = updated(&[]);
        gone.waiting = Some(Vec::new());
        let out = requests.update(&steps[0], t0, Some(&gone), &mut row);
        assert_eq!(row.finished, Some(1));
        assert_eq!(out.finished.len(), 1);
        assert_eq!(out.finished[0].output_tokens, 1);
        assert_eq!(out.finished[0].finish_status, "FINISHED_STOPPED");
        assert_eq!(out.finished[0].finished_ns, Some(steps[0].update_done_ns));
        assert!(events.iter().any(|e| e.event == EventKind::Preempted));
    }

    fn bytes_of<T: Copy>(value: &T) -> &[u8] {
        // SAFETY: viewing a repr(C) plain-old-data value as its bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
    }

    /// Facts for most ids; some never read.
    struct Flaky;
    impl RequestSource for Flaky {
        fn info(&mut self, object: u64, id: u64) -> Option<RequestInfo> {
            (!id.is_multiple_of(3)).then(|| RequestInfo {
                id: format!("r{id}"),
                prompt_tokens: u32::try_from(id.wrapping_mul(object)).ok(),
                max_tokens: u32::try_from(object).ok(),
                arrival_time_s: None,
                queued_ns: None,
            })
        }
    }

    /// A watch record with a snapshot of random counts and contents, sometimes cut or
    /// padded; or random bytes.
    fn record(rng: &mut Rng) -> Vec<u8> {
        if rng.below(5) == 0 {
            return (0..rng.below(700)).map(|_| rng.next() as u8).collect();
        }
        let count = |rng: &mut Rng| match rng.below(8) {
            0 => rng.next() as u32,
            _ => rng.below(6) as u32,
        };
        let header = SnapshotHeader {
            flags: rng.next() as u32,
            n_running: count(rng),
            running_len: count(rng),
            n_waiting: count(rng),
            waiting_len: count(rng),
            n_scheduled: count(rng),
            kv_free: [rng.word(), rng.word()],
            copy_ns: rng.below(1000),
            frame: rng.word(),
            outputs_stamp: rng.next(),
        };
        let hit = WatchHit {
            ktime_ns: rng.next(),
            pid_tgid: 9,
            watch_addr: 0x1000,
            ip: rng.next(),
            queue_len: rng.word(),
        };
        let mut out = bytes_of(&hit).to_vec();
        out.extend_from_slice(bytes_of(&header));
        let items = header.n_running.min(8) + header.n_waiting.min(8);
        for _ in 0..items {
            // Copies without fields hold the requests' addresses only.
            if header.flags & wire::snap::COMPACT != 0 {
                out.extend_from_slice(&(1 + rng.below(5)).to_ne_bytes());
                continue;
            }
            let mut fields = [[0; 2]; wire::REQUEST_FIELDS];
            for f in &mut fields {
                *f = [rng.word(), rng.word()];
            }
            // A few requests, ids among a few (0: not copied), statuses among the known.
            fields[RequestField::Id as usize][0] = rng.below(6);
            fields[RequestField::Status as usize][0] = rng.below(4);
            let item = Item {
                object: 1 + rng.below(5),
                missing: rng.word(),
                fields,
            };
            out.extend_from_slice(bytes_of(&item));
        }
        for _ in 0..header.n_scheduled.min(8) {
            let entry = ScheduledEntry {
                key: rng.below(6),
                object: rng.word(),
                value: [rng.word(), rng.word()],
            };
            out.extend_from_slice(bytes_of(&entry));
        }
        match rng.below(6) {
            0 => out.truncate(rng.below(out.len() as u64 + 1) as usize),
            1 => out.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ => {}
        }
        out
    }

    /// Random bytes as snapshot records, through the decoder, typing and the request
    /// lifecycle: nothing the target or a bad record holds may panic (run in a debug build
    /// by `cargo test -p tracer random_snapshot_records`, overflow checks on).
    #[test]
    fn random_snapshot_records_never_panic() {
        let layout = layout::for_version((3, 12)).unwrap();
        let plan = Plan {
            request_fields: [Field { key: 1, index: 0 }; wire::REQUEST_FIELDS],
            ..Plan::default()
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let typing = Typing {
            layout,
            statuses: [(1, "RUNNING"), (2, "PREEMPTED"), (3, "WAITING")]
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        };
        let budgets = Budgets {
            max_num_seqs: Some(rng.word() as u32),
            max_num_batched_tokens: Some(rng.word() as u32),
            block_size: Some(rng.below(3) as u32),
            kv_blocks_total: Some(rng.word() as u32),
        };
        let probes = ProbePlan {
            tid: 9,
            watches: vec![Watch {
                addr: 0x1000,
                mark: Mark::ExecuteDone,
                offset: 0,
            }],
            per_batch: false,
            queue_len_addr: 0,
        };
        let mut decoder = Decoder::new(
            &probes,
            crate::live::discover::EvalCode::Unknown("test".into()),
        );
        let mut requests = Requests::new(1, 0, false);
        let (mut t, mut snapshots, mut rows) = (0u64, 0, 0);
        for index in 0..20_000 {
            let Some(raw) = decoder
                .decode(&record(&mut rng))
                .and_then(|hit| hit.snapshot)
            else {
                continue;
            };
            snapshots += 1;
            let state = typing.state(&plan, &raw);
            // Step marks are kernel stamps of one thread: in order.
            let mut mark = || {
                t += rng.below(2000);
                t
            };
            let step = Step {
                index,
                start_ns: mark(),
                schedule_done_ns: mark(),
                execute_done_ns: mark(),
                update_done_ns: mark(),
                ..Step::default()
            };
            let mut row = StepRow::default();
            let (out, token) =
                requests.schedule(&mut Flaky, &step, Some(&state), &budgets, &mut row);
            rows += out.finished.len();
            let after = typing.state(&plan, &raw);
            let out = requests.update(&step, token, Some(&after), &mut row);
            rows += out.finished.len();
        }
        rows += requests.finish(t).finished.len();
        assert!(snapshots > 5_000, "{snapshots} snapshots decoded");
        assert!(decoder.counts.malformed > 1_000, "{:?}", decoder.counts);
        assert!(rows > 100, "{rows} request rows");
    }
}
