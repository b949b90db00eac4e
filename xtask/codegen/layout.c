/* Prints the CPython struct offsets the tracer needs, as a Rust `Layout` literal.
 * Built by `cargo xtask codegen` against each interpreter's installed headers (internal
 * ones included), so the numbers are the compiler's, not ours. Where a struct is private
 * to a .c file (3.10's dict keys, the deque) its definition is copied here, under a version
 * test, from that version's sources; the live tests (tests/cpython.rs) check the result. */
#define Py_BUILD_CORE 1
/* The header's inline accessors assert on the type of the object; we call them on a dummy. */
#define NDEBUG 1
#include "Python.h"
#include "structmember.h"
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#if PY_VERSION_HEX >= 0x030B0000
#include "internal/pycore_frame.h"
#include "internal/pycore_dict.h"
#include "internal/pycore_code.h"
#include "internal/pycore_object.h"
#else
#include "frameobject.h"
#endif
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX < 0x030C0000
/* Objects/moduleobject.c keeps this private before 3.12; its first field is stable. */
typedef struct { PyObject_HEAD PyObject *md_dict; } PyModuleObject;
#else
#include "internal/pycore_moduleobject.h"
#endif
#if PY_VERSION_HEX < 0x030B0000
/* 3.10: Objects/dict-common.h (not installed). */
typedef struct { Py_hash_t me_hash; PyObject *me_key; PyObject *me_value; } PyDictKeyEntry;
typedef Py_ssize_t (*dict_lookup_func)(PyDictObject *, PyObject *, Py_hash_t, PyObject **);
struct _dictkeysobject {
  Py_ssize_t dk_refcnt;
  Py_ssize_t dk_size;
  dict_lookup_func dk_lookup;
  Py_ssize_t dk_usable;
  Py_ssize_t dk_nentries;
  char dk_indices[];
};
#endif
/* Modules/_collectionsmodule.c (private, the same from 3.10 to 3.14). */
#define BLOCKLEN 64
typedef struct BLOCK {
  struct BLOCK *leftlink;
  PyObject *data[BLOCKLEN];
  struct BLOCK *rightlink;
} block;
typedef struct {
  PyObject_VAR_HEAD
  block *leftblock;
  block *rightblock;
  Py_ssize_t leftindex;
  Py_ssize_t rightindex;
} dequeobject;

#define F(name, expr) printf("        %s: %zu,\n", name, (size_t)(expr))
#define I(name, expr) printf("        %s: %td,\n", name, (ptrdiff_t)(expr))

int main(void) {
  /* A dummy object for the header's pointer-arithmetic accessors. */
  static char buffer[256];
  PyObject *obj = (PyObject *)(buffer + 128);
  printf("    Layout {\n        version: (%d, %d),\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
  F("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
  F("runtime_main_thread", offsetof(_PyRuntimeState, main_thread));
#if PY_VERSION_HEX >= 0x030B0000
  F("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#else
  F("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
#if PY_VERSION_HEX >= 0x030C0000
  F("interp_modules", offsetof(PyInterpreterState, imports.modules));
#else
  F("interp_modules", offsetof(PyInterpreterState, modules));
#endif
  F("tstate_next", offsetof(PyThreadState, next));
#if PY_VERSION_HEX >= 0x030B0000
  printf("        tstate_thread_id: ThreadId::Native(%zu),\n",
         offsetof(PyThreadState, native_thread_id));
#else
  printf("        tstate_thread_id: ThreadId::Pthread(%zu),\n", offsetof(PyThreadState, thread_id));
#endif
#if PY_VERSION_HEX >= 0x030D0000
  printf("        tstate_current_frame: &[%zu],\n", offsetof(PyThreadState, current_frame));
  F("frame_code", offsetof(_PyInterpreterFrame, f_executable));
  F("frame_previous", offsetof(_PyInterpreterFrame, previous));
  F("frame_localsplus", offsetof(_PyInterpreterFrame, localsplus));
#elif PY_VERSION_HEX >= 0x030B0000
  printf("        tstate_current_frame: &[%zu, %zu],\n", offsetof(PyThreadState, cframe),
         offsetof(_PyCFrame, current_frame));
  F("frame_code", offsetof(_PyInterpreterFrame, f_code));
  F("frame_previous", offsetof(_PyInterpreterFrame, previous));
  F("frame_localsplus", offsetof(_PyInterpreterFrame, localsplus));
#else
  printf("        tstate_current_frame: &[%zu],\n", offsetof(PyThreadState, frame));
  F("frame_code", offsetof(PyFrameObject, f_code));
  F("frame_previous", offsetof(PyFrameObject, f_back));
  F("frame_localsplus", offsetof(PyFrameObject, f_localsplus));
#endif
  /* 3.14: frames hold `_PyStackRef`s (f_executable, localsplus), pointers whose low bits
   * may carry a tag (deferred or borrowed references); earlier, plain pointers. */
#ifdef Py_TAG_BITS
  F("stackref_tag_bits", Py_TAG_BITS);
#else
  F("stackref_tag_bits", 0);
#endif
  F("code_name", offsetof(PyCodeObject, co_name));
#if PY_VERSION_HEX >= 0x030B0000
  printf("        code_qualname: Some(%zu),\n", offsetof(PyCodeObject, co_qualname));
  printf("        code_bytecode: Bytecode::Adaptive(%zu),\n",
         offsetof(PyCodeObject, co_code_adaptive));
  F("code_localsplusnames", offsetof(PyCodeObject, co_localsplusnames));
  F("code_nlocalsplus", offsetof(PyCodeObject, co_nlocalsplus));
#else
  printf("        code_qualname: None,\n");
  printf("        code_bytecode: Bytecode::Bytes(%zu),\n", offsetof(PyCodeObject, co_code));
  F("code_localsplusnames", offsetof(PyCodeObject, co_varnames));
  F("code_nlocalsplus", offsetof(PyCodeObject, co_nlocals));
#endif
  F("code_names", offsetof(PyCodeObject, co_names));
  F("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
  F("code_linetable", offsetof(PyCodeObject, co_linetable));
#if PY_VERSION_HEX >= 0x030B0000
  printf("        code_linetable_format: LineTableFormat::Locations,\n");
#else
  printf("        code_linetable_format: LineTableFormat::Pairs,\n");
#endif
  F("bytes_data", offsetof(PyBytesObject, ob_sval));
  F("type_name", offsetof(PyTypeObject, tp_name));
  F("type_basicsize", offsetof(PyTypeObject, tp_basicsize));
  F("type_dictoffset", offsetof(PyTypeObject, tp_dictoffset));
  F("type_dict", offsetof(PyTypeObject, tp_dict));
  F("type_flags", offsetof(PyTypeObject, tp_flags));
  F("type_base", offsetof(PyTypeObject, tp_base));
  F("type_mro", offsetof(PyTypeObject, tp_mro));
  F("heaptype_cached_keys", offsetof(PyHeapTypeObject, ht_cached_keys));
#if PY_VERSION_HEX >= 0x030D0000
  printf("        instance_dict: ManagedDict::Inline { dict: %td, flag: %lu, valid: %zu },\n",
         (char *)_PyObject_ManagedDictPointer(obj) - (char *)obj,
         (unsigned long)Py_TPFLAGS_INLINE_VALUES, offsetof(PyDictValues, valid));
#elif PY_VERSION_HEX >= 0x030C0000
  PyDictOrValues tagged;
  tagged.values = buffer + 7;
  printf("        instance_dict: ManagedDict::Tagged { dict_or_values: %td, values_bias: %td },\n",
         (char *)_PyObject_DictOrValuesPointer(obj) - (char *)obj,
         (char *)_PyDictOrValues_GetValues(tagged) - tagged.values);
#elif PY_VERSION_HEX >= 0x030B0000
  printf("        instance_dict: ManagedDict::Separate { dict: %td, values: %td },\n",
         (char *)_PyObject_ManagedDictPointer(obj) - (char *)obj,
         (char *)_PyObject_ValuesPointer(obj) - (char *)obj);
#else
  printf("        instance_dict: ManagedDict::None,\n");
#endif
#ifdef Py_TPFLAGS_MANAGED_DICT
  F("tpflags_managed_dict", Py_TPFLAGS_MANAGED_DICT);
#else
  F("tpflags_managed_dict", 0);
#endif
  F("dict_keys", offsetof(PyDictObject, ma_keys));
  F("dict_values", offsetof(PyDictObject, ma_values));
  F("dict_used", offsetof(PyDictObject, ma_used));
#if PY_VERSION_HEX >= 0x030D0000
  printf("        values_order: ValuesOrder::AfterValues { capacity: %zu, size: %zu },\n",
         offsetof(PyDictValues, capacity), offsetof(PyDictValues, size));
  F("values_items", offsetof(PyDictValues, values));
#elif PY_VERSION_HEX >= 0x030B0000
  printf("        values_order: ValuesOrder::Prefix,\n");
  F("values_items", offsetof(PyDictValues, values));
#else
  printf("        values_order: ValuesOrder::KeyOrder,\n");
  F("values_items", 0);
#endif
#if PY_VERSION_HEX >= 0x030B0000
  printf("        dictkeys_size: DictKeysSize::Log2 { log2_size: %zu, log2_index_bytes: %zu, kind: "
         "%zu },\n",
         offsetof(PyDictKeysObject, dk_log2_size), offsetof(PyDictKeysObject, dk_log2_index_bytes),
         offsetof(PyDictKeysObject, dk_kind));
  size_t entry_sizes[3];
  entry_sizes[DICT_KEYS_GENERAL] = sizeof(PyDictKeyEntry);
  entry_sizes[DICT_KEYS_UNICODE] = sizeof(PyDictUnicodeEntry);
  entry_sizes[DICT_KEYS_SPLIT] = sizeof(PyDictUnicodeEntry);
  printf("        dict_entry_size_by_kind: [%zu, %zu, %zu],\n", entry_sizes[0], entry_sizes[1],
         entry_sizes[2]);
#else
  printf("        dictkeys_size: DictKeysSize::Size(%zu),\n", offsetof(PyDictKeysObject, dk_size));
  /* 3.10 has one entry kind, with the hash. */
  printf("        dict_entry_size_by_kind: [%zu, %zu, %zu],\n", sizeof(PyDictKeyEntry),
         sizeof(PyDictKeyEntry), sizeof(PyDictKeyEntry));
#endif
  F("dictkeys_nentries", offsetof(PyDictKeysObject, dk_nentries));
  F("dictkeys_indices", offsetof(PyDictKeysObject, dk_indices));
  F("unicode_length", offsetof(PyASCIIObject, length));
  F("unicode_hash", offsetof(PyASCIIObject, hash));
  F("unicode_state", offsetof(PyASCIIObject, state));
  F("unicode_ascii_data", sizeof(PyASCIIObject));
  F("unicode_compact_data", sizeof(PyCompactUnicodeObject));
  F("func_code", offsetof(PyFunctionObject, func_code));
  F("module_dict", offsetof(PyModuleObject, md_dict));
  F("tuple_items", offsetof(PyTupleObject, ob_item));
  F("list_items", offsetof(PyListObject, ob_item));
#if PY_VERSION_HEX >= 0x030C0000
  printf("        long_size: LongSize::Tag { offset: %zu, non_size_bits: %d },\n",
         offsetof(PyLongObject, long_value.lv_tag), _PyLong_NON_SIZE_BITS);
  F("long_digits", offsetof(PyLongObject, long_value.ob_digit));
#else
  printf("        long_size: LongSize::ObSize,\n");
  F("long_digits", offsetof(PyLongObject, ob_digit));
#endif
  F("long_shift", PyLong_SHIFT);
  F("float_value", offsetof(PyFloatObject, ob_fval));
  F("set_used", offsetof(PySetObject, used));
  F("set_mask", offsetof(PySetObject, mask));
  F("set_table", offsetof(PySetObject, table));
  F("set_entry_size", sizeof(setentry));
  F("set_entry_hash", offsetof(setentry, hash));
  printf("        deque: Deque { leftblock: %zu, rightblock: %zu, leftindex: %zu, rightindex: %zu, "
         "block_len: %d, block_data: %zu, block_rightlink: %zu },\n",
         offsetof(dequeobject, leftblock), offsetof(dequeobject, rightblock),
         offsetof(dequeobject, leftindex), offsetof(dequeobject, rightindex), BLOCKLEN,
         offsetof(block, data), offsetof(block, rightlink));
  F("memberdescr_member", offsetof(PyMemberDescrObject, d_member));
  F("memberdef_type", offsetof(PyMemberDef, type));
  F("memberdef_offset", offsetof(PyMemberDef, offset));
  F("member_object_ex", T_OBJECT_EX);
  F("var_size", offsetof(PyVarObject, ob_size));
  F("object_type", offsetof(PyObject, ob_type));
#if PY_VERSION_HEX >= 0x030D0000
  /* Where in `_Py_DebugOffsets` (at the start of `_PyRuntime`) the interpreter states the
   * same offsets as the fields named, for the cross-check at discovery. */
#define D(name, member) printf("            (\"%s\", %zu),\n", name, offsetof(_Py_DebugOffsets, member))
  printf("        debug_offsets: Some(DebugOffsets {\n");
  printf("            version: %zu,\n", offsetof(_Py_DebugOffsets, version));
  printf("            free_threaded: %zu,\n", offsetof(_Py_DebugOffsets, free_threaded));
  printf("            fields: &[\n");
  D("runtime_interpreters_head", runtime_state.interpreters_head);
  D("interp_threads_head", interpreter_state.threads_head);
  D("interp_modules", interpreter_state.imports_modules);
  D("tstate_next", thread_state.next);
  D("tstate_thread_id", thread_state.native_thread_id);
  D("tstate_current_frame", thread_state.current_frame);
  D("frame_code", interpreter_frame.executable);
  D("frame_previous", interpreter_frame.previous);
  D("frame_localsplus", interpreter_frame.localsplus);
  D("code_name", code_object.name);
  D("code_qualname", code_object.qualname);
  D("code_linetable", code_object.linetable);
  D("code_firstlineno", code_object.firstlineno);
  D("code_localsplusnames", code_object.localsplusnames);
  D("code_bytecode", code_object.co_code_adaptive);
  D("object_type", pyobject.ob_type);
  D("type_name", type_object.tp_name);
  D("type_flags", type_object.tp_flags);
  D("tuple_items", tuple_object.ob_item);
  D("var_size", tuple_object.ob_size);
  D("list_items", list_object.ob_item);
  D("dict_keys", dict_object.ma_keys);
  D("dict_values", dict_object.ma_values);
  D("float_value", float_object.ob_fval);
  D("long_size", long_object.lv_tag);
  D("long_digits", long_object.ob_digit);
  D("bytes_data", bytes_object.ob_sval);
  D("unicode_state", unicode_object.state);
  D("unicode_length", unicode_object.length);
  D("unicode_ascii_data", unicode_object.asciiobject_size);
#if PY_VERSION_HEX >= 0x030E0000
  /* 3.14 states the set's offsets too. */
  D("set_used", set_object.used);
  D("set_table", set_object.table);
  D("set_mask", set_object.mask);
#endif
  printf("            ],\n        }),\n");
#else
  printf("        debug_offsets: None,\n");
#endif
  printf("        opcodes: &OPCODES_%d_%d,\n    },\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
  return 0;
}
