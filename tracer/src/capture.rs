//! Snapshots of the scheduler: the plan the watch program follows at the hits after
//! `schedule()` and `update_from_output()`, and the typed state its copies decode into.
//!
//! The plan names objects by address and attributes by the address of their interned name
//! (the `str` object every instance dict of the class uses as its key), so the kernel side
//! needs no Python: it scans key tables for a pointer. Everything per version comes from the
//! CPython layout row and the vLLM name row.

use std::collections::HashMap;

use tracer_common::capture::{self as wire, container, storage, Chain, Item, Plan, PyOffsets};

use crate::{
    cpython::{
        layout::{DictKeysSize, LongSize, ManagedDict},
        Layout, PyReader, ReadError,
    },
    correlate::requests::{RequestInfo, RequestSource},
    decode::RawSnapshot,
    memory::ProcessMemory,
    plan::{Mark, ProbePlan},
    resolve::Resolved,
    vllm::{RequestField, StateNames},
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

/// The plan, and what is needed to read its copies back.
#[derive(Clone, Debug)]
pub struct Capture {
    pub plan: Plan,
    layout: &'static Layout,
    /// `RequestStatus` members by address.
    statuses: HashMap<u64, String>,
    /// Scheduler budgets (constant for an engine's life).
    pub budgets: Budgets,
}

/// The scheduler's limits that explain why requests wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Budgets {
    pub max_num_seqs: Option<u32>,
    pub max_num_batched_tokens: Option<u32>,
    pub block_size: Option<u32>,
    /// Free KV blocks when the trace started, plus those in use by then: the pool's size
    /// is not an attribute in every version, so it is the free count of an idle engine.
    pub kv_blocks_total: Option<u32>,
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
    let mut tstate_frame = [0; 2];
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
    }
}

/// Most classes of an MRO searched for an attribute name.
const MAX_MRO: usize = 32;

fn word<M: ProcessMemory>(reader: &PyReader<M>, addr: u64) -> Result<u64, ReadError> {
    reader
        .mem
        .read_u64(addr)
        .map_err(|source| ReadError::Memory { addr, source })
}

/// The address of the interned `str` `name` among a code object's identifiers (attribute,
/// parameter and local names).
fn interned_in_code<M: ProcessMemory>(
    reader: &PyReader<M>,
    code: u64,
    name: &str,
) -> Result<Option<u64>, ReadError> {
    let layout = reader.layout;
    for tuple in [layout.code_names, layout.code_localsplusnames] {
        for key in reader.tuple(word(reader, code + tuple)?)? {
            if reader.str(key).is_ok_and(|k| k == name) {
                return Ok(Some(key));
            }
        }
    }
    Ok(None)
}

/// The address of the interned `str` `name` among the identifiers of the methods of
/// `class` and its bases: the key its instances' attribute tables use (identifiers are
/// interned, so `self.name = …` stores that very object).
fn interned_in_class<M: ProcessMemory>(
    reader: &PyReader<M>,
    class: u64,
    name: &str,
) -> Result<Option<u64>, ReadError> {
    let mro = reader.tuple(word(reader, class + reader.layout.type_mro)?)?;
    for class in mro.into_iter().take(MAX_MRO) {
        let dict = word(reader, class + reader.layout.type_dict)?;
        if dict == 0 {
            continue;
        }
        for (_, value) in reader.dict_items(dict)? {
            let Ok(code) = reader.function_code(value) else {
                continue;
            };
            if let Some(addr) = interned_in_code(reader, code, name)? {
                return Ok(Some(addr));
            }
        }
    }
    Ok(None)
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

/// Follows `names` from `obj`, returning each link's interned key; the object at the end.
fn chain<M: ProcessMemory>(
    reader: &PyReader<M>,
    obj: u64,
    names: &[&str],
    end: u64,
) -> Result<(Chain, u64), CaptureError> {
    let mut chain = Chain {
        container: end,
        ..Chain::default()
    };
    let mut current = obj;
    for (link, name) in names.iter().enumerate() {
        let missing = || CaptureError::Missing {
            what: format!("scheduler attribute {name}"),
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        let class = word(reader, current + reader.layout.object_type)?;
        chain.keys[link] = interned_in_class(reader, class, name)?.ok_or_else(missing)?;
        current = reader.attr(current, name)?.ok_or_else(missing)?;
    }
    chain.links = names.len() as u64;
    Ok((chain, current))
}

impl Capture {
    /// Plans snapshots at the hits after `schedule()` and `update_from_output()`.
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
        let (running, _) = chain(reader, scheduler, names.running, container::LIST)?;
        let waiting_kind = if names.waiting_is_deque {
            container::DEQUE
        } else {
            container::LIST
        };
        let (waiting, _) = chain(reader, scheduler, names.waiting, waiting_kind)?;
        let (kv_free, free_now) = chain(reader, scheduler, names.kv_free, container::VALUE)?;

        let request_class = class(reader, modules, names.request_class)?.ok_or_else(|| {
            CaptureError::Missing {
                what: "the request class".into(),
                names: vec![format!("{}.{}", names.request_class.0, names.request_class.1)],
            }
        })?;
        let mut request_fields = [0; wire::REQUEST_FIELDS];
        for (slot, name) in request_fields.iter_mut().zip(names.request_fields) {
            // A field this version lacks stays 0: not copied, reported missing.
            *slot = interned_in_class(reader, request_class, name)?.unwrap_or(0);
        }
        let request_deref = RequestField::FOLLOWED
            .iter()
            .fold(0, |mask, field| mask | 1 << *field as u64);

        let output_local = reader
            .local_index(resolved.step.addr, names.output_local)?
            .unwrap_or(u64::MAX);
        let output_scheduled = match class(reader, modules, names.output_class)? {
            Some(class) => interned_in_class(reader, class, names.output_scheduled)?.unwrap_or(0),
            None => 0,
        };

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
            let value = reader.attr(scheduler, name).ok()??;
            u32::try_from(reader.int(value).ok()?).ok()
        };
        let snapshot_at = |mark| {
            probes
                .watches
                .iter()
                .find(|w| w.mark == mark)
                .map_or(0, |w| w.addr)
        };
        let plan = Plan {
            py: offsets(reader.layout),
            snapshot_at: [snapshot_at(Mark::ScheduleDone), snapshot_at(Mark::UpdateDone)],
            scheduler,
            running,
            waiting,
            kv_free,
            request_fields,
            request_deref,
            tstate: resolved.tstate,
            output_local,
            output_scheduled,
        };
        Ok(Self {
            plan,
            layout: reader.layout,
            statuses,
            budgets: Budgets {
                max_num_seqs: budget(names.max_num_seqs),
                max_num_batched_tokens: budget(names.max_num_batched_tokens),
                block_size: budget(names.block_size),
                kv_blocks_total: reader
                    .int(free_now)
                    .ok()
                    .and_then(|n| u32::try_from(n).ok()),
            },
        })
    }

    /// An `int` from the 16 bytes after its header (size word, then two 30-bit digits);
    /// `None` for values beyond two digits (never a token count).
    fn int(&self, words: [u64; 2]) -> Option<i64> {
        let (digits, negative) = match self.layout.long_size {
            LongSize::ObSize => {
                let size = words[0] as i64;
                (size.unsigned_abs(), size < 0)
            }
            LongSize::Tag { non_size_bits, .. } => {
                (words[0] >> non_size_bits, words[0] & 3 == 2)
            }
        };
        let shift = self.layout.long_shift;
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

    fn request(&self, item: &Item) -> RequestState {
        let field = |f: RequestField| {
            (item.missing & (1 << f as u64) == 0 && self.plan.request_fields[f as usize] != 0)
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
            preemptions: count(RequestField::Preemptions),
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
                    .filter_map(|e| Some((e.key, u32::try_from(self.int(e.value)?).ok()?)))
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
    pub preemptions: Option<i32>,
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

/// Reads each request's immutable facts from the live target, once per request.
pub struct LiveRequests<'r, M: ProcessMemory> {
    reader: &'r PyReader<'r, M>,
    names: &'static StateNames,
    /// Facts that could not be read (the request was freed first, or has no such field).
    pub errors: u64,
}

impl<'r, M: ProcessMemory> LiveRequests<'r, M> {
    pub fn new(reader: &'r PyReader<'r, M>, names: &'static StateNames) -> Self {
        Self {
            reader,
            names,
            errors: 0,
        }
    }

    fn attr<T>(&mut self, object: u64, name: &str, decode: impl Fn(u64) -> Option<T>) -> Option<T> {
        let value = self
            .reader
            .attr(object, name)
            .ok()
            .flatten()
            .filter(|&v| !self.reader.is_none(v))
            .and_then(decode);
        if value.is_none() {
            self.errors += 1;
        }
        value
    }
}

impl<M: ProcessMemory> RequestSource for LiveRequests<'_, M> {
    fn info(&mut self, object: u64, id: u64) -> RequestInfo {
        let reader = self.reader;
        let count = |v| reader.int(v).ok().and_then(|n| u32::try_from(n).ok());
        let id = match reader.str(id) {
            Ok(id) => id,
            Err(_) => {
                self.errors += 1;
                format!("request@{object:#x}")
            }
        };
        RequestInfo {
            id,
            prompt_tokens: self.attr(object, self.names.prompt_tokens, count),
            arrival_time_s: self.attr(object, self.names.arrival_time, |v| reader.float(v).ok()),
            max_tokens: self.attr(object, self.names.max_tokens, count),
        }
    }
}
