//! Snapshots of the scheduler: the plan the watch program follows at the hits after
//! `execute_model()` and `update_from_output()`, and the typed state its copies decode into.
//!
//! The plan names objects by address and attributes by their key-table entry: the entry's
//! index (the same in every instance of a class, which all insert their attributes in one
//! order) and the address of the interned name it must hold, so the kernel side needs no
//! Python and no search. Everything per version comes from the CPython layout row and the
//! vLLM name row.

use std::collections::{HashMap, HashSet};

use tracer_common::capture::{
    self as wire, container, storage, Field, Item, OutputsStamp, Plan, PyOffsets, Source,
};

pub use crate::schema::run_info::Budgets;
use crate::{
    inspect::{
        cpython::{
            layout::{DictKeysSize, LongSize, ManagedDict},
            AttrLocation, Layout, PyReader, ReadError, Value,
        },
        memory::{ProcessMemory, Snapshot},
        vllm::{RequestField, StateNames},
    },
    live::{
        correlate::requests::{capped_id, RequestInfo, RequestSource, MAX_ID_CHARS},
        decode::RawSnapshot,
        plan::{Mark, ProbePlan},
        resolve::Resolved,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
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
pub struct Capture {
    pub plan: Plan,
    /// The watches that end schedule, execute and update.
    marks: [u64; 3],
    per_batch: bool,
    layout: &'static Layout,
    names: &'static StateNames,
    request_class: u64,
    output_class: Option<u64>,
    /// Whether the request fields were planned from a running request. The class's shared
    /// keys (the fallback) hold at most 30 names; a release whose requests set more (0.33's
    /// `__init__` sets 52) keeps the rest in a combined dict whose positions only a live
    /// request shows, and fields set at scheduling (0.33's `num_cached_tokens`) only a
    /// scheduled one: see [`Capture::refresh`].
    pub sampled: bool,
    /// Both queues were empty when the plan was made: no request was in flight at the start.
    pub idle_at_start: bool,
    /// `RequestStatus` members by address.
    statuses: HashMap<u64, String>,
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

fn missing(what: &str, names: &[&str]) -> CaptureError {
    CaptureError::Missing {
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
) -> Result<(Source, u64), CaptureError> {
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

/// The interpreter's small ints (−5 to 256, one immutable object each, in an array): the
/// smallest and how many, the size of one object. A value in that range is always that
/// object, so the kernel side need not read a decode step's token count.
const SMALL_INT_MIN: i64 = -5;
const SMALL_INTS: u64 = 262;
const SMALL_INT_BYTES: u64 = 32;

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

/// An `int` from the 16 bytes after its header (size word, then two 30-bit digits);
/// `None` for values beyond two digits (never a token count).
fn small_int(layout: &Layout, words: [u64; 2]) -> Option<i64> {
    let (digits, negative) = match layout.long_size {
        LongSize::ObSize => {
            let size = words[0] as i64;
            (size.unsigned_abs(), size < 0)
        }
        LongSize::Tag { non_size_bits, .. } => (words[0] >> non_size_bits, words[0] & 3 == 2),
    };
    let shift = layout.long_shift;
    let low = words[1] & 0xffff_ffff;
    let high = words[1] >> 32;
    let magnitude = match digits {
        0 => 0,
        1 => low,
        2 => low | high << shift,
        _ => return None,
    } as i64;
    Some(if negative { -magnitude } else { magnitude })
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

impl Capture {
    /// Plans snapshots at the hits after `execute_model()` and `update_from_output()`.
    pub fn plan<M: ProcessMemory>(
        reader: &PyReader<M>,
        modules: u64,
        resolved: &Resolved,
        probes: &ProbePlan,
    ) -> Result<Self, CaptureError> {
        let names: &StateNames = resolved.names.state;
        if resolved.engine == 0 {
            return Err(CaptureError::NoEngine);
        }
        let scheduler = reader
            .attr(resolved.engine, names.scheduler)?
            .ok_or_else(|| CaptureError::Missing {
                what: "the engine's scheduler".into(),
                names: vec![names.scheduler.into()],
            })?;
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

        let request_class = class(reader, modules, names.request_class)?.ok_or_else(|| {
            missing(
                "the request class",
                &[&format!(
                    "{}.{}",
                    names.request_class.0, names.request_class.1
                )],
            )
        })?;
        // Any live request shows where its fields are.
        let running_items = reader.list_items(running_list);
        let waiting_items = reader.deque_items(waiting_queue);
        let idle_at_start = matches!((&running_items, &waiting_items), (Ok(r), Ok(w)) if r.is_empty() && w.is_empty());
        let running_sample = running_items.ok().and_then(|items| items.first().copied());
        let sample =
            running_sample.or_else(|| waiting_items.ok().and_then(|items| items.first().copied()));
        let (request_fields, fact_fields, request_span) =
            request_plan(reader, names, request_class, sample);
        let request_deref = RequestField::FOLLOWED
            .iter()
            .fold(0, |mask, field| mask | 1 << *field as u64);

        let output_local = reader
            .local_index(resolved.step.addr, names.output_local)?
            .unwrap_or(u64::MAX);
        let output_class = class(reader, modules, names.output_class)?;
        let output_scheduled = output_field(reader, names, output_class);

        let outputs = outputs_plan(reader, modules, names, resolved.step.addr)?;

        let statuses = match class(reader, modules, names.status_enum)? {
            Some(status) => {
                let members = reader
                    .dict_get(reader.class_dict(status)?, "_member_map_")?
                    .ok_or_else(|| CaptureError::Missing {
                        what: "RequestStatus members".into(),
                        names: vec!["_member_map_".into()],
                    })?;
                reader
                    .dict_items(members)?
                    .into_iter()
                    .map(|(name, member)| Ok((member, reader.str(name)?)))
                    .collect::<Result<_, ReadError>>()?
            }
            None => HashMap::new(),
        };
        let budget = |name: &str| -> Option<u32> {
            let value = path(reader, scheduler, &[name])?;
            u32::try_from(reader.int(value).ok()?).ok()
        };
        let watch = |mark| {
            probes
                .watches
                .iter()
                .find(|w| w.mark == mark)
                .map_or(0, |w| w.addr)
        };
        let marks = [
            watch(Mark::ScheduleDone),
            watch(Mark::ExecuteDone),
            watch(Mark::UpdateDone),
        ];
        let plan = Plan {
            py: offsets(reader.layout),
            snapshot_at: snapshot_at(marks, probes.per_batch, false),
            running,
            waiting,
            kv_free,
            request_type: request_class,
            request_fields,
            request_deref,
            request_span,
            id_field: RequestField::Id as u64,
            fact_fields,
            tstate: resolved.tstate,
            output_local,
            output_scheduled,
            dict_type: reader.types.dict,
            small_ints: small_ints(reader, path(reader, scheduler, &[names.block_size])),
            shadow: 0,
            outputs,
        };
        Ok(Self {
            plan,
            marks,
            per_batch: probes.per_batch,
            layout: reader.layout,
            names,
            request_class,
            output_class,
            sampled: running_sample.is_some(),
            idle_at_start,
            statuses,
            budgets: Budgets {
                max_num_seqs: budget(names.max_num_seqs),
                max_num_batched_tokens: budget(names.max_num_batched_tokens),
                block_size: budget(names.block_size),
                kv_blocks_total: path(reader, scheduler, names.kv_total)
                    .and_then(|pool| u32::try_from(reader.int(pool).ok()?).ok())
                    .map(|blocks| blocks.saturating_sub(1)),
            },
        })
    }

    pub fn output_class(&self) -> Option<u64> {
        self.output_class
    }

    pub fn per_batch(&self) -> bool {
        self.per_batch
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
        if self.plan.output_scheduled.key == 0 {
            self.plan.output_scheduled = output_field(reader, self.names, self.output_class);
        }
        before != self.plan
    }

    /// An `int` from the 16 bytes after its header.
    fn int(&self, words: [u64; 2]) -> Option<i64> {
        small_int(self.layout, words)
    }

    /// A scheduled-tokens entry's count: by its object's place among the small ints, else
    /// from its words.
    fn tokens(&self, entry: &wire::ScheduledEntry) -> Option<i64> {
        let [first, end] = self.plan.small_ints;
        if (first..end).contains(&entry.object) {
            let index = (entry.object - first) / SMALL_INT_BYTES;
            return Some(index as i64 + SMALL_INT_MIN);
        }
        self.int(entry.value)
    }

    fn request(&self, item: &Item) -> RequestState {
        let field = |f: RequestField| {
            (item.missing & (1 << f as u64) == 0 && self.plan.request_fields[f as usize].key != 0)
                .then_some(item.fields[f as usize])
        };
        let count = |f: RequestField| {
            field(f)
                .and_then(|words| self.int(words))
                .and_then(|n| i32::try_from(n).ok())
        };
        RequestState {
            object: item.object,
            id: field(RequestField::Id).map_or(0, |words| words[0]),
            status: field(RequestField::Status)
                .and_then(|words| self.statuses.get(&words[0]).cloned()),
            computed_tokens: count(RequestField::ComputedTokens),
            cached_tokens: count(RequestField::CachedTokens),
            // A list's first word after the header is its length.
            output_tokens: field(RequestField::OutputTokens).map(|words| words[0] as i32),
        }
    }

    /// Types a snapshot's raw words.
    pub fn state(&self, raw: &RawSnapshot) -> SchedulerState {
        let flags = raw.header.flags;
        SchedulerState {
            running: (flags & wire::snap::RUNNING != 0)
                .then(|| raw.running.iter().map(|i| self.request(i)).collect()),
            waiting: (flags & wire::snap::WAITING != 0)
                .then(|| raw.waiting.iter().map(|i| self.request(i)).collect()),
            running_len: raw.header.running_len,
            waiting_len: raw.header.waiting_len,
            kv_free: (flags & wire::snap::KV_FREE != 0)
                .then(|| self.int(raw.header.kv_free))
                .flatten()
                .and_then(|n| u32::try_from(n).ok()),
            scheduled: (flags & wire::snap::SCHEDULED != 0).then(|| {
                raw.scheduled
                    .iter()
                    .filter_map(|e| Some((e.key, u32::try_from(self.tokens(e)?).ok()?)))
                    .collect()
            }),
            read_error: flags & wire::snap::READ_ERROR != 0,
        }
    }
}

/// One request as copied at a hit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestState {
    pub object: u64,
    /// Address of its request id `str` (0 if not copied).
    pub id: u64,
    /// `RequestStatus` member name.
    pub status: Option<String>,
    pub computed_tokens: Option<i32>,
    pub cached_tokens: Option<i32>,
    pub output_tokens: Option<i32>,
}

/// The scheduler's state at a hit. `None` parts could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerState {
    pub running: Option<Vec<RequestState>>,
    pub waiting: Option<Vec<RequestState>>,
    /// True queue lengths (longer than the copies past `MAX_QUEUE_ITEMS`).
    pub running_len: u32,
    pub waiting_len: u32,
    pub kv_free: Option<u32>,
    /// `num_scheduled_tokens` of the step's `SchedulerOutput`: request id `str` address →
    /// tokens (only at the hit after `schedule()`).
    pub scheduled: Option<HashMap<u64, u32>>,
    pub read_error: bool,
}

/// Each request's immutable facts: from the [`wire::RequestFacts`] the kernel side copied
/// when it first listed the request, else read from the live target.
pub struct LiveRequests<'r, M: ProcessMemory> {
    reader: &'r PyReader<'r, M>,
    names: &'static StateNames,
    /// Kernel-side facts not yet asked for, by (request, id string), with the drain that
    /// brought them.
    facts: HashMap<(u64, u64), (wire::RequestFacts, u64)>,
    /// vLLM's queueing stamps read while a shadow copy first listed the request, likewise.
    queued: HashMap<(u64, u64), (u64, u64)>,
    drains: u64,
    /// Where the last request kept each attribute: requests set theirs in the same order, so
    /// the next one is read there in a few reads, not found again by walking its class.
    locations: HashMap<&'static str, AttrLocation>,
    /// Requests whose facts came from neither (freed before the live read), less those
    /// read at a later try.
    pub errors: u64,
    /// Objects counted in `errors`, to uncount them when a later try reads them.
    failed: HashSet<u64>,
}

/// Most objects remembered in [`LiveRequests::failed`]; past it, failures stay counted.
const FAILED_KEPT: usize = 1 << 16;

/// Drains after which kernel-side facts nobody asked for are dropped (a request listed
/// again after its entry aged out of the kernel's LRU map, already tracked).
const FACTS_KEPT_DRAINS: u64 = 1000;

impl<'r, M: ProcessMemory> LiveRequests<'r, M> {
    pub fn new(reader: &'r PyReader<'r, M>, names: &'static StateNames) -> Self {
        Self {
            reader,
            names,
            facts: HashMap::new(),
            queued: HashMap::new(),
            drains: 0,
            locations: HashMap::new(),
            errors: 0,
            failed: HashSet::new(),
        }
    }

    /// Takes in one record of the facts ring; `false` if it is not one (a build mismatch).
    pub fn learn(&mut self, record: &[u8]) -> bool {
        if record.len() != size_of::<wire::RequestFacts>() {
            return false;
        }
        // SAFETY: `RequestFacts` is repr(C) of integers (any bit pattern is valid) and the
        // record holds exactly its bytes.
        let facts: wire::RequestFacts = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        self.know(facts);
        true
    }

    /// Ends a drain: forgets facts older than [`FACTS_KEPT_DRAINS`].
    pub fn end_drain(&mut self) {
        self.drains += 1;
        let oldest = self.drains.saturating_sub(FACTS_KEPT_DRAINS);
        self.facts.retain(|_, (_, drain)| *drain >= oldest);
        self.queued.retain(|_, (_, drain)| *drain >= oldest);
    }

    /// Takes in facts a shadow copy read, as [`LiveRequests::learn`] those of the kernel side.
    pub fn know(&mut self, facts: wire::RequestFacts) {
        self.facts
            .insert((facts.object, facts.id), (facts, self.drains));
    }

    /// Reads vLLM's queueing stamp of a request a shadow copy lists for the first time: its
    /// first output, soon, takes it away.
    pub fn stamp_queued(&mut self, object: u64, id: u64) {
        if let Some(ns) = self.queued_ns(object).filter(|_| self.still(object, id)) {
            self.queued.insert((object, id), (ns, self.drains));
        }
    }

    /// Whether `object` still is the request whose id string is at `id` (it may have ended
    /// and left its memory to another one).
    fn still(&mut self, object: u64, id: u64) -> bool {
        let id_name = self.names.request_fields[RequestField::Id as usize];
        self.pointer(object, id_name) == Some(id)
    }

    /// vLLM's stamp of `object`'s queueing, if its first event still is it.
    fn queued_ns(&mut self, object: u64) -> Option<u64> {
        let reader = self.reader;
        let names = &crate::inspect::vllm::REQUEST_EVENTS;
        let events = self.pointer(object, names.list)?;
        let first = *reader.list_items(events).ok()?.first()?;
        let kind = reader.attr(first, names.kind).ok()??;
        if reader.int(kind).ok()? != names.queued {
            return None;
        }
        let seconds = reader
            .float(reader.attr(first, names.timestamp).ok()??)
            .ok()?;
        (seconds.is_finite() && seconds > 0.0).then(|| (seconds * 1e9).round() as u64)
    }

    /// What the kernel side copied, decoded with this CPython's layout, and whether its id
    /// is as long as a live read would give (the copy holds [`wire::ID_BYTES`] of the
    /// string: a longer id comes back as the prefix it holds).
    fn copied(&self, facts: &wire::RequestFacts) -> Option<(RequestInfo, bool)> {
        if facts.missing & (1 << wire::FACT_FIELDS) != 0 {
            return None;
        }
        let memory = Snapshot {
            regions: vec![(facts.id, facts.id_bytes.to_vec())],
        };
        let reader = PyReader::new(&memory, self.reader.layout, self.reader.types);
        let layout = self.reader.layout;
        let held = wire::ID_BYTES as u64;
        // All of it; else the characters the copy holds (ASCII, else up to 4 bytes each).
        let (id, chars) = [
            MAX_ID_CHARS,
            held.saturating_sub(layout.unicode_ascii_data),
            held.saturating_sub(layout.unicode_compact_data) / 4,
        ]
        .into_iter()
        .find_map(|max| reader.str_prefix(facts.id, max).ok())?;
        // As much as a live read would give: all of it, or all that is kept of it.
        let read = id.chars().count() as u64;
        let enough = read == chars || read >= MAX_ID_CHARS;
        let field = |i: usize| (facts.missing & (1 << i) == 0).then_some(facts.fields[i]);
        let count = |i: usize| {
            field(i)
                .and_then(|words| small_int(self.reader.layout, words))
                .and_then(|n| u32::try_from(n).ok())
        };
        let info = RequestInfo {
            id: capped_id(id, chars),
            // A float's value is the first word after its header.
            arrival_time_s: field(0).map(|words| f64::from_bits(words[0])),
            max_tokens: count(1),
            prompt_tokens: count(2),
            queued_ns: None,
        };
        Some((info, enough))
    }

    /// The pointer in attribute `name` of `object`. Once a location is known it is the
    /// only one tried: a request freed before this read would otherwise cost a walk of its
    /// class per attribute, the tracer would fall behind, and more requests would be gone.
    fn pointer(&mut self, object: u64, name: &'static str) -> Option<u64> {
        let location = match self.locations.get(name) {
            Some(location) => *location,
            None => {
                let location = self.reader.attr_location(object, name).ok()??;
                *self.locations.entry(name).or_insert(location)
            }
        };
        self.reader.read_location(object, &location).ok().flatten()
    }

    fn attr<T>(
        &mut self,
        object: u64,
        name: &'static str,
        decode: impl Fn(u64) -> Option<T>,
    ) -> Option<T> {
        self.pointer(object, name)
            .filter(|&v| !self.reader.is_none(v))
            .and_then(decode)
    }

    /// The facts read from the live target now, if `object` still is the request whose id
    /// string is at `id` (it may have ended and left its memory to another one).
    fn live(&mut self, object: u64, id: u64) -> Option<RequestInfo> {
        let reader = self.reader;
        let [arrival_time, max_tokens, prompt_tokens] = self.names.facts;
        let count = |v| reader.int(v).ok().and_then(|n| u32::try_from(n).ok());
        let arrival_time_s = self.attr(object, arrival_time, |v| reader.float(v).ok());
        let max_tokens = self.attr(object, max_tokens, count);
        let prompt_tokens = self.attr(object, prompt_tokens, count);
        if !self.still(object, id) {
            return None;
        }
        let (text, chars) = reader.str_prefix(id, MAX_ID_CHARS).ok()?;
        Some(RequestInfo {
            id: capped_id(text, chars),
            arrival_time_s,
            max_tokens,
            prompt_tokens,
            queued_ns: self.queued_ns(object),
        })
    }
}

impl<M: ProcessMemory> RequestSource for LiveRequests<'_, M> {
    fn info(&mut self, object: u64, id: u64) -> Option<RequestInfo> {
        let stamped = self.queued.remove(&(object, id)).map(|(ns, _)| ns);
        let copied = self
            .facts
            .remove(&(object, id))
            .and_then(|(facts, _)| self.copied(&facts));
        // A long id the copy holds only the start of: up to MAX_ID_BYTES from the live
        // request, else the copied start (the request may be gone already).
        let info = match copied {
            // The stamp, if the request still is this one and has not had its first output.
            Some((info, true)) => Some(RequestInfo {
                queued_ns: stamped.or_else(|| {
                    self.still(object, id)
                        .then(|| self.queued_ns(object))
                        .flatten()
                }),
                ..info
            }),
            Some((info, false)) => self.live(object, id).or(Some(info)),
            None => self.live(object, id),
        };
        match &info {
            Some(_) if self.failed.remove(&object) => self.errors -= 1,
            Some(_) => {}
            None => {
                if self.failed.len() >= FAILED_KEPT {
                    self.failed.clear();
                }
                if self.failed.insert(object) {
                    self.errors += 1;
                }
            }
        }
        info
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tracer_common::{
        capture::{Item, ScheduledEntry, SnapshotHeader},
        WatchHit,
    };

    use super::*;
    use crate::{
        inspect::{cpython::layout, vllm::V1_STATE},
        live::{
            correlate::{requests::Requests, Step},
            decode::Decoder,
            plan::Watch,
        },
        schema::rows::StepRow,
    };

    /// xorshift64*: a seeded generator without a dependency.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        /// Small numbers, extremes and anything, as a hostile target could hold.
        pub fn word(&mut self) -> u64 {
            match self.below(6) {
                0 => 0,
                1 => u64::MAX - self.below(16),
                2 | 3 => self.below(300),
                4 => u64::from(u32::MAX) - self.below(4),
                _ => self.next(),
            }
        }
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
        let capture = Capture {
            plan,
            marks: [1, 2, 3],
            per_batch: false,
            layout,
            names: &V1_STATE,
            request_class: 0,
            output_class: None,
            sampled: true,
            idle_at_start: false,
            statuses: [(1, "RUNNING"), (2, "PREEMPTED"), (3, "WAITING")]
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
            budgets: Budgets {
                max_num_seqs: Some(rng.word() as u32),
                max_num_batched_tokens: Some(rng.word() as u32),
                block_size: Some(rng.below(3) as u32),
                kv_blocks_total: Some(rng.word() as u32),
            },
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
            let state = capture.state(&raw);
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
                requests.schedule(&mut Flaky, &step, Some(&state), &capture.budgets, &mut row);
            rows += out.finished.len();
            let after = capture.state(&raw);
            let out = requests.update(&step, token, Some(&after), &mut row);
            rows += out.finished.len();
        }
        rows += requests.finish(t).finished.len();
        assert!(snapshots > 5_000, "{snapshots} snapshots decoded");
        assert!(decoder.counts.malformed > 1_000, "{:?}", decoder.counts);
        assert!(rows > 100, "{rows} request rows");
    }
}
