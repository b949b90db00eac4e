//! Per-version knowledge of vLLM, as data: where the engine loop lives and what it calls.
//!
//! A row covers a range of vLLM releases whose engine step has the same shape; supporting a
//! new shape is adding a row.

/// vLLM releases whose engine the tracer was checked on (`cargo xtask real-vllm sweep`,
/// 2026-12-04: in every shape that ran, steps and every batch and request cell equal to the
/// ground truth). Another release is traced by the row its step fits and told as unknown
/// (run.json `unknown_release`).
pub const MEASURED: &[&str] = &[
    "0.8.5.post1",
    "0.9.2",
    "0.10.2",
    "0.11.0",
    "0.12.0",
    "0.14.1",
    "0.18.1",
    "0.22.1",
    "0.26.0",
    "0.30.0",
    "0.33.0",
    "0.34.0",
];

/// The names the tracer looks up in a vLLM V1 engine.
#[derive(Debug)]
pub struct EngineNames {
    /// Which releases this row was read from.
    pub releases: &'static str,
    /// Module that must be imported for the engine to be in this process.
    pub core_module: &'static str,
    /// Qualified name (within `core_module`) of the function that runs one engine step.
    pub step: &'static str,
    /// `step` schedules a batch in one call and updates it in a later one
    /// (`step_with_batch_queue`); such rows are used when the engine has a batch queue.
    pub per_batch: bool,
    /// The busy loop whose thread runs the steps.
    pub busy_loop: &'static str,
    /// Who calls the step when the engine runs in the front end's process.
    pub inproc: &'static InprocNames,
    /// Engine attribute that is not None when the engine runs `step_with_batch_queue`
    /// instead of `step` (async scheduling, pipeline parallelism), and the engine attribute
    /// holding the step function its callers call.
    pub batch_queue: &'static str,
    pub step_fn: &'static str,
    /// Method called in `step` whose return ends the schedule phase.
    pub schedule: &'static str,
    /// Method called in `step` whose return ends the execute phase.
    pub execute: &'static str,
    /// Method called in `step` whose return ends the update phase (and the step).
    pub update: &'static str,
    /// Where the scheduler's state is, for snapshots.
    pub state: &'static StateNames,
}

/// Attribute and class names of the scheduler state a snapshot copies.
#[derive(Debug)]
pub struct StateNames {
    /// Attribute of the engine object holding the scheduler.
    pub scheduler: &'static str,
    /// Attribute chains from the scheduler to the running list, the waiting queue, and the
    /// KV cache's free-block count.
    pub running: &'static [&'static str],
    pub waiting: &'static [&'static str],
    /// The waiting queue is a `deque` (FCFS) rather than a list (a priority heap).
    pub waiting_is_deque: bool,
    pub kv_free: &'static [&'static str],
    /// The block pool's size, counting the null block vLLM never hands out.
    pub kv_total: &'static [&'static str],
    /// Blocks of `kv_total` no request can get (the null block).
    pub kv_null_blocks: u32,
    /// `(module, class)` of requests and of their status enum.
    pub request_class: (&'static str, &'static str),
    pub status_enum: (&'static str, &'static str),
    /// Request attributes copied at every snapshot, in the order of [`RequestField`].
    pub request_fields: [&'static str; tracer_common::capture::REQUEST_FIELDS],
    /// Immutable request attributes copied once per request, at the first snapshot that
    /// lists it, in the order of [`tracer_common::capture::RequestFacts::fields`].
    pub facts: [&'static str; tracer_common::capture::FACT_FIELDS],
    /// The step's local holding what `schedule()` returned, its class, and the attribute
    /// mapping request ids to their scheduled token counts.
    pub output_local: &'static str,
    pub output_class: (&'static str, &'static str),
    pub output_scheduled: &'static str,
    /// `(module, class)` of what `update_from_output()` returns per client, and its member
    /// holding vLLM's `time.monotonic()` when it built them (the first-token and last-token
    /// times of vLLM's request stats: requests.csv takes them from there).
    pub outputs_class: (&'static str, &'static str),
    pub outputs_stamp: &'static str,
    /// run.json `config`: name → attribute path from the engine object.
    pub config: &'static [(&'static str, &'static [&'static str])],
    /// Scheduler attributes with the budgets that explain waiting.
    pub max_num_seqs: &'static str,
    pub max_num_batched_tokens: &'static str,
    pub block_size: &'static str,
}

/// The request attributes of [`StateNames::request_fields`], by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestField {
    /// The request id `str` (identity only: its address tells reuse of a freed request).
    Id = 0,
    /// A `RequestStatus` member (identity: members are singletons).
    Status = 1,
    ComputedTokens = 2,
    /// Prompt tokens found in the prefix cache at first scheduling (−1 before).
    CachedTokens = 3,
    /// The output token list (its length is the output count).
    OutputTokens = 4,
}

impl RequestField {
    /// Fields the program follows to copy the value (ints, list lengths) rather than
    /// copying the pointer.
    pub const FOLLOWED: [RequestField; 3] = [
        RequestField::ComputedTokens,
        RequestField::CachedTokens,
        RequestField::OutputTokens,
    ];
}

/// vLLM V1's scheduler (0.10 – 0.33 names).
pub const V1_STATE: StateNames = StateNames {
    scheduler: "scheduler",
    running: &["running"],
    waiting: &["waiting"],
    waiting_is_deque: true,
    kv_free: &[
        "kv_cache_manager",
        "block_pool",
        "free_block_queue",
        "num_free_blocks",
    ],
    kv_total: &["kv_cache_manager", "block_pool", "num_gpu_blocks"],
    kv_null_blocks: 1,
    request_class: ("vllm.v1.request", "Request"),
    status_enum: ("vllm.v1.request", "RequestStatus"),
    request_fields: [
        "request_id",
        "status",
        "num_computed_tokens",
        "num_cached_tokens",
        "_output_token_ids",
    ],
    facts: ["arrival_time", "max_tokens", "num_prompt_tokens"],
    output_local: "scheduler_output",
    output_class: ("vllm.v1.core.sched.output", "SchedulerOutput"),
    output_scheduled: "num_scheduled_tokens",
    outputs_class: ("vllm.v1.engine", "EngineCoreOutputs"),
    outputs_stamp: "timestamp",
    config: &[
        ("model", &["vllm_config", "model_config", "model"]),
        (
            "max_model_len",
            &["vllm_config", "model_config", "max_model_len"],
        ),
        ("block_size", &["vllm_config", "cache_config", "block_size"]),
        (
            "num_gpu_blocks",
            &["vllm_config", "cache_config", "num_gpu_blocks"],
        ),
        (
            "gpu_memory_utilization",
            &["vllm_config", "cache_config", "gpu_memory_utilization"],
        ),
        (
            "enable_prefix_caching",
            &["vllm_config", "cache_config", "enable_prefix_caching"],
        ),
        (
            "max_num_seqs",
            &["vllm_config", "scheduler_config", "max_num_seqs"],
        ),
        (
            "max_num_batched_tokens",
            &["vllm_config", "scheduler_config", "max_num_batched_tokens"],
        ),
    ],
    max_num_seqs: "max_num_running_reqs",
    max_num_batched_tokens: "max_num_scheduled_tokens",
    block_size: "block_size",
};

/// The in-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): no busy loop; the front end's
/// client calls the step (`step()` in 0.10, `step_fn()` from 0.11) from its `get_output`.
#[derive(Debug)]
pub struct InprocNames {
    pub module: &'static str,
    /// Qualified name of the caller, on the stack only while a step runs.
    pub caller: &'static str,
    /// Attribute of the caller's `self` holding the engine object.
    pub engine: &'static str,
}

/// vLLM 0.10 – 0.33 (read in the 0.10.2, 0.11.0 and 0.33.0 wheels).
pub const V1_INPROC: InprocNames = InprocNames {
    module: "vllm.v1.engine.core_client",
    caller: "InprocClient.get_output",
    engine: "engine_core",
};

impl EngineNames {
    /// The methods whose calls the step must contain for this row to fit it.
    pub fn calls(&self) -> [&'static str; 3] {
        [self.schedule, self.execute, self.update]
    }
}

/// vLLM 0.33 `EngineCore.step`: `execute_model(non_block=True)` returns a future, then
/// `future.result()` and, only when that gave None (as the GPU runner's does),
/// `sample_tokens()`; either way `_process_aborts_queue()` is the next call, right before
/// `update_from_output()`, so its return ends the execute phase (plus the context-manager
/// exits and the abort check, which the real-vLLM harness measures).
pub const V1_STEP_0_33: EngineNames = EngineNames {
    releases: "vLLM 0.14.1, 0.18.1, 0.22.1, 0.26.0, 0.30.0, 0.33.0, 0.34.0 (measured)",
    core_module: "vllm.v1.engine.core",
    step: "EngineCore.step",
    per_batch: false,
    busy_loop: "EngineCoreProc.run_busy_loop",
    inproc: &V1_INPROC,
    batch_queue: "batch_queue",
    step_fn: "step_fn",
    schedule: "schedule",
    execute: "_process_aborts_queue",
    update: "update_from_output",
    state: &V1_STATE,
};

/// vLLM 0.10 – 0.11 `EngineCore.step`: the executor's `execute_model` is passed to
/// `execute_model_with_error_logging`, which calls it; `step` itself never calls it.
pub const V1_STEP_0_10: EngineNames = EngineNames {
    releases: "vLLM 0.10.2, 0.11.0 (measured)",
    core_module: "vllm.v1.engine.core",
    step: "EngineCore.step",
    per_batch: false,
    busy_loop: "EngineCoreProc.run_busy_loop",
    inproc: &V1_INPROC,
    batch_queue: "batch_queue",
    step_fn: "step_fn",
    schedule: "schedule",
    execute: "execute_model_with_error_logging",
    update: "update_from_output",
    state: &V1_STATE,
};

/// `EngineCore.step` calling `execute_model` itself: vLLM 0.8, 0.9 and 0.12 (their config
/// through the executor where the engine keeps none), and the bundled fixture engine.
pub const V1_STEP: EngineNames = EngineNames {
    releases:
        "vLLM 0.8.5.post1, 0.9.2, 0.12.0 (measured); the fixture engine (tests/fixtures/engine)",
    core_module: "vllm.v1.engine.core",
    step: "EngineCore.step",
    per_batch: false,
    busy_loop: "EngineCoreProc.run_busy_loop",
    inproc: &V1_INPROC,
    batch_queue: "batch_queue",
    step_fn: "step_fn",
    schedule: "schedule",
    execute: "execute_model",
    update: "update_from_output",
    state: &V1_STATE,
};

/// 0.33's `step_with_batch_queue` (async scheduling, on by default on GPUs): the calls are
/// those of its `step` row; the one that schedules also launches the batch and returns early
/// while the queue has room (DESIGN §3).
pub const V1_BATCH_QUEUE_0_33: EngineNames = EngineNames {
    releases: "vLLM 0.22.1, 0.26.0, 0.30.0, 0.33.0, 0.34.0, step_with_batch_queue (measured)",
    step: "EngineCore.step_with_batch_queue",
    per_batch: true,
    ..V1_STEP_0_33
};

/// 0.10 – 0.11 `step_with_batch_queue`: the popped batch's future is waited for inside
/// `execute_model_with_error_logging`, as in their `step`.
pub const V1_BATCH_QUEUE_0_10: EngineNames = EngineNames {
    releases: "vLLM 0.10.2, 0.11.0, step_with_batch_queue (measured)",
    step: "EngineCore.step_with_batch_queue",
    per_batch: true,
    ..V1_STEP_0_10
};

/// 0.12 `step_with_batch_queue`: `execute_model(non_block=True)` (and `sample_tokens`)
/// launch the batch; the popped batch's `future.result()`, the next call, is its wait.
pub const V1_BATCH_QUEUE_0_12: EngineNames = EngineNames {
    releases: "vLLM 0.12.0, step_with_batch_queue (measured)",
    step: "EngineCore.step_with_batch_queue",
    per_batch: true,
    execute: "result",
    ..V1_STEP
};

/// Tried in order among the rows of the engine's loop (per call, or per batch when it has a
/// batch queue); the first whose step contains all of its [`EngineNames::calls`] is used
/// (0.33's step also names `execute_model`, so its row comes before the fixture's).
pub const ENGINES: &[EngineNames] = &[
    V1_STEP_0_33,
    V1_STEP_0_10,
    V1_STEP,
    V1_BATCH_QUEUE_0_33,
    V1_BATCH_QUEUE_0_10,
    V1_BATCH_QUEUE_0_12,
];

/// Where a worker process begins each batch the engine sends it, as `(module, qualified
/// name)`, tried in order: its main thread calls this once per batch (vLLM's
/// `WorkerProc.worker_busy_loop` → `Worker.execute_model`; the same in every V1 release
/// read, 0.8–0.26), and the batch's CUDA calls on that thread follow, up to the next call.
pub const WORKER_BATCH_ENTRY: &[(&str, &str)] =
    &[("vllm.v1.worker.gpu_worker", "Worker.execute_model")];

/// Where a request keeps vLLM's own stamp of its queueing: the first of its `events` (a
/// list of `EngineCoreEvent`s vLLM fills while it logs stats, and empties at the request's
/// first output), whose `type` is `EngineCoreEventType.QUEUED` and `timestamp` the
/// `time.monotonic()` of `Scheduler.add_request`. The same in every V1 release (0.8–0.33).
pub struct EventNames {
    /// `(module, class)` of the events (members at fixed offsets: a `msgspec.Struct`).
    pub class: (&'static str, &'static str),
    pub list: &'static str,
    pub kind: &'static str,
    pub timestamp: &'static str,
    pub queued: i64,
}

pub const REQUEST_EVENTS: EventNames = EventNames {
    class: ("vllm.v1.engine", "EngineCoreEvent"),
    list: "events",
    kind: "type",
    timestamp: "timestamp",
    queued: 1,
};

/// `RequestStatus` member names the tracer gives a meaning to, and the `FINISHED_*` names
/// requests.csv tells a request's end by (vLLM's own, though the tracer tells the end from
/// the queues and the token count, not from the status). The same in every V1 release but
/// the grammar's.
pub struct StatusNames {
    /// A request put back in the waiting queue by a preemption.
    pub preempted: &'static str,
    /// What the statuses of requests never scheduled start with (`WAITING`, `WAITING_FOR_*`).
    pub never_scheduled_prefix: &'static str,
    /// Waiting for KV blocks from a remote instance (disaggregated prefill).
    pub remote_kvs: &'static str,
    /// Waiting for its structured-output grammar to compile, per release.
    pub grammar: &'static [&'static str],
    /// Ended by a stop token or string, by reaching its `max_tokens`, by an abort.
    pub finished_stopped: &'static str,
    pub finished_length_capped: &'static str,
    pub finished_aborted: &'static str,
}

pub const REQUEST_STATUSES: StatusNames = StatusNames {
    preempted: "PREEMPTED",
    never_scheduled_prefix: "WAITING",
    remote_kvs: "WAITING_FOR_REMOTE_KVS",
    // 0.10 and 0.11 name it `WAITING_FOR_FSM`.
    grammar: &["WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR", "WAITING_FOR_FSM"],
    finished_stopped: "FINISHED_STOPPED",
    finished_length_capped: "FINISHED_LENGTH_CAPPED",
    finished_aborted: "FINISHED_ABORTED",
};
