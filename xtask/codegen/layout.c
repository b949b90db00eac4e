/* Prints the CPython struct offsets the tracer needs, as a Rust `Layout` literal.
 * Built by `cargo xtask codegen` against each interpreter's installed headers (internal
 * ones included), so the numbers are the compiler's, not ours. */
#define Py_BUILD_CORE 1
#include "Python.h"
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_frame.h"
#include "internal/pycore_dict.h"
#include "internal/pycore_code.h"
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX < 0x030C0000
/* Objects/moduleobject.c keeps this private before 3.12; its first field is stable. */
typedef struct { PyObject_HEAD PyObject *md_dict; } PyModuleObject;
#else
#include "internal/pycore_moduleobject.h"
#endif

#define F(name, expr) printf("        %s: %zu,\n", name, (size_t)(expr))
int main(void) {
  printf("    Layout {\n        version: (%d, %d),\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
  F("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
  F("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#if PY_VERSION_HEX >= 0x030C0000
  F("interp_modules", offsetof(PyInterpreterState, imports.modules));
#else
  F("interp_modules", offsetof(PyInterpreterState, modules));
#endif
  F("tstate_next", offsetof(PyThreadState, next));
  F("tstate_native_thread_id", offsetof(PyThreadState, native_thread_id));
#if PY_VERSION_HEX >= 0x030D0000
  printf("        tstate_current_frame: &[%zu],\n", offsetof(PyThreadState, current_frame));
  F("frame_code", offsetof(_PyInterpreterFrame, f_executable));
#else
  printf("        tstate_current_frame: &[%zu, %zu],\n", offsetof(PyThreadState, cframe),
         offsetof(_PyCFrame, current_frame));
  F("frame_code", offsetof(_PyInterpreterFrame, f_code));
#endif
  F("frame_previous", offsetof(_PyInterpreterFrame, previous));
  F("code_qualname", offsetof(PyCodeObject, co_qualname));
  F("code_names", offsetof(PyCodeObject, co_names));
  F("code_size", offsetof(PyVarObject, ob_size));
  F("code_code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
  F("type_dict", offsetof(PyTypeObject, tp_dict));
  F("type_flags", offsetof(PyTypeObject, tp_flags));
  F("dict_keys", offsetof(PyDictObject, ma_keys));
  F("dict_values", offsetof(PyDictObject, ma_values));
  F("dictkeys_log2_size", offsetof(PyDictKeysObject, dk_log2_size));
  F("dictkeys_log2_index_bytes", offsetof(PyDictKeysObject, dk_log2_index_bytes));
  F("dictkeys_kind", offsetof(PyDictKeysObject, dk_kind));
  F("dictkeys_nentries", offsetof(PyDictKeysObject, dk_nentries));
  F("dictkeys_indices", offsetof(PyDictKeysObject, dk_indices));
  F("unicode_length", offsetof(PyASCIIObject, length));
  F("unicode_state", offsetof(PyASCIIObject, state));
  F("unicode_ascii_data", sizeof(PyASCIIObject));
  F("unicode_compact_data", sizeof(PyCompactUnicodeObject));
  F("func_code", offsetof(PyFunctionObject, func_code));
  F("module_dict", offsetof(PyModuleObject, md_dict));
  F("tuple_items", offsetof(PyTupleObject, ob_item));
  F("var_size", offsetof(PyVarObject, ob_size));
  F("object_type", offsetof(PyObject, ob_type));
  printf("        opcodes: &OPCODES_%d_%d,\n    },\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
  return 0;
}
