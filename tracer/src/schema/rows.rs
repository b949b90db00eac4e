//! The rows of the CSV outputs: the column reference of DESIGN §5, as types.
//!
//! Times: `*_ns` fields are CLOCK_MONOTONIC nanoseconds (the clock of `bpf_ktime_get_ns` and
//! Python's `time.monotonic_ns()`), `*_rel_ns` count from the trace start, durations are
//! `*_ns` too. Counts are of tokens, requests or KV blocks as named. An empty cell means
//! "not observed" (e.g. batch columns when the scheduler state could not be read).

use serde::{Deserialize, Serialize};

/// `steps.csv`: one row per complete engine step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: u64,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub start_rel_ns: i64,
    pub schedule_ns: u64,
    pub execute_ns: u64,
    pub update_ns: u64,
    pub step_ns: u64,
    /// Part of this row's span that an earlier row's span also covers. Per batch
    /// (`step_with_batch_queue`) a batch's execute phase runs from its launch to its output
    /// and overlaps its neighbours' phases; `step_ns - overlap_ns` adds up, over a run, to
    /// the wall time the engine had work in flight. Always 0 for `step` rows.
    #[serde(default)]
    pub overlap_ns: u64,
    /// Time the tracer's snapshots held the engine thread in this step, left out of the
    /// phases (empty for phase-only traces).
    pub tracer_ns: Option<u64>,
    /// Requests with tokens scheduled in this step.
    pub batch_size: Option<u32>,
    pub scheduled_tokens: Option<u32>,
    /// Tokens of requests still in their prompt (prefill chunks).
    pub prefill_tokens: Option<u32>,
    /// Tokens of requests past their prompt (one per decoding request without speculation).
    pub decode_tokens: Option<u32>,
    pub prefill_requests: Option<u32>,
    pub decode_requests: Option<u32>,
    /// Requests scheduled for the first time.
    pub new_requests: Option<u32>,
    /// Preempted requests scheduled again.
    pub resumed_requests: Option<u32>,
    /// Sum and maximum of computed (context) tokens over the batch, before this step.
    pub context_tokens_sum: Option<u64>,
    pub context_tokens_max: Option<u32>,
    /// Queue lengths right after `schedule()` returned.
    pub running: Option<u32>,
    pub waiting: Option<u32>,
    /// Requests preempted during this step's `schedule()`.
    pub preempted: Option<u32>,
    /// Requests that finished in this step's `update_from_output()`.
    pub finished: Option<u32>,
    /// KV cache blocks in use right after `schedule()` (total − free), and the total.
    pub kv_blocks_used: Option<u32>,
    pub kv_blocks_total: Option<u32>,
    /// CUDA driver calls of the step (empty where `--cuda` did not probe them).
    pub cuda_launches: Option<u64>,
    pub cuda_graph_launches: Option<u64>,
    pub cuda_syncs: Option<u64>,
    pub cuda_sync_ns: Option<u64>,
    pub cuda_d2h_copies: Option<u64>,
    pub cuda_d2h_ns: Option<u64>,
    /// Execute split into host time launching work and time blocked waiting for the GPU. Per
    /// batch: the host time of its own launch (from its `schedule()` returning to the wait
    /// for an older batch or the call's end) and the time blocked waiting for its own output
    /// (or inside its launch); the other batches' work inside its execute span is in theirs.
    pub exec_launch_host_ns: Option<u64>,
    pub exec_gpu_wait_ns: Option<u64>,
    /// With tensor parallelism: the worker rank (ranks.csv `rank`) that began its last wait
    /// for the GPU last, the one the other ranks waited for, and how much later than the
    /// first rank it began. Empty with fewer than two ranks waiting.
    #[serde(default)]
    pub slowest_rank: Option<String>,
    #[serde(default)]
    pub rank_skew_ns: Option<u64>,
}

/// A phase's time in a steps.csv row.
pub type PhaseField = fn(&StepRow) -> u64;

/// The phases of steps.csv, in step order, with the field that holds each.
pub const PHASES: [(&str, PhaseField); 4] = [
    ("schedule", |s| s.schedule_ns),
    ("execute", |s| s.execute_ns),
    ("update", |s| s.update_ns),
    ("step", |s| s.step_ns),
];

/// `requests.csv`: one row per request seen, written when it finishes (or at trace end).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    pub request_id: String,
    pub pid: u32,
    /// vLLM's own `arrival_time` (seconds, on the clock vLLM stamped it with).
    pub arrival_time_s: Option<f64>,
    /// First step snapshot in which the request was in the engine's queues.
    pub queued_ns: u64,
    pub first_scheduled_ns: Option<u64>,
    pub first_token_ns: Option<u64>,
    pub finished_ns: Option<u64>,
    /// `RequestStatus` name at the end (`FINISHED_STOPPED`, …) or `UNFINISHED` at trace end.
    pub finish_status: String,
    pub prompt_tokens: Option<u32>,
    pub output_tokens: u32,
    /// Prompt tokens found in the prefix cache when first scheduled.
    pub cached_tokens: Option<u32>,
    /// Steps in which it had tokens scheduled.
    pub iterations: u32,
    pub preemptions: u32,
    /// Time in the waiting queue, in total and the longest continuous stretch.
    pub waiting_ns: u64,
    pub longest_wait_ns: u64,
    /// Summed duration of the steps it was scheduled in.
    pub execution_ns: u64,
    /// From `queued_ns`: to the first token, per output token after it, and to the end.
    pub ttft_ns: Option<u64>,
    pub tpot_ns: Option<u64>,
    pub e2e_ns: Option<u64>,
}

/// A request's transition, as seen between two snapshots of the scheduler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// First seen in the engine's queues.
    #[default]
    Arrived,
    /// Tokens scheduled for the first time.
    Scheduled,
    /// A chunk of the prompt scheduled (also for the first chunk).
    PrefillChunk,
    FirstToken,
    Preempted,
    /// Scheduled again after a preemption.
    Resumed,
    Finished,
    /// Left the queues without finishing normally (`FINISHED_ABORTED`, or vanished).
    Aborted,
}

/// `events.csv`: every transition of every request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub step: u64,
    pub pid: u32,
    pub t_ns: u64,
    pub t_rel_ns: i64,
    pub request_id: String,
    pub event: EventKind,
    /// Tokens scheduled (chunks), output tokens so far (first token, finished), else empty.
    pub tokens: Option<u32>,
    /// Finish status for `finished` / `aborted`.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    #[default]
    Running,
    Waiting,
}

/// Why a waiting request was not scheduled in a step (rules in `correlate::reasons`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The running list already held `max_num_seqs` requests.
    MaxNumSeqs,
    /// The step's `max_num_batched_tokens` were spent.
    TokenBudget,
    /// Not enough free KV cache blocks for its next chunk.
    NoKvBlocks,
    /// Preempted in this step, back in the queue.
    Preempted,
    /// Waiting for KV blocks from a remote (disaggregated prefill) transfer.
    RemoteKv,
    /// Waiting for its structured-output grammar (FSM) to compile.
    Grammar,
    /// No free LoRA slot.
    Lora,
    /// Encoder compute or cache budget spent.
    Encoder,
    /// Behind a request that could not be scheduled (FCFS: the queue stops at its head).
    BlockedBehindHead,
    Other,
}

/// `queues.csv`: every request in the running list and the waiting queue after each
/// step's `schedule()`, in queue order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueRow {
    pub step: u64,
    pub pid: u32,
    pub t_ns: u64,
    pub request_id: String,
    pub queue: Queue,
    pub position: u32,
    pub computed_tokens: Option<u32>,
    pub scheduled_tokens: u32,
    pub reason: Option<WaitReason>,
}

/// `ranks.csv`: with tensor parallelism, one row per step and worker process (rank) probed
/// since before the step began: its share of the step's CUDA calls. Empty when the engine
/// process makes every call (TP = 1).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankRow {
    /// The step (steps.csv `step`) and the engine process.
    pub step: u64,
    pub pid: u32,
    /// vLLM's name for the rank from the worker's title (`TP1`, `DP0_TP1`), else `pid<N>`.
    pub rank: String,
    pub worker_pid: u32,
    pub cuda_launches: Option<u64>,
    pub cuda_graph_launches: u64,
    pub cuda_syncs: u64,
    pub cuda_sync_ns: u64,
    pub cuda_d2h_copies: u64,
    pub cuda_d2h_ns: u64,
    /// Time in the step's execute phase during which the worker was blocked in a sync or a
    /// device-to-host copy.
    pub gpu_wait_ns: u64,
    /// Entry and return (CLOCK_MONOTONIC ns) of its last sync or copy in the step: when it
    /// had launched its share and began waiting for the GPU, and when the wait ended.
    pub wait_start_ns: Option<u64>,
    pub wait_end_ns: Option<u64>,
}
