//! Each request's immutable facts (id, arrival, `max_tokens`, prompt length) and vLLM's stamp
//! of its queueing: copied once per request by the kernel side or a shadow copy, else read
//! from the live target. [`crate::live::correlate`] asks for them through [`RequestSource`].

use std::collections::{HashMap, HashSet, VecDeque};

use tracer_common::{capture as wire, parse};

use super::state::small_int;
use crate::inspect::{
    cpython::{AttrLocation, PyReader},
    memory::{ProcessMemory, Snapshot},
    vllm::{RequestField, StateNames},
};

/// What is read once per request, from the live request object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestInfo {
    pub id: String,
    pub prompt_tokens: Option<u32>,
    pub arrival_time_s: Option<f64>,
    pub max_tokens: Option<u32>,
    /// vLLM's stamp of the request's queueing (CLOCK_MONOTONIC ns), where it was still there
    /// to read.
    pub queued_ns: Option<u64>,
}

/// Reads a request's immutable facts by address (the live process, or a table in tests).
pub trait RequestSource {
    /// `None` when the id cannot be read (yet): asked again when the request is listed
    /// with an id later.
    fn info(&mut self, object: u64, id: u64) -> Option<RequestInfo>;
}

/// Most bytes of a request id kept. vLLM takes ids from the client (`X-Request-Id`), and
/// every events.csv and queues.csv row repeats one: 60 kB ids would make gigabytes of output.
pub const MAX_ID_BYTES: usize = 256;

/// Characters of an id read from the target: enough for [`MAX_ID_BYTES`] bytes.
pub const MAX_ID_CHARS: u64 = MAX_ID_BYTES as u64;

/// `text`, the first characters of an id `total_chars` long, cut to at most
/// [`MAX_ID_BYTES`] bytes (at a character boundary) and marked `…[+N chars]` when
/// anything was cut.
pub fn capped_id(text: String, total_chars: u64) -> String {
    let mut cut = text.len().min(MAX_ID_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let kept = text[..cut].chars().count() as u64;
    if kept >= total_chars {
        return text;
    }
    format!("{}…[+{} chars]", &text[..cut], total_chars - kept)
}

/// Each request's immutable facts: from the [`wire::RequestFacts`] the kernel side copied
/// when it first listed the request, else read from the live target.
pub struct LiveRequests<'r, M: ProcessMemory> {
    reader: &'r PyReader<'r, M>,
    names: &'static StateNames,
    /// Kernel-side facts not yet asked for.
    facts: ByRequest<wire::RequestFacts>,
    /// vLLM's queueing stamps read while a shadow copy first listed the request, likewise.
    queued: ByRequest<u64>,
    drains: u64,
    /// Where the last request kept each attribute: requests set theirs in the same order, so
    /// the next one is read there in a few reads, not found again by walking its class.
    locations: HashMap<&'static str, AttrLocation>,
    /// Requests whose facts came from neither (freed before the live read), less those
    /// read at a later try.
    pub errors: u64,
    /// Objects counted in `errors`, to uncount them when a later try reads them.
    failed: HashSet<u64>,
    /// The queueing event type's object, once a copied first event was read as it.
    queued_kind: Option<u64>,
}

/// Most objects remembered in [`LiveRequests::failed`]; past it, failures stay counted.
const FAILED_KEPT: usize = 1 << 16;

/// Values by (request object, id string), oldest first, with the drain that brought each. A
/// tracer lagging many steps behind can hold, in one drain, two requests that one after the
/// other had the same object and id string addresses (the allocator reuses both): the first
/// asked for gets the older value.
struct ByRequest<T> {
    values: HashMap<(u64, u64), VecDeque<(T, u64)>>,
}

impl<T> Default for ByRequest<T> {
    fn default() -> Self {
        Self {
            values: HashMap::new(),
        }
    }
}

impl<T> ByRequest<T> {
    fn push(&mut self, key: (u64, u64), value: T, drain: u64) {
        self.values
            .entry(key)
            .or_default()
            .push_back((value, drain));
    }

    fn take(&mut self, key: (u64, u64)) -> Option<T> {
        let queue = self.values.get_mut(&key)?;
        let value = queue.pop_front().map(|(value, _)| value);
        if queue.is_empty() {
            self.values.remove(&key);
        }
        value
    }

    /// Drops the values brought before drain `oldest`.
    fn forget_before(&mut self, oldest: u64) {
        self.values.retain(|_, queue| {
            queue.retain(|(_, drain)| *drain >= oldest);
            !queue.is_empty()
        });
    }
}

/// Drains after which kernel-side facts nobody asked for are dropped (a request listed
/// again after its entry aged out of the kernel's LRU map, already tracked).
const FACTS_KEPT_DRAINS: u64 = 1000;

impl<'r, M: ProcessMemory> LiveRequests<'r, M> {
    pub fn new(reader: &'r PyReader<'r, M>, names: &'static StateNames) -> Self {
        Self {
            reader,
            names,
            facts: ByRequest::default(),
            queued: ByRequest::default(),
            drains: 0,
            locations: HashMap::new(),
            errors: 0,
            failed: HashSet::new(),
            queued_kind: None,
        }
    }

    /// Takes in one record of the facts ring; `false` if it is not one (a build mismatch).
    pub fn learn(&mut self, record: &[u8]) -> bool {
        let Some(facts) = parse::fixed_record::<wire::RequestFacts>(record) else {
            return false;
        };
        self.know(facts);
        true
    }

    /// Ends a drain: forgets facts older than [`FACTS_KEPT_DRAINS`].
    pub fn end_drain(&mut self) {
        self.drains += 1;
        let oldest = self.drains.saturating_sub(FACTS_KEPT_DRAINS);
        self.facts.forget_before(oldest);
        self.queued.forget_before(oldest);
    }

    /// Takes in facts a shadow copy read, as [`LiveRequests::learn`] those of the kernel side.
    pub fn know(&mut self, facts: wire::RequestFacts) {
        self.facts
            .push((facts.object, facts.id), facts, self.drains);
    }

    /// Reads vLLM's queueing stamp of a request a shadow copy lists for the first time: its
    /// first output, soon, takes it away.
    pub fn stamp_queued(&mut self, object: u64, id: u64) {
        if let Some(ns) = self.queued_ns(object).filter(|_| self.still(object, id)) {
            self.queued.push((object, id), ns, self.drains);
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
        stamp_ns(seconds)
    }

    /// vLLM's stamp in the first event the kernel side copied with `facts`, if that event
    /// is the queueing one (its type object, an enum member, lives as long as its class).
    fn copied_stamp(&mut self, facts: &wire::RequestFacts) -> Option<u64> {
        if facts.missing & (1 << (wire::FACT_FIELDS + 1)) != 0 {
            return None;
        }
        let [kind, bits] = facts.first_event;
        if self.queued_kind != Some(kind) {
            if self.reader.int(kind).ok()? != crate::inspect::vllm::REQUEST_EVENTS.queued {
                return None;
            }
            self.queued_kind = Some(kind);
        }
        stamp_ns(f64::from_bits(bits))
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
    /// string is at `id` (it may have ended and left its memory to another one); its
    /// queueing stamp read only where none was taken before (`stamped`).
    fn live(&mut self, object: u64, id: u64, stamped: Option<u64>) -> Option<RequestInfo> {
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
            queued_ns: stamped.or_else(|| self.queued_ns(object)),
        })
    }
}

/// A `time.monotonic()` value in seconds as nanoseconds, if it can be one.
fn stamp_ns(seconds: f64) -> Option<u64> {
    (seconds.is_finite() && seconds > 0.0).then(|| (seconds * 1e9).round() as u64)
}

impl<M: ProcessMemory> RequestSource for LiveRequests<'_, M> {
    fn info(&mut self, object: u64, id: u64) -> Option<RequestInfo> {
        let facts = self.facts.take((object, id));
        // Copied when the request was first listed: its first output may since have
        // taken the stamp away.
        let stamped = self
            .queued
            .take((object, id))
            .or_else(|| facts.as_ref().and_then(|f| self.copied_stamp(f)));
        let copied = facts.and_then(|facts| self.copied(&facts));
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
            Some((info, false)) => self.live(object, id, stamped).or(Some(RequestInfo {
                queued_ns: stamped,
                ..info
            })),
            None => self.live(object, id, stamped),
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
mod tests {
    use super::*;

    /// Two requests that had the same object and id string addresses, listed for the first
    /// time within one drain: each gets its own facts, in the order they were listed (a
    /// lagging tracer named the first after the second and left the second unnamed: 5 of
    /// 30 070 requests in a loaded run, replayed from its records).
    #[test]
    fn reused_addresses_keep_each_requests_facts() {
        let mut by = ByRequest::default();
        by.push((1, 2), "first", 0);
        by.push((1, 2), "second", 0);
        by.push((1, 3), "other", 0);
        assert_eq!(by.take((1, 2)), Some("first"));
        assert_eq!(by.take((1, 2)), Some("second"));
        assert_eq!(by.take((1, 2)), None);
        by.push((1, 2), "old", 3);
        by.push((1, 2), "new", 5);
        by.forget_before(4);
        assert_eq!(by.take((1, 2)), Some("new"));
        assert_eq!(by.take((1, 3)), None, "brought at drain 0, forgotten");
        assert!(by.values.is_empty());
    }

    #[test]
    fn long_ids_are_capped_and_marked() {
        assert_eq!(capped_id("short".into(), 5), "short");
        let long = "x".repeat(MAX_ID_CHARS as usize);
        let capped = capped_id(long, 60_000);
        assert!(capped.starts_with(&"x".repeat(MAX_ID_BYTES)));
        assert!(capped.ends_with("…[+59744 chars]"), "{capped}");
        // Multi-byte characters: cut at a boundary, within the cap.
        let wide = "é".repeat(200);
        let capped = capped_id(wide, 200);
        let kept = capped.split('…').next().unwrap();
        assert!(kept.len() <= MAX_ID_BYTES);
        assert_eq!(kept.chars().count(), 128);
        assert!(capped.ends_with("…[+72 chars]"), "{capped}");
        // What was read is all there is: unchanged.
        assert_eq!(capped_id("é".repeat(100), 100), "é".repeat(100));
    }
}
