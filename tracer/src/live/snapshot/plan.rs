//! The plan the watch program follows at the hits after `schedule()`, `execute_model()` and
//! `update_from_output()`, and [`SnapshotPlan`], which keeps it with what its copies are read with.
//!
//! The plan names objects by address and attributes by their key-table entry: the entry's
//! index (the same in every instance of a class, which all insert their attributes in one
//! order) and the address of the interned name it must hold, so the kernel side needs no
//! Python and no search. Everything per version comes from the CPython layout row and the
//! vLLM name row.

use std::collections::HashMap;

use tracer_common::capture::{
    self as wire, container, storage, Field, OutputsStamp, Plan, PyOffsets, QueuedEvent, Source,
};

use super::state::{small_int, SchedulerState, Typing, SMALL_INTS, SMALL_INT_BYTES, SMALL_INT_MIN};
use crate::{
    inspect::{
        cpython::{
            layout::{DictKeysSize, ManagedDict},
            Layout, PyReader, ReadError, Value,
        },
        memory::ProcessMemory,
        vllm::{RequestField, StateNames, REQUEST_EVENTS},
    },
    live::{
        decode::RawSnapshot,
        plan::{Mark, ProbePlan},
        resolve::Resolved,
    },
    schema::run_info::Budgets,
};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotPlanError {
    #[error("the engine object was not found on the engine thread's stack")]
    NoEngine,
    #[error("{what} not found ({names:?})")]
    Missing { what: String, names: Vec<String> },
    #[error("reading the scheduler's state: {0}")]
    Read(#[from] ReadError),
}

/// Which watches take the snapshots (see [`Plan::snapshot_at`]), given the addresses of the
/// watches that end schedule, execute and update.
///
/// Synchronous copies: after execute, not schedule, on the `step` path: the queues are as
/// `schedule()` left them until the update, and the step's `scheduler_output` local is
/// stored only after the hit that ends schedule (the hit is on that very store). Per batch,
/// a batch's queues as its `schedule()` left them are gone by the call that updates it:
/// they are copied when `schedule()` returns, and the batch's scheduled tokens come from
/// the copy before its update, whose `scheduler_output` is that batch's (that copy needs no
/// request's fields, which would be a later batch's).
///
/// Shadow copies (see `shadow`) start where `schedule()` returns on both paths: the state
/// holds still from there until the next mark, while the batch executes.
fn snapshot_at([schedule, execute, update]: [u64; 3], per_batch: bool, shadow: bool) -> [u64; 3] {
    match (per_batch, shadow) {
        (true, _) => [schedule, execute, update],
        (false, false) => [execute, 0, update],
        (false, true) => [schedule, 0, update],
    }
}

/// The plan, and what is needed to read its copies back.
#[derive(Clone, Debug)]
pub struct SnapshotPlan {
    pub plan: Plan,
    /// The watches that end schedule, execute and update.
    marks: [u64; 3],
    per_batch: bool,
    typing: Typing,
    names: &'static StateNames,
    request_class: u64,
    output_class: Option<u64>,
    /// Whether the request fields were planned from a running request. The class's shared
    /// keys (the fallback) hold at most 30 names; a release whose requests set more (0.33's
    /// `__init__` sets 52) keeps the rest in a combined dict whose positions only a live
    /// request shows, and fields set at scheduling (0.33's `num_cached_tokens`) only a
    /// scheduled one: see [`SnapshotPlan::refresh`].
    pub sampled: bool,
    /// Both queues were empty when the plan was made: no request was in flight at the start.
    pub idle_at_start: bool,
    /// Scheduler budgets (constant for an engine's life).
    pub budgets: Budgets,
}

fn offsets(layout: &Layout) -> PyOffsets {
    let (storage, type_inline_flag, values_valid) = match layout.instance_dict {
        ManagedDict::None => (storage::DICT_OFFSET, 0, 0),
        ManagedDict::Separate { .. } => (storage::MANAGED_311, 0, 0),
        ManagedDict::Tagged { .. } => (storage::TAGGED_312, 0, 0),
        ManagedDict::Inline { flag, valid, .. } => (storage::INLINE_313, flag, valid),
    };
    let (old_dict_keys, keys_index_size, keys_kind) = match layout.dictkeys_size {
        DictKeysSize::Log2 {
            log2_index_bytes,
            kind,
            ..
        } => (0, log2_index_bytes, kind),
        DictKeysSize::Size(size) => (1, size, 0),
    };
    let mut tstate_frame = [wire::NO_LINK; 2];
    for (slot, &link) in tstate_frame
        .iter_mut()
        .zip(layout.tstate_current_frame.iter())
    {
        *slot = link;
    }
    PyOffsets {
        storage,
        old_dict_keys,
        object_type: layout.object_type,
        var_size: layout.var_size,
        str_hash: layout.unicode_hash,
        list_items: layout.list_items,
        type_basicsize: layout.type_basicsize,
        type_dictoffset: layout.type_dictoffset,
        type_flags: layout.type_flags,
        type_inline_flag,
        heaptype_cached_keys: layout.heaptype_cached_keys,
        dict_keys: layout.dict_keys,
        dict_values: layout.dict_values,
        keys_index_size,
        keys_kind,
        keys_nentries: layout.dictkeys_nentries,
        keys_indices: layout.dictkeys_indices,
        values_items: layout.values_items,
        values_valid,
        deque_leftblock: layout.deque.leftblock,
        deque_leftindex: layout.deque.leftindex,
        tstate_frame,
        frame_localsplus: layout.frame_localsplus,
        stackref_tag_bits: layout.stackref_tag_bits,
    }
}

fn word<M: ProcessMemory>(reader: &PyReader<M>, addr: u64) -> Result<u64, ReadError> {
    reader
        .mem
        .read_u64(addr)
        .map_err(|source| ReadError::Memory { addr, source })
}

fn class<M: ProcessMemory>(
    reader: &PyReader<M>,
    modules: u64,
    (module, class): (&str, &str),
) -> Result<Option<u64>, ReadError> {
    let Some(module) = reader.dict_get(modules, module)? else {
        return Ok(None);
    };
    reader.dict_get(reader.module_dict(module)?, class)
}

/// Where the update-done snapshot finds vLLM's stamp of the step's outputs; not planned
/// (`slot` `u64::MAX`) where the class or its stamp member is not found.
fn outputs_plan<M: ProcessMemory>(
    reader: &PyReader<M>,
    modules: u64,
    names: &StateNames,
    step_code: u64,
) -> Result<OutputsStamp, ReadError> {
    let unplanned = OutputsStamp {
        slot: u64::MAX,
        ..OutputsStamp::default()
    };
    let Some(class) = class(reader, modules, names.outputs_class)? else {
        return Ok(unplanned);
    };
    let Some(member) = reader.class_slot_offset(class, names.outputs_stamp)? else {
        return Ok(unplanned);
    };
    Ok(OutputsStamp {
        slot: reader.stack_base(step_code)?,
        class,
        member,
    })
}

/// Where the kernel side finds a request's queueing stamp ([`REQUEST_EVENTS`]): the
/// members of the event class, and the request's `events` attribute as `sample` (or the
/// class's shared keys) shows it. Unplanned (all zero) where the class or a member is not
/// found.
fn queued_event<M: ProcessMemory>(
    reader: &PyReader<M>,
    modules: u64,
    request_class: u64,
    sample: Option<u64>,
) -> Result<QueuedEvent, ReadError> {
    let names = &REQUEST_EVENTS;
    let Some(class) = class(reader, modules, names.class)? else {
        return Ok(QueuedEvent::default());
    };
    let (Some(kind), Some(stamp)) = (
        reader.class_slot_offset(class, names.kind)?,
        reader.class_slot_offset(class, names.timestamp)?,
    ) else {
        return Ok(QueuedEvent::default());
    };
    let [events] = attr_fields(reader, [names.list], request_class, sample);
    Ok(QueuedEvent {
        events,
        kind,
        stamp,
    })
}

fn missing(what: &str, names: &[&str]) -> SnapshotPlanError {
    SnapshotPlanError::Missing {
        what: what.into(),
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// The object at the end of attribute path `names` from `obj`, as a [`Source`] (the last
/// link's owner, field and value type: the links before it are long-lived objects), and
/// the value now.
fn source<M: ProcessMemory>(
    reader: &PyReader<M>,
    obj: u64,
    names: &[&str],
    container: u64,
) -> Result<(Source, u64), SnapshotPlanError> {
    let what = format!("scheduler attribute {}", names.join("."));
    let (last, path) = names.split_last().ok_or_else(|| missing(&what, names))?;
    let mut owner = obj;
    for name in path {
        owner = reader
            .attr(owner, name)?
            .ok_or_else(|| missing(&what, names))?;
    }
    let (key, index) = reader
        .attr_entry(owner, last)?
        .ok_or_else(|| missing(&what, names))?;
    let value = reader
        .attr(owner, last)?
        .ok_or_else(|| missing(&what, names))?;
    let source = Source {
        owner,
        field: Field { key, index },
        ty: word(reader, value + reader.layout.object_type)?,
        container,
    };
    Ok((source, value))
}

/// The object at the end of attribute path `names` from `obj`, if every link is there.
fn path<M: ProcessMemory>(reader: &PyReader<M>, obj: u64, names: &[&str]) -> Option<u64> {
    names.iter().try_fold(obj, |current, name| {
        reader.attr(current, name).ok().flatten()
    })
}

/// The engine's settings of [`StateNames::config`], for run.json: scalars as JSON, `null`
/// where the attribute is absent or not a scalar (a release without it).
pub fn engine_config<M: ProcessMemory>(
    reader: &PyReader<M>,
    engine: u64,
    names: &StateNames,
) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value as Json;
    names
        .config
        .iter()
        .map(|&(name, attrs)| {
            // 0.8 and 0.9's engine keeps no `vllm_config`; its executor does, in every release.
            let value = path(reader, engine, attrs)
                .or_else(|| path(reader, path(reader, engine, &["model_executor"])?, attrs))
                .and_then(|obj| reader.value(obj, 0).ok());
            let json = match value {
                Some(Value::Bool(b)) => Json::from(b),
                Some(Value::Int(i)) => Json::from(i),
                Some(Value::Float(f)) => Json::from(f),
                Some(Value::Str(s)) => Json::from(s),
                _ => Json::Null,
            };
            (name.to_string(), json)
        })
        .collect()
}

/// `[first, end)` of the small-int array, found from `known`, an `int` object in it (a
/// scheduler budget), and checked whole; `[0, 0]` when it cannot be.
fn small_ints<M: ProcessMemory>(reader: &PyReader<M>, known: Option<u64>) -> [u64; 2] {
    let found = || -> Option<[u64; 2]> {
        let known = known?;
        let value = reader.int(known).ok()?;
        let index = u64::try_from(value - SMALL_INT_MIN)
            .ok()
            .filter(|&i| i < SMALL_INTS)?;
        let first = known.checked_sub(index * SMALL_INT_BYTES)?;
        let bytes = reader
            .mem
            .read_bytes(first, (SMALL_INTS * SMALL_INT_BYTES) as usize)
            .ok()?;
        let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap());
        let layout = reader.layout;
        (0..SMALL_INTS as usize)
            .all(|k| {
                let at = k * SMALL_INT_BYTES as usize;
                let value = at + layout.var_size as usize;
                word(at + layout.object_type as usize) == reader.types.int
                    && small_int(layout, [word(value), word(value + 8)])
                        == Some(k as i64 + SMALL_INT_MIN)
            })
            .then_some([first, first + SMALL_INTS * SMALL_INT_BYTES])
    };
    found().unwrap_or_default()
}

/// Request fields, fact fields and the span of a request's table that holds the former.
fn request_plan<M: ProcessMemory>(
    reader: &PyReader<M>,
    names: &StateNames,
    class: u64,
    sample: Option<u64>,
) -> (
    [Field; wire::REQUEST_FIELDS],
    [Field; wire::FACT_FIELDS],
    [u64; 2],
) {
    let request_fields = attr_fields(reader, names.request_fields, class, sample);
    let fact_fields = attr_fields(reader, names.facts, class, sample);
    let planned = request_fields
        .iter()
        .filter(|f| f.key != 0)
        .map(|f| f.index);
    let request_span = match (planned.clone().min(), planned.max()) {
        (Some(lo), Some(hi)) if hi - lo < wire::MAX_SPAN as u64 => [lo, hi + 1],
        _ => [0, 0],
    };
    (request_fields, fact_fields, request_span)
}

/// `SchedulerOutput`'s scheduled-tokens field, from its class's shared keys (unplanned
/// until the engine's first step made an instance).
fn output_field<M: ProcessMemory>(
    reader: &PyReader<M>,
    names: &StateNames,
    class: Option<u64>,
) -> Field {
    class
        .and_then(|class| {
            reader
                .class_attr_entry(class, names.output_scheduled)
                .ok()
                .flatten()
        })
        .map_or(Field::default(), |(key, index)| Field { key, index })
}

/// The planned fields of a request: from a live request when there is one (its own table),
/// else from the class's shared keys; a field found in neither stays unplanned (key 0).
fn attr_fields<M: ProcessMemory, const N: usize>(
    reader: &PyReader<M>,
    names: [&str; N],
    class: u64,
    sample: Option<u64>,
) -> [Field; N] {
    let mut fields = [Field::default(); N];
    for (field, name) in fields.iter_mut().zip(names) {
        let entry = sample
            .and_then(|object| reader.attr_entry(object, name).ok().flatten())
            .or_else(|| reader.class_attr_entry(class, name).ok().flatten());
        if let Some((key, index)) = entry {
            *field = Field { key, index };
        }
    }
    fields
}

/// The scheduler's queues and free-block count as the plan's sources, and what the queues
/// hold now.
struct Queues {
    running: Source,
    waiting: Source,
    kv_free: Source,
    /// A request they list, running if any: a live request shows where its fields are.
    sample: Option<u64>,
    sample_running: bool,
    /// Both were empty.
    idle: bool,
}

fn queues<M: ProcessMemory>(
    reader: &PyReader<M>,
    scheduler: u64,
    names: &StateNames,
) -> Result<Queues, SnapshotPlanError> {
    let (running, running_list) = source(reader, scheduler, names.running, container::LIST)?;
    let waiting_kind = if names.waiting_is_deque {
        container::DEQUE
    } else {
        container::LIST
    };
    let (waiting, waiting_queue) = source(reader, scheduler, names.waiting, waiting_kind)?;
    // One column: a release that keeps the count elsewhere loses only kv_blocks_used.
    let kv_free = source(reader, scheduler, names.kv_free, container::VALUE)
        .map_or(Source::default(), |(kv_free, _)| kv_free);
    let running_items = reader.list_items(running_list);
    let waiting_items = reader.deque_items(waiting_queue);
    let idle =
        matches!((&running_items, &waiting_items), (Ok(r), Ok(w)) if r.is_empty() && w.is_empty());
    let running_sample = running_items.ok().and_then(|items| items.first().copied());
    let sample =
        running_sample.or_else(|| waiting_items.ok().and_then(|items| items.first().copied()));
    Ok(Queues {
        running,
        waiting,
        kv_free,
        sample,
        sample_running: running_sample.is_some(),
        idle,
    })
}

/// `RequestStatus` members by address (none where the enum is not found).
fn statuses<M: ProcessMemory>(
    reader: &PyReader<M>,
    modules: u64,
    names: &StateNames,
) -> Result<HashMap<u64, String>, SnapshotPlanError> {
    let Some(status) = class(reader, modules, names.status_enum)? else {
        return Ok(HashMap::new());
    };
    let members = reader
        .dict_get(reader.class_dict(status)?, "_member_map_")?
        .ok_or_else(|| SnapshotPlanError::Missing {
            what: "RequestStatus members".into(),
            names: vec!["_member_map_".into()],
        })?;
    Ok(reader
        .dict_items(members)?
        .into_iter()
        .map(|(name, member)| Ok((member, reader.str(name)?)))
        .collect::<Result<_, ReadError>>()?)
}

/// The scheduler's budgets, and the KV blocks requests can get.
fn budgets<M: ProcessMemory>(reader: &PyReader<M>, scheduler: u64, names: &StateNames) -> Budgets {
    let budget = |name: &str| -> Option<u32> {
        let value = path(reader, scheduler, &[name])?;
        u32::try_from(reader.int(value).ok()?).ok()
    };
    Budgets {
        max_num_seqs: budget(names.max_num_seqs),
        max_num_batched_tokens: budget(names.max_num_batched_tokens),
        block_size: budget(names.block_size),
        kv_blocks_total: path(reader, scheduler, names.kv_total)
            .and_then(|pool| u32::try_from(reader.int(pool).ok()?).ok())
            .map(|blocks| blocks.saturating_sub(names.kv_null_blocks)),
    }
}

/// The addresses of the watches that end schedule, execute and update (0: not watched).
fn marks(probes: &ProbePlan) -> [u64; 3] {
    [Mark::ScheduleDone, Mark::ExecuteDone, Mark::UpdateDone].map(|mark| {
        probes
            .watches
            .iter()
            .find(|w| w.mark == mark)
            .map_or(0, |w| w.addr)
    })
}

impl SnapshotPlan {
    /// Plans snapshots at the hits after `execute_model()` and `update_from_output()`.
    pub fn plan<M: ProcessMemory>(
        reader: &PyReader<M>,
        modules: u64,
        resolved: &Resolved,
        probes: &ProbePlan,
    ) -> Result<Self, SnapshotPlanError> {
        let names: &StateNames = resolved.names.state;
        if resolved.engine == 0 {
            return Err(SnapshotPlanError::NoEngine);
        }
        let scheduler = reader
            .attr(resolved.engine, names.scheduler)?
            .ok_or_else(|| SnapshotPlanError::Missing {
                what: "the engine's scheduler".into(),
                names: vec![names.scheduler.into()],
            })?;
        let queues = queues(reader, scheduler, names)?;
        let (module, class_name) = names.request_class;
        let request_class = class(reader, modules, names.request_class)?
            .ok_or_else(|| missing("the request class", &[&format!("{module}.{class_name}")]))?;
        let (request_fields, fact_fields, request_span) =
            request_plan(reader, names, request_class, queues.sample);
        let output_local = reader
            .local_index(resolved.step.addr, names.output_local)?
            .unwrap_or(u64::MAX);
        let output_class = class(reader, modules, names.output_class)?;
        let outputs = outputs_plan(reader, modules, names, resolved.step.addr)?;
        let queued_event = queued_event(reader, modules, request_class, queues.sample)?;
        let statuses = statuses(reader, modules, names)?;
        let marks = marks(probes);
        let plan = Plan {
            py: offsets(reader.layout),
            snapshot_at: snapshot_at(marks, probes.per_batch, false),
            running: queues.running,
            waiting: queues.waiting,
            kv_free: queues.kv_free,
            request_type: request_class,
            request_fields,
            request_deref: RequestField::FOLLOWED
                .iter()
                .fold(0, |mask, field| mask | 1 << *field as u64),
            request_span,
            id_field: RequestField::Id as u64,
            fact_fields,
            tstate: resolved.tstate,
            output_local,
            output_scheduled: output_field(reader, names, output_class),
            dict_type: reader.types.dict,
            small_ints: small_ints(reader, path(reader, scheduler, &[names.block_size])),
            shadow: 0,
            outputs,
            queued_event,
        };
        Ok(Self {
            plan,
            marks,
            per_batch: probes.per_batch,
            typing: Typing {
                layout: reader.layout,
                statuses,
            },
            names,
            request_class,
            output_class,
            sampled: queues.sample_running,
            idle_at_start: queues.idle,
            budgets: budgets(reader, scheduler, names),
        })
    }

    pub fn output_class(&self) -> Option<u64> {
        self.output_class
    }

    pub fn per_batch(&self) -> bool {
        self.per_batch
    }

    /// What the copies are typed with (for `live::record`'s sidecar).
    pub fn typing(&self) -> &Typing {
        &self.typing
    }

    /// Switches the first snapshot of a step between a synchronous copy with every field and
    /// a shadow one (the fields read by userspace while the batch executes); `true` if the
    /// plan changed.
    pub fn set_shadow(&mut self, shadow: bool) -> bool {
        let before = self.plan;
        self.plan.shadow = shadow.into();
        self.plan.snapshot_at = snapshot_at(self.marks, self.per_batch, shadow);
        before != self.plan
    }

    /// Plans the request fields again from `request`, a running one the kernel side listed,
    /// and the step output's field from its class, whose shared keys the engine's first step
    /// filled. `true` if the plan changed (the kernel side must be given it again).
    pub fn refresh<M: ProcessMemory>(&mut self, reader: &PyReader<M>, request: u64) -> bool {
        let before = self.plan;
        let (request_fields, fact_fields, request_span) =
            request_plan(reader, self.names, self.request_class, Some(request));
        // A request freed before this read shows nothing: the next one is tried.
        if request_fields.iter().all(|f| f.key == 0) {
            return false;
        }
        self.sampled = true;
        self.plan.request_fields = request_fields;
        self.plan.fact_fields = fact_fields;
        self.plan.request_span = request_span;
        if self.plan.queued_event.kind != 0 {
            let [events] = attr_fields(
                reader,
                [REQUEST_EVENTS.list],
                self.request_class,
                Some(request),
            );
            self.plan.queued_event.events = events;
        }
        if self.plan.output_scheduled.key == 0 {
            self.plan.output_scheduled = output_field(reader, self.names, self.output_class);
        }
        before != self.plan
    }

    /// Types a snapshot's raw words.
    pub fn state(&self, raw: &RawSnapshot) -> SchedulerState {
        self.typing.state(&self.plan, raw)
    }
}
