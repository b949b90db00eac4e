//! The snapshot plan and its output: what the watch program copies out of the target at the
//! hits that end `schedule()` and `update_from_output()`.
//!
//! The scheduler mutates its queues in the next step, so the state at a hit must be copied
//! while the engine thread sits in the trap. The kernel side knows no Python version and no
//! vLLM version: userspace writes a [`Plan`] (struct offsets of this CPython, the addresses of
//! the long-lived objects, and for each attribute its [`Field`]: which entry of the object's
//! key table holds it) and the program only follows it, with O(1) reads per value.

/// Name of the hash map from process id (tgid) to its [`Plan`].
pub const PLANS_MAP: &str = "PLANS";
/// Name of the kernel side's per-CPU work area, an array indexed by CPU number.
pub const SCRATCH_MAP: &str = "SCRATCH";
/// Ring buffer of [`RequestFacts`], and its size (~27 000 records).
pub const FACTS_MAP: &str = "FACTS";
pub const FACTS_BYTES: u32 = 1 << 22;
/// (request, id string, its hash) triples already described by a [`RequestFacts`] record:
/// the hash tells a new request that got both addresses of an ended one. An LRU map, so
/// requests long gone age out.
pub const SEEN_MAP: &str = "SEEN";
pub const SEEN_ENTRIES: u32 = 1 << 15;

/// Most key-table entries a request's fields may span to be read in one go.
pub const MAX_SPAN: usize = 64;
/// Most requests copied per queue per snapshot; longer queues are counted, not copied.
pub const MAX_QUEUE_ITEMS: usize = 512;
/// Unused slot of [`PyOffsets::tstate_frame`].
pub const NO_LINK: u64 = u64::MAX;
/// Most `num_scheduled_tokens` entries copied per snapshot.
pub const MAX_SCHEDULED: usize = 512;
/// Attribute values copied per request.
pub const REQUEST_FIELDS: usize = 5;
/// How this CPython stores instance attributes: picks the lookup path of the program.
pub mod storage {
    /// A dict pointer at `tp_dictoffset` (3.10, and classes without managed dicts).
    pub const DICT_OFFSET: u64 = 0;
    /// 3.11: dict pointer at obj−24, split values pointer at obj−32.
    pub const MANAGED_311: u64 = 1;
    /// 3.12: one tagged word at obj−24: values (low bit set) or dict.
    pub const TAGGED_312: u64 = 2;
    /// 3.13+: dict pointer at obj−24, else values inline at obj + `tp_basicsize`.
    pub const INLINE_313: u64 = 3;
}

/// What a [`Source`] holds.
pub mod container {
    /// A `list`: copy its item pointers.
    pub const LIST: u64 = 0;
    /// A `collections.deque` (or subclass): copy its items left to right.
    pub const DEQUE: u64 = 1;
    /// A value: copy its 16 bytes after the object header (an `int`'s size word and digits).
    pub const VALUE: u64 = 2;
}

/// CPython struct offsets the program needs (bytes; from the layout tables).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyOffsets {
    /// One of [`storage`].
    pub storage: u64,
    /// 1 for 3.10's dict keys (`dk_size`, index width from the size), 0 for 3.11+'s log2 fields.
    pub old_dict_keys: u64,
    pub object_type: u64,
    pub var_size: u64,
    /// A `str`'s cached hash (computed once a request id is a dict key).
    pub str_hash: u64,
    pub list_items: u64,
    pub type_basicsize: u64,
    pub type_dictoffset: u64,
    pub type_flags: u64,
    /// 3.13+: `Py_TPFLAGS_INLINE_VALUES` (0 before).
    pub type_inline_flag: u64,
    pub heaptype_cached_keys: u64,
    pub dict_keys: u64,
    pub dict_values: u64,
    /// 3.11+: `dk_log2_index_bytes`; 3.10: `dk_size`.
    pub keys_index_size: u64,
    /// 3.11+: `dk_kind` (0 general, entries of 24 bytes; else 16); unused on 3.10.
    pub keys_kind: u64,
    pub keys_nentries: u64,
    pub keys_indices: u64,
    /// Where `values[0]` sits in a `PyDictValues`.
    pub values_items: u64,
    /// 3.13+: the `valid` byte of inline values.
    pub values_valid: u64,
    pub deque_leftblock: u64,
    pub deque_leftindex: u64,
    /// Links from the thread state to the current frame; [`NO_LINK`] ends the path (0 is
    /// a real offset: 3.12's `cframe->current_frame`).
    pub tstate_frame: [u64; 2],
    pub frame_localsplus: u64,
    /// Tag bits of a `localsplus` entry (3.14's `_PyStackRef`), cleared for the pointer.
    pub stackref_tag_bits: u64,
}

/// An attribute of an object: the entry of its key table (the class's shared keys, or the
/// instance's own dict keys) that holds `key`, the attribute's interned name.
///
/// Instances of a class insert their attributes in the same order, so the index found on
/// one live instance (or in the class's cached keys) holds for all; the program checks the
/// entry's key before it trusts the value, and reports the field missing otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Field {
    /// The interned `str` address (0: not planned).
    pub key: u64,
    pub index: u64,
}

/// A container the program reads from a long-lived object's attribute.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// The object holding the attribute (0: not planned).
    pub owner: u64,
    pub field: Field,
    /// The value's expected type object: anything else is a read error.
    pub ty: u64,
    /// One of [`container`].
    pub container: u64,
}

/// Everything the program needs for one traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub py: PyOffsets,
    /// Watched addresses whose hits take a snapshot (0 = unused). The first copies every
    /// queued request's fields and the step's scheduled tokens; the second the scheduled
    /// tokens and which requests each queue holds (items with no fields); the last (after
    /// the update) only which requests each queue still holds, the KV count and vLLM's stamp
    /// of the outputs: what the outputs were, the next step's first snapshot shows.
    pub snapshot_at: [u64; 3],
    pub running: Source,
    pub waiting: Source,
    /// The KV block pool's free count (an `int`).
    pub kv_free: Source,
    /// The request class: queue items of another type get no fields.
    pub request_type: u64,
    pub request_fields: [Field; REQUEST_FIELDS],
    /// Entries `[lo, hi)` of a request's key table that hold all of `request_fields`: read in
    /// one go per request (at most [`MAX_SPAN`] entries; `[0, 0]`: field by field).
    pub request_span: [u64; 2],
    /// Bit i set: field i is a pointer to follow (copy 16 bytes after its header); clear:
    /// copy the pointer itself (identity: enum members, strings).
    pub request_deref: u64,
    /// Which of `request_fields` is the id `str` (`u64::MAX`: none, so no [`RequestFacts`]).
    pub id_field: u64,
    /// Attributes copied into [`RequestFacts`], followed like the deref'ed fields.
    pub fact_fields: [Field; FACT_FIELDS],
    /// The engine thread's `PyThreadState`, to find the step's frame.
    pub tstate: u64,
    /// Index in the step frame's `localsplus` of `scheduler_output` (`u64::MAX`: none).
    pub output_local: u64,
    /// `SchedulerOutput.num_scheduled_tokens`, and the `dict` type it must have.
    pub output_scheduled: Field,
    pub dict_type: u64,
    /// `[first, end)` of the interpreter's array of small ints (−5 to 256, one object each,
    /// immutable): an `int` there needs no read (`[0, 0]`: unknown).
    pub small_ints: [u64; 2],
    /// Nonzero: the first snapshot is a shadow one ([`snap::SHADOW`]): which requests each
    /// queue holds and the step's frame, no fields and no scheduled tokens; userspace reads
    /// those from the target while the engine thread executes the batch, off that thread.
    pub shadow: u64,
    /// vLLM's stamp of the step's outputs, copied by the snapshot after the update.
    pub outputs: OutputsStamp,
    /// vLLM's stamp of a request's queueing, copied into its [`RequestFacts`].
    pub queued_event: QueuedEvent,
}

/// Where a request keeps vLLM's stamp of its queueing: the first item of its `events` list
/// (emptied at its first output, which may come before userspace could read it), an object
/// whose `kind` member is the event type (an enum member) and `stamp` member a `float`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The request's `events` attribute (`key` 0: not planned).
    pub events: Field,
    /// Offsets of the event's members in an instance.
    pub kind: u64,
    pub stamp: u64,
}

/// Where vLLM stamps a step's outputs (`EngineCoreOutputs.timestamp`, its `time.monotonic()`
/// when it built them: the first-token and last-token times of its request stats). At the
/// hit that ends the update, the dict `update_from_output()` returned is the step frame's
/// only value on its stack: `localsplus[slot]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputsStamp {
    /// Index in `localsplus` of the value stack's first slot (`u64::MAX`: not planned).
    pub slot: u64,
    /// The outputs' class: a dict value of another type gives no stamp.
    pub class: u64,
    /// Offset in an instance of the `float` timestamp (a `__slots__` member).
    pub member: u64,
}

/// Flags of a [`SnapshotHeader`] (bits).
pub mod snap {
    /// The running list was read.
    pub const RUNNING: u32 = 1 << 0;
    pub const WAITING: u32 = 1 << 1;
    pub const KV_FREE: u32 = 1 << 2;
    pub const SCHEDULED: u32 = 1 << 3;
    /// A shadow snapshot ([`super::Plan::shadow`]): the fields are for userspace to read.
    pub const SHADOW: u32 = 1 << 4;
    /// A shadow snapshot that does not count (its reads ended after the engine thread moved
    /// on, or failed): emptied, only its header's `copy_ns` stays.
    pub const DROPPED: u32 = 1 << 5;
    /// The queues' items are request addresses (`u64`s), not [`super::Item`]s: a copy
    /// without fields.
    pub const COMPACT: u32 = 1 << 6;
    /// [`super::SnapshotHeader::outputs_stamp`] holds vLLM's stamp of the step's outputs.
    pub const OUTPUTS: u32 = 1 << 7;
    /// A chain link or table could not be read (freed, resized, not what the plan says).
    pub const READ_ERROR: u32 = 1 << 8;
}

/// Follows a [`crate::WatchHit`] in the same record when the hit took a snapshot; then
/// `n_running + n_waiting` [`Item`]s (or their addresses, [`snap::COMPACT`]) and
/// `n_scheduled` [`ScheduledEntry`]s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// [`snap`] bits.
    pub flags: u32,
    pub n_running: u32,
    /// True lengths of the queues (more than copied when over [`MAX_QUEUE_ITEMS`]).
    pub running_len: u32,
    pub n_waiting: u32,
    pub waiting_len: u32,
    pub n_scheduled: u32,
    /// 16 bytes after the header of the free-block count (an `int`).
    pub kv_free: [u64; 2],
    /// How long the copy held the engine thread (from the hit's stamp to the record's end):
    /// the tracer's own time, which the phases leave out.
    pub copy_ns: u64,
    /// The step function's frame at the hit (shadow snapshots; 0 otherwise): where userspace
    /// finds the `scheduler_output` local once the step has stored it.
    pub frame: u64,
    /// The bits of the `f64` seconds vLLM stamped the step's outputs with ([`snap::OUTPUTS`]).
    pub outputs_stamp: u64,
}

/// One request of a queue.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Item {
    /// The `Request` object's address.
    pub object: u64,
    /// Bit i set: field i was not found (attribute missing or table unreadable).
    pub missing: u64,
    /// Per field: `[pointer, 0]` or the 16 bytes after the pointed-to object's header.
    pub fields: [[u64; 2]; REQUEST_FIELDS],
}

impl Item {
    /// A request with no field copied (yet).
    #[inline(always)]
    pub fn bare(object: u64) -> Self {
        Self {
            object,
            missing: (1 << REQUEST_FIELDS) - 1,
            fields: [[0; 2]; REQUEST_FIELDS],
        }
    }
}

/// Bytes of a request id `str` copied from its start: the header and, on every supported
/// CPython, at least 80 characters of a compact ASCII string.
pub const ID_BYTES: usize = 128;
/// Request attributes read once, when the kernel side first lists a request
/// (`arrival_time`, `max_tokens`, `num_prompt_tokens`).
pub const FACT_FIELDS: usize = 3;

/// What a request is called and when it came, copied at the first snapshot that lists it
/// (a record of its own ring): a request may be gone before userspace could read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    pub object: u64,
    /// Address of its id `str` (the snapshot items' id field).
    pub id: u64,
    /// Bit i set: `fields[i]` was not copied; bit [`FACT_FIELDS`]: `id_bytes` was not; bit
    /// [`FACT_FIELDS`] + 1: `first_event` was not.
    pub missing: u64,
    /// The 16 bytes after each pointed-to object's header (a float's value, an int's digits).
    pub fields: [[u64; 2]; FACT_FIELDS],
    /// The request's first event ([`QueuedEvent`]): its type object and its timestamp's bits.
    pub first_event: [u64; 2],
    pub id_bytes: [u8; ID_BYTES],
}

/// One `num_scheduled_tokens` entry: request id string → token count (an `int`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduledEntry {
    pub key: u64,
    /// The `int` object: one of the interpreter's small ints ([`Plan::small_ints`]) stands
    /// for its value, and `value` is then not read (zero).
    pub object: u64,
    /// The 16 bytes after the int's header.
    pub value: [u64; 2],
}

/// The largest record: a hit, its snapshot, full queues and a full scheduled dict.
pub const MAX_RECORD: usize = size_of::<crate::WatchHit>()
    + size_of::<SnapshotHeader>()
    + 2 * MAX_QUEUE_ITEMS * size_of::<Item>()
    + MAX_SCHEDULED * size_of::<ScheduledEntry>();

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `repr(C)` with only integer fields laid out without padding
    // (u64s, u32s in pairs); any bit pattern is valid.
    unsafe impl aya::Pod for PyOffsets {}
    unsafe impl aya::Pod for Field {}
    unsafe impl aya::Pod for Source {}
    unsafe impl aya::Pod for Plan {}
    unsafe impl aya::Pod for SnapshotHeader {}
    unsafe impl aya::Pod for Item {}
    unsafe impl aya::Pod for ScheduledEntry {}
    unsafe impl aya::Pod for RequestFacts {}
}
