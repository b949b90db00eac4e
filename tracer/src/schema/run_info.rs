//! `run.json` as types: what a trace was, how it was taken, and what the live pipeline counted
//! on the way. The live stages fill these plain structs (their counts, the scheduler's
//! budgets, the CUDA report); [`crate::live::sinks`] writes them. Field order is the order
//! of the JSON keys.

use serde::Serialize;

use crate::schema::rows::StepRow;

/// `run.json`: what was traced, how, and everything lost or filtered on the way.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub tracer_version: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub exe: String,
    pub cmdline: String,
    pub python_version: String,
    pub vllm_version: Option<String>,
    /// The engine's settings read from the target (`null`: not readable in this release).
    pub config: serde_json::Map<String, serde_json::Value>,
    pub python_binary: String,
    /// How hits that execute a watched instruction are told from ones that rewrite it.
    pub rewrite_filter: String,
    pub engine_shape: &'static str,
    /// Why the release is outside the tables (not measured, or no row fits its step), if it
    /// is; the trace goes on by the nearest row.
    pub unknown_release: Option<String>,
    /// The call whose return ends the execute phase.
    pub execute_ends_at: String,
    /// Why batch, request and queue columns are off, when snapshots were asked for but could
    /// not be planned.
    pub snapshots_off: Option<String>,
    /// `file:column` of every column that no row filled although this trace was to fill it.
    pub empty_columns: Vec<String>,
    pub step_function: String,
    pub probes: Vec<ProbeInfo>,
    /// CLOCK_MONOTONIC ns when the probes went in and when the trace ended.
    pub trace_start_ns: u64,
    pub trace_end_ns: u64,
    pub attach_ms: f64,
    pub end_reason: String,
    pub totals: Totals,
    pub counters: Counters,
    /// The scheduler's budgets read from the target (absent when snapshots were off).
    pub scheduler: Option<Budgets>,
    pub cuda: CudaReport,
}

/// One watched instruction of the step function.
#[derive(Debug, Serialize)]
pub struct ProbeInfo {
    pub mark: String,
    pub bytecode_offset: usize,
    pub address: String,
}

/// What the pipeline counted, stage by stage: losses, filters and reads that failed.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    /// Runs of the eBPF program.
    pub probe_hits: u64,
    /// Hits lost because the ring buffer was full.
    pub ring_buffer_drops: u64,
    pub decode: DecodeCounts,
    pub correlate: CorrelateCounts,
    pub requests: RequestCounts,
    /// Requests whose id and arrival were neither copied by the kernel side nor readable
    /// from the target (written as `request@<address>`).
    pub request_reads: u64,
    /// Kernel-side request facts lost because their ring buffer was full.
    pub facts_dropped: u64,
    /// Snapshot hits, and those whose record could not be built.
    pub snapshots: u64,
    pub snapshots_failed: u64,
    /// Snapshots lost because the ring buffer was full (their hits were kept).
    pub snapshots_dropped: u64,
    /// What went wrong in the kernel side's snapshots, by kind.
    pub snapshot_errors: SnapshotErrors,
    /// Shadow copies (`--snapshots`), absent with `--phases-only`.
    pub shadow: Option<ShadowCounts>,
}

/// The kernel side's snapshot failures (`snapshots_failed`, by cause) and the parts it could
/// not read (the snapshot went out without them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotErrors {
    /// Failed: this CPU had no scratch slot.
    pub no_scratch: u64,
    /// Failed: the record would have run past its bound.
    pub over_bound: u64,
    /// Sent flagged as a read error: a queue, or the KV free count, could not be read.
    pub running_unreadable: u64,
    pub waiting_unreadable: u64,
    pub kv_free_unreadable: u64,
    /// Sent without the step's scheduled tokens, which it was to copy.
    pub scheduled_unreadable: u64,
}

/// Running totals for the end-of-trace summary line.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    pub steps: u64,
    pub schedule_ns: u64,
    pub execute_ns: u64,
    pub update_ns: u64,
    pub step_ns: u64,
}

impl Totals {
    pub fn add(&mut self, row: &StepRow) {
        self.steps += 1;
        self.schedule_ns += row.schedule_ns;
        self.execute_ns += row.execute_ns;
        self.update_ns += row.update_ns;
        self.step_ns += row.step_ns;
    }

    /// E.g. `2000 steps, mean 1.08 ms: schedule 2.1 %, execute 95.5 %, update 2.4 %`.
    pub fn summary(&self) -> String {
        if self.steps == 0 || self.step_ns == 0 {
            return "0 steps".into();
        }
        let share = |ns: u64| 100.0 * ns as f64 / self.step_ns as f64;
        format!(
            "{} steps, mean {:.3} ms: schedule {:.1} %, execute {:.1} %, update {:.1} %",
            self.steps,
            self.step_ns as f64 / self.steps as f64 / 1e6,
            share(self.schedule_ns),
            share(self.execute_ns),
            share(self.update_ns)
        )
    }
}

/// Records that did not become hits, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DecodeCounts {
    /// Records of the wrong size (never expected: a build mismatch).
    pub malformed: u64,
    /// Hits on an address the plan does not watch.
    pub unknown_watch: u64,
    /// Hits from outside the interpreter loop: the interpreter rewriting the watched byte
    /// (quickening), not executing it.
    pub rewrites: u64,
}

/// Hits that did not make a step, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CorrelateCounts {
    /// Step entries followed by the next entry with nothing in between (nothing scheduled).
    pub idle_entries: u64,
    /// Steps that got past schedule but never finished.
    pub incomplete_steps: u64,
    /// A mark seen twice in a row.
    pub repeated_marks: u64,
    /// A mark out of order (e.g. an end mark with no step open: the trace started mid-step).
    pub out_of_order: u64,
}

/// Requests followed, and the steps and queue entries their columns could not use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    pub requests_seen: u64,
    pub finished: u64,
    pub aborted: u64,
    /// Steps without a usable snapshot after `schedule()` (their batch columns are empty).
    pub steps_without_snapshot: u64,
    /// Requests in a queue beyond what a snapshot copies (`MAX_QUEUE_ITEMS`).
    pub queue_items_not_copied: u64,
    /// Scheduled requests whose token count was not in `num_scheduled_tokens` and came
    /// from the change of their computed tokens instead.
    pub scheduled_from_computed: u64,
    /// Steps whose token columns are empty: a request's tokens would have come from its
    /// computed count, which cannot tell them (last seen before an unseen step, so the
    /// change spans both; or the request starts there with a prefix-cache hit vLLM does not
    /// count).
    pub steps_tokens_unknown: u64,
    /// Requests that arrived during the trace whose `queued_ns` is the start of the step that
    /// first listed them: vLLM's own stamp was gone when read (its first output takes it;
    /// read late when the tracer lags, snapshots copied in the trap).
    pub queued_from_step: u64,
    /// Output tokens counted from steps whose `schedule()` no snapshot showed (nor any later
    /// one, for the request): the last token of each request that left the running queue in
    /// such a step's update (vLLM frees a running request there only once a new token
    /// stopped it; one aborted between the steps would be counted so too), and one for each
    /// request decoding before such a step and still running after it (while the token
    /// budget lasts, every running request is scheduled).
    pub tokens_unseen: u64,
}

/// How the shadow copies went (run.json `counters.shadow`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShadowCounts {
    pub copies: u64,
    /// Copies that ended after the engine thread moved on (dropped).
    pub late: u64,
    /// Copies whose reads failed (the target changed under them, or, for the trace's first
    /// copy, the engine thread had not stored the step's scheduler output within 50 ms of its
    /// hit): dropped too.
    pub failed: u64,
    /// `auto` switches between synchronous and shadow copies.
    pub switches: u64,
}

/// The scheduler's limits that explain why requests wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Budgets {
    pub max_num_seqs: Option<u32>,
    pub max_num_batched_tokens: Option<u32>,
    pub block_size: Option<u32>,
    /// KV blocks requests can get: the pool's size less vLLM's null block.
    pub kv_blocks_total: Option<u32>,
}

/// Which driver-API calls are probed (`--cuda`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// No CUDA probes.
    Off,
    /// Syncs and device-to-host copies (entry and return) and graph launches: a few probe
    /// hits per step. Every CUDA column but `cuda_launches`.
    Sync,
    /// Also every kernel launch: one more probe hit per kernel launched. Every column.
    #[default]
    Launches,
}

/// The CUDA section of run.json.
#[derive(Clone, Debug, Serialize)]
pub struct CudaReport {
    pub level: Level,
    pub processes: Vec<ProcessReport>,
    /// Runs of the CUDA eBPF programs.
    pub probe_runs: u64,
    pub ring_buffer_drops: u64,
    /// Returns of timed calls that began before their probe went in.
    pub returns_without_entry: u64,
    pub starts_map_full: u64,
    pub malformed_records: u64,
    /// Calls from a process we did not probe (never expected: probes filter by process).
    pub foreign_calls: u64,
    pub in_steps: CallTotals,
    /// Calls between steps, before the first or after the last complete step.
    pub outside_steps: CallTotals,
    /// Of those, calls that reached us after their step had been written.
    pub late_calls: u64,
    /// Of those, calls left unplaced for `HORIZON_NS` (no step completed around them).
    pub expired_calls: u64,
    /// Calls of worker processes were folded into the batches of an engine that steps per
    /// batch (async scheduling): by time, where a worker runs a batch while the engine
    /// already waits on the one before, so a batch's calls can land in a neighbour's row.
    /// False when every probed worker's batches were marked ([`ProcessReport::batch_marks`]).
    pub workers_folded_by_time: bool,
    /// Workers' batch marks matched to a batch row, and marks that fit none (batches begun
    /// before the trace's first row, or whose engine step did not complete).
    pub batch_marks_matched: u64,
    pub batch_marks_unmatched: u64,
}

/// One traced process, for run.json.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// A worker's rank as ranks.csv names it (`TP1`, or `pid<N>` for a worker without a
    /// vLLM title); `null` for the engine process itself.
    pub rank: Option<String>,
    /// A worker's rows in ranks.csv, the steps it was the slowest rank of, and its
    /// `gpu_wait_ns` summed over them (0 for the engine process).
    pub rank_steps: u64,
    pub slowest_steps: u64,
    pub gpu_wait_ns: u64,
    /// The libcuda file, as the process maps it.
    pub libcuda: String,
    /// CLOCK_MONOTONIC ns when its probes were in; its calls before then are not seen.
    pub attached_ns: u64,
    /// How long finding the functions and attaching the probes took.
    pub attach_ms: f64,
    pub functions: Vec<&'static str>,
    /// Functions of the table the library does not export (or exports at the address of
    /// another one: probed once, under the first name).
    pub not_probed: Vec<&'static str>,
    pub error: Option<String>,
    /// A worker under an engine that steps per batch: the function whose entry marks each
    /// batch its main thread begins (its calls are then placed by batch, not by time), or
    /// why it could not be watched or marked nothing (its calls were then folded by time).
    pub batch_marks: Option<String>,
    pub batch_marks_error: Option<String>,
}

impl ProcessReport {
    /// A process seen mapping `libcuda` (empty if unknown), before any probe went in.
    pub fn new(pid: u32, libcuda: String) -> Self {
        Self {
            pid,
            rank: None,
            rank_steps: 0,
            slowest_steps: 0,
            gpu_wait_ns: 0,
            libcuda,
            attached_ns: 0,
            attach_ms: 0.0,
            functions: Vec::new(),
            not_probed: Vec::new(),
            error: None,
            batch_marks: None,
            batch_marks_error: None,
        }
    }
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
