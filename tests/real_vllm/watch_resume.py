"""Does a sys.monitoring tool change what the tracer's RESUME watchpoint sees? (CPython 3.12+)

Counts, with a hardware watchpoint (perf_event_open, PERF_TYPE_BREAKPOINT, read/write, length
1, on this thread) on the first RESUME byte of a function's live bytecode, the hits per call,
and prints the byte there: without monitoring, with PY_START/PY_RETURN local events on the
function (as tests/real_vllm's ground-truth monitor does), and after switching them off.
Needs root (or perf_event_paranoid <= 1). Prints one JSON line; exits 1 if a settled call is
not exactly one hit.
"""

import ctypes
import dis
import json
import os
import struct
import sys

PERF_TYPE_BREAKPOINT = 5
HW_BREAKPOINT_RW = 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_RESET = 0x2403
SYS_PERF_EVENT_OPEN = 298  # x86-64
ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
CALLS = 1000
TRANSITION_CALLS = 10
OPNAMES = getattr(dis, "_all_opname", dis.opname)  # with specialized ones (3.13: RESUME_CHECK)

libc = ctypes.CDLL(None, use_errno=True)


def watch(addr: int) -> int:
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("<II", attr, 0, PERF_TYPE_BREAKPOINT, ATTR_SIZE)
    # flags: disabled (bit 0), exclude_kernel (bit 5), exclude_hv (bit 6)
    struct.pack_into("<Q", attr, 40, 1 | 1 << 5 | 1 << 6)
    struct.pack_into("<IIQQ", attr, 48, 0, HW_BREAKPOINT_RW, addr, 1)
    buf = (ctypes.c_char * ATTR_SIZE).from_buffer(attr)
    fd = libc.syscall(SYS_PERF_EVENT_OPEN, buf, 0, -1, -1, 0)
    if fd < 0:
        sys.exit(f"perf_event_open: {os.strerror(ctypes.get_errno())}")
    return fd


def hits(fd: int, fn, calls: int) -> int:
    libc.ioctl(fd, PERF_EVENT_IOC_RESET, 0)
    libc.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    for _ in range(calls):
        fn(1)
    libc.ioctl(fd, PERF_EVENT_IOC_DISABLE, 0)
    return struct.unpack("<q", os.read(fd, 8))[0]


def measure(fd: int, fn, byte) -> dict:
    """Hits in the first calls after a change (the interpreter may rewrite the byte then: a
    write hits a read/write watchpoint too), then per call once settled."""
    first = hits(fd, fn, TRANSITION_CALLS)
    steady = hits(fd, fn, CALLS)
    return {
        "opcode": byte(),
        f"hits_first_{TRANSITION_CALLS}_calls": first,
        "hits_per_call": steady / CALLS,
    }


def target(x):
    return x + 1


def main() -> int:
    code = target.__code__
    offset = next(i.offset for i in dis.get_instructions(target) if i.opname == "RESUME")
    addr = id(code) + type(code).__basicsize__ + offset

    def byte():
        return OPNAMES[ctypes.string_at(addr, 1)[0]]

    fd = watch(addr)
    result = {"python": sys.version.split()[0], "resume_offset": offset}
    result["plain"] = measure(fd, target, byte)
    mon = sys.monitoring
    tool = next(t for t in (mon.PROFILER_ID, 3, 4, 5) if mon.get_tool(t) is None)
    mon.use_tool_id(tool, "watch_resume")
    mon.register_callback(tool, mon.events.PY_START, lambda code, off: None)
    mon.register_callback(tool, mon.events.PY_RETURN, lambda code, off, rv: None)
    mon.set_local_events(tool, code, mon.events.PY_START | mon.events.PY_RETURN)
    result["monitored"] = measure(fd, target, byte)
    mon.set_local_events(tool, code, 0)
    result["unmonitored_again"] = measure(fd, target, byte)
    print(json.dumps(result))
    ok = all(result[k]["hits_per_call"] == 1.0 for k in ("plain", "monitored", "unmonitored_again"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
