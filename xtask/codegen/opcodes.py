"""Prints this interpreter's opcode facts as a Rust `Opcodes` static (run by `cargo xtask codegen`).

The tracer scans bytecode in a *running* process, where instructions have been specialized
(quickened): `deopt` maps each specialized opcode back to its base, `caches` gives the inline
cache entries (code units) that follow each base instruction.
"""
import dis
import opcode
import sys

all_opmap = getattr(dis, "_all_opmap", opcode.opmap)
deopt = list(range(256))
for base, specialized in getattr(opcode, "_specializations", {}).items():
    for name in specialized:
        if name in all_opmap and all_opmap[name] < 256:
            deopt[all_opmap[name]] = all_opmap[base]
# sys.monitoring (3.12+) rewrites instructions in place into INSTRUMENTED_<base> forms, same
# oparg and caches; LINE and INSTRUCTION keep their base in a side table and stay unmapped.
for name, number in all_opmap.items():
    base = name.removeprefix("INSTRUMENTED_")
    if base != name and base in all_opmap and number < 256:
        deopt[number] = all_opmap[base]
raw = getattr(opcode, "_inline_cache_entries", [])
caches = [0] * 256
for op, n in (raw.items() if isinstance(raw, dict) else enumerate(raw)):
    op = all_opmap[op] if isinstance(op, str) else op
    if op < 256:
        caches[op] = n


def op(name):
    """The opcode number, or None where this version has no such (real) instruction."""
    v = opcode.opmap.get(name)
    return "None" if v is None or v >= 256 else f"Some({v})"


major, minor = sys.version_info[:2]
print(f"static OPCODES_{major}_{minor}: Opcodes = Opcodes {{")
print(f"    resume: {op('RESUME')},")
print(f"    extended_arg: {op('EXTENDED_ARG')},")
print(f"    load_attr: {op('LOAD_ATTR')},")
print(f"    load_method: {op('LOAD_METHOD')},")
calls = [opcode.opmap[n] for n in ("CALL", "CALL_KW", "CALL_FUNCTION_EX", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW") if n in opcode.opmap]
print(f"    calls: &{calls},")
# From 3.12 LOAD_ATTR's low oparg bit says "method load"; the name index is oparg >> 1.
print(f"    load_attr_name_shift: {1 if (major, minor) >= (3, 12) else 0},")
print(f"    deopt: {deopt},")
print(f"    caches: {caches},")
print("};")
