//! What a layout row holds: CPython's struct offsets and per-version encodings, as types.
//! The rows themselves are in [`tables`](super::tables).

use crate::inspect::cpython::lines::LineTableFormat;

/// Struct offsets (bytes) of one CPython minor version on x86-64.
/// Field names are `<struct>_<field>` as in CPython's sources.
#[derive(Clone, Debug)]
pub struct Layout {
    pub version: (u8, u8),
    pub runtime_interpreters_head: u64,
    /// `_PyRuntime.main_thread`: the main thread's `pthread_t`.
    pub runtime_main_thread: u64,
    pub interp_threads_head: u64,
    pub interp_modules: u64,
    pub tstate_next: u64,
    pub tstate_thread_id: ThreadId,
    /// Pointer chain from a thread state to its current frame: a `_PyInterpreterFrame`
    /// (through `_PyCFrame` in 3.11 and 3.12, direct from 3.13) or 3.10's `PyFrameObject`.
    pub tstate_current_frame: &'static [u64],
    /// The frame's code object (`f_code`, `f_executable` from 3.13).
    pub frame_code: u64,
    /// The calling frame (`previous`; 3.10: `f_back`).
    pub frame_previous: u64,
    /// The frame's local variables, cells and free variables, then its value stack.
    pub frame_localsplus: u64,
    /// Tag bits of the `_PyStackRef`s a frame holds (`f_executable` and `localsplus`, 3.14:
    /// `Py_TAG_BITS`), cleared to get the object pointer; 0 where they are plain pointers.
    pub stackref_tag_bits: u64,
    pub code_name: u64,
    /// `co_qualname` (3.11+; 3.10 code objects have only `co_name`).
    pub code_qualname: Option<u64>,
    pub code_bytecode: Bytecode,
    /// Names of the frame's `localsplus` slots (`co_localsplusnames`; 3.10: `co_varnames`).
    pub code_localsplusnames: u64,
    /// How many there are, a C `int` (`co_nlocalsplus`; 3.10: `co_nlocals`).
    pub code_nlocalsplus: u64,
    pub code_names: u64,
    /// A C `int`.
    pub code_firstlineno: u64,
    /// A `bytes` object.
    pub code_linetable: u64,
    pub code_linetable_format: LineTableFormat,
    pub bytes_data: u64,
    pub type_name: u64,
    pub type_basicsize: u64,
    pub type_dictoffset: u64,
    pub type_dict: u64,
    pub type_flags: u64,
    pub type_base: u64,
    pub type_mro: u64,
    pub heaptype_cached_keys: u64,
    /// Where instances of classes with `Py_TPFLAGS_MANAGED_DICT` keep their attributes.
    pub instance_dict: ManagedDict,
    /// `Py_TPFLAGS_MANAGED_DICT` (0 where the version has none).
    pub tpflags_managed_dict: u64,
    pub dict_keys: u64,
    pub dict_values: u64,
    pub dict_used: u64,
    /// Where a split table's insertion order is kept.
    pub values_order: ValuesOrder,
    /// Offset of `values[]` in `PyDictValues` (the header before it is 3.13's).
    pub values_items: u64,
    pub dictkeys_size: DictKeysSize,
    /// Size of a `dk_entries` element by `dk_kind` (general entries carry the hash; 3.10 has
    /// only those).
    pub dict_entry_size_by_kind: [u64; 3],
    pub dictkeys_nentries: u64,
    pub dictkeys_indices: u64,
    pub unicode_length: u64,
    /// `PyASCIIObject.hash`: the string's cached hash, -1 until first computed.
    pub unicode_hash: u64,
    pub unicode_state: u64,
    /// Where the characters of a compact ASCII string start (`sizeof(PyASCIIObject)`).
    pub unicode_ascii_data: u64,
    /// Where the characters of other compact strings start (`sizeof(PyCompactUnicodeObject)`).
    pub unicode_compact_data: u64,
    pub func_code: u64,
    pub module_dict: u64,
    pub tuple_items: u64,
    pub list_items: u64,
    pub long_size: LongSize,
    pub long_digits: u64,
    /// Bits per digit (`PyLong_SHIFT`); digits are 32-bit words.
    pub long_shift: u64,
    pub float_value: u64,
    pub set_used: u64,
    pub set_mask: u64,
    pub set_table: u64,
    pub set_entry_size: u64,
    /// The entry's key is at 0.
    pub set_entry_hash: u64,
    pub deque: Deque,
    pub memberdescr_member: u64,
    pub memberdef_type: u64,
    pub memberdef_offset: u64,
    /// `T_OBJECT_EX`, the member type of `__slots__` entries.
    pub member_object_ex: u64,
    pub var_size: u64,
    pub object_type: u64,
    /// Where the interpreter states offsets itself (3.13+).
    pub debug_offsets: Option<DebugOffsets>,
    pub opcodes: &'static Opcodes,
}

/// The layout of `_Py_DebugOffsets`, the table of offsets at the start of `_PyRuntime`
/// (3.13+) that the interpreter fills in for out-of-process tools.
#[derive(Clone, Copy, Debug)]
pub struct DebugOffsets {
    /// Where `PY_VERSION_HEX` is, after the 8-byte cookie [`DEBUG_COOKIE`].
    ///
    /// [`DEBUG_COOKIE`]: super::check::DEBUG_COOKIE
    pub version: u64,
    /// Where the free-threaded build flag is.
    pub free_threaded: u64,
    /// `(Layout field, offset in _Py_DebugOffsets of the same number)`.
    pub fields: &'static [(&'static str, u64)],
}

/// How a thread state names its OS thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadId {
    /// `native_thread_id`, the kernel tid (3.11+).
    Native(u64),
    /// Only `thread_id`, the `pthread_t` (3.10): the tid is found in glibc's thread
    /// descriptor at the address the `pthread_t` holds.
    Pthread(u64),
}

/// Where a code object's instructions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bytecode {
    /// Inline in the code object at this offset (`co_code_adaptive`, 3.11+), possibly
    /// specialized; the object's `ob_size` counts 2-byte code units.
    Adaptive(u64),
    /// In the `bytes` object this field points to (`co_code`, 3.10).
    Bytes(u64),
}

/// Where an instance keeps its attributes when its class has `Py_TPFLAGS_MANAGED_DICT`
/// (offsets relative to the object's address; negative ones are in the pre-header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedDict {
    /// 3.10: no managed dicts; only `tp_dictoffset`.
    None,
    /// 3.11: a dict pointer, and a `PyDictValues` pointer used while there is no dict.
    Separate { dict: i64, values: i64 },
    /// 3.12: one word, a dict pointer, or (low bit set) a `PyDictValues` pointer less
    /// `values_bias`.
    Tagged {
        dict_or_values: i64,
        values_bias: u64,
    },
    /// 3.13+: a dict pointer; classes with `flag` (`Py_TPFLAGS_INLINE_VALUES`) also hold the
    /// values inline at `tp_basicsize`, in use while the header's byte `valid` is non-zero.
    Inline { dict: i64, flag: u64, valid: u64 },
}

/// Where a split table's insertion order lives (indices into the shared keys, one byte each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValuesOrder {
    /// 3.10: a split table is always in key order.
    KeyOrder,
    /// 3.11, 3.12: bytes before `values[]`: `[-1]` prefix size, `[-2]` count, then
    /// `[-3 - i]` the i-th inserted index.
    Prefix,
    /// 3.13+: after `values[capacity]`; `capacity` and `size` are header bytes.
    AfterValues { capacity: u64, size: u64 },
}

/// How big a dict's keys table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DictKeysSize {
    /// 3.11+: byte fields: log2 of the slot count, log2 of the index bytes, entry kind.
    Log2 {
        log2_size: u64,
        log2_index_bytes: u64,
        kind: u64,
    },
    /// 3.10: `dk_size`, the slot count; indices are 1, 2, 4 or 8 bytes as it needs.
    Size(u64),
}

/// How an int stores its sign and digit count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongSize {
    /// Up to 3.11: `ob_size`, signed, `|ob_size|` digits.
    ObSize,
    /// 3.12+: `lv_tag`: digits `tag >> non_size_bits`, sign `tag & 3` (0 positive, 1 zero,
    /// 2 negative).
    Tag { offset: u64, non_size_bits: u64 },
}

/// `collections.deque`: a doubly linked list of fixed-size blocks (Modules/_collectionsmodule.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deque {
    pub leftblock: u64,
    pub rightblock: u64,
    pub leftindex: u64,
    pub rightindex: u64,
    pub block_len: u64,
    pub block_data: u64,
    pub block_rightlink: u64,
}

/// Bytecode facts of one CPython minor version.
#[derive(Debug)]
pub struct Opcodes {
    pub resume: Option<u8>,
    pub extended_arg: Option<u8>,
    pub load_attr: Option<u8>,
    pub load_method: Option<u8>,
    /// Every instruction that performs a call.
    pub calls: &'static [u8],
    /// From 3.12 `LOAD_ATTR`'s oparg carries a flag in its low bit; the name index is above it.
    pub load_attr_name_shift: u8,
    /// Specialized (quickened) opcode → its base instruction.
    pub deopt: [u8; 256],
    /// Inline cache entries (2-byte units) after each base instruction.
    pub caches: [u8; 256],
}
