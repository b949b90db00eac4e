//! A snapshot's raw words typed into a [`SchedulerState`]: request fields by the plan's
//! positions, `RequestStatus` members by address, ints by the CPython layout.

use std::collections::HashMap;

use tracer_common::capture::{self as wire, Item, Plan};

use crate::{
    inspect::{
        cpython::{layout::LongSize, Layout},
        vllm::RequestField,
    },
    live::decode::RawSnapshot,
};

/// The interpreter's small ints (−5 to 256, one immutable object each, in an array): the
/// smallest and how many, the size of one object. A value in that range is always that
/// object, so the kernel side need not read a decode step's token count.
pub const SMALL_INT_MIN: i64 = -5;
pub const SMALL_INTS: u64 = 262;
pub const SMALL_INT_BYTES: u64 = 32;

/// An `int` from the 16 bytes after its header (size word, then two 30-bit digits);
/// `None` for values beyond two digits (never a token count).
pub fn small_int(layout: &Layout, words: [u64; 2]) -> Option<i64> {
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

/// What a snapshot's words are typed with, besides the plan that copied them.
#[derive(Clone, Debug)]
pub struct Typing {
    pub layout: &'static Layout,
    /// `RequestStatus` members by address.
    pub statuses: HashMap<u64, String>,
}

impl Typing {
    /// Types a snapshot's raw words, copied by `plan`.
    pub fn state(&self, plan: &Plan, raw: &RawSnapshot) -> SchedulerState {
        let flags = raw.header.flags;
        let requests = |items: &[Item]| items.iter().map(|i| self.request(plan, i)).collect();
        SchedulerState {
            running: (flags & wire::snap::RUNNING != 0).then(|| requests(&raw.running)),
            waiting: (flags & wire::snap::WAITING != 0).then(|| requests(&raw.waiting)),
            running_len: raw.header.running_len,
            waiting_len: raw.header.waiting_len,
            kv_free: (flags & wire::snap::KV_FREE != 0)
                .then(|| self.int(raw.header.kv_free))
                .flatten()
                .and_then(|n| u32::try_from(n).ok()),
            scheduled: (flags & wire::snap::SCHEDULED != 0).then(|| {
                raw.scheduled
                    .iter()
                    .filter_map(|e| Some((e.key, u32::try_from(self.tokens(plan, e)?).ok()?)))
                    .collect()
            }),
            read_error: flags & wire::snap::READ_ERROR != 0,
        }
    }

    /// An `int` from the 16 bytes after its header.
    fn int(&self, words: [u64; 2]) -> Option<i64> {
        small_int(self.layout, words)
    }

    /// A scheduled-tokens entry's count: by its object's place among the small ints, else
    /// from its words.
    fn tokens(&self, plan: &Plan, entry: &wire::ScheduledEntry) -> Option<i64> {
        let [first, end] = plan.small_ints;
        if (first..end).contains(&entry.object) {
            let index = (entry.object - first) / SMALL_INT_BYTES;
            return Some(index as i64 + SMALL_INT_MIN);
        }
        self.int(entry.value)
    }

    fn request(&self, plan: &Plan, item: &Item) -> RequestState {
        let field = |f: RequestField| {
            (item.missing & (1 << f as u64) == 0 && plan.request_fields[f as usize].key != 0)
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
}
