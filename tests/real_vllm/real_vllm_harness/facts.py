"""Facts about the installed vLLM, read from the live in-process EngineCore (`--facts FILE`).

What the tracer's per-version tables need: qualified names, the bytecode call sequence of the
step functions, scheduler/request attribute names and types, enum values, config paths, and
what `sys.monitoring` does to the bytes the tracer watches. FACTS.md summarizes these.
"""

import ctypes
import dataclasses
import dis
import sys

from . import monitor

CONFIG_PATHS = [
    "model_config.model",
    "cache_config.block_size",
    "cache_config.num_gpu_blocks",
    "cache_config.gpu_memory_utilization",
    "cache_config.enable_prefix_caching",
    "scheduler_config.max_num_seqs",
    "scheduler_config.max_num_batched_tokens",
    "model_config.max_model_len",
    "scheduler_config.max_model_len",
    "scheduler_config.async_scheduling",
    "scheduler_config.chunked_prefill_enabled",
]

REQUEST_FIELDS = [
    "request_id", "status", "num_computed_tokens", "num_cached_tokens", "_output_token_ids",
    "num_prompt_tokens", "arrival_time", "num_preemptions", "max_tokens", "events",
    "num_output_placeholders",
]  # fmt: skip


def qualname(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def method_calls(fn) -> list[dict]:
    """Functions called by name in `fn`, in the order their CALLs execute (nested calls first),
    with the offset of the instruction after each CALL (where the callee returns to)."""
    calls, loaded, pending_next = [], [], None
    for ins in dis.get_instructions(fn):
        if pending_next is not None:
            pending_next.update(next_offset=ins.offset, next_opname=ins.opname)
            pending_next = None
        if ins.opname == "LOAD_METHOD" or ins.argrepr.startswith(("NULL|self + ", "NULL + ")):
            loaded.append(ins.argval)
        elif ins.opname.startswith("CALL") and ins.opname != "CALL_INTRINSIC_1" and loaded:
            pending_next = {"name": loaded.pop(), "call_offset": ins.offset}
            calls.append(pending_next)
    return calls


def live_bytes(code, offset: int, n: int = 2) -> list[int]:
    """Bytes of the bytecode the interpreter executes (co_code_adaptive), at `offset`."""
    base = id(code) + type(code).__basicsize__
    return list(ctypes.string_at(base + offset, n))


def monitoring_effect(code, offsets: dict[str, int]) -> dict:
    """The watched bytes with the ground-truth monitor's events on, then off (same addresses)."""
    mon = monitor._installed
    out = {}
    for state in ("monitoring_on", "monitoring_off"):
        if state == "monitoring_off":
            sys.monitoring.set_local_events(mon.tool, code, 0)
        out[state] = {
            name: {
                "address_offset": off,
                "bytes": live_bytes(code, off),
                "opname": dis.opname[live_bytes(code, off)[0]],
            }
            for name, off in offsets.items()
        }
    E = sys.monitoring.events
    sys.monitoring.set_local_events(mon.tool, code, E.PY_START | E.PY_RETURN)
    return out


def dict_is_split(d: dict) -> bool:
    """Whether a dict shares its keys with its class (CPython 3.12/3.13 PyDictObject: ma_values
    at offset 40 is non-NULL). Instances stop sharing past 30 attributes (SHARED_KEYS_MAX_SIZE)."""
    return ctypes.c_void_p.from_address(id(d) + 40).value is not None


def field_info(obj, cls, name):
    if isinstance(cls.__dict__.get(name), property):
        return "property -> " + type(getattr(obj, name)).__name__
    if not hasattr(obj, name):
        return None
    v = getattr(obj, name)
    return f"{type(v).__module__}.{type(v).__qualname__}"


def resolve(root, path: str):
    for part in path.split("."):
        if not hasattr(root, part):
            return "<absent>"
        root = getattr(root, part)
    return repr(root)


def live_facts(engine) -> dict:
    import vllm
    from vllm import SamplingParams
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.request import Request, RequestStatus

    core = engine.engine_core.engine_core  # InprocClient → EngineCore
    sched = core.scheduler
    pool = sched.kv_cache_manager.block_pool

    # One request, scheduled by hand, to see a live Request and where tokens are counted.
    engine.add_request(
        "facts",
        {"prompt_token_ids": list(range(10, 74))},
        SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False),
    )
    so = sched.schedule()
    (req,) = [r for r in sched.requests.values()]
    computed_after_schedule = req.num_computed_tokens
    out = core.model_executor.execute_model(so)
    if out is None:
        out = core.model_executor.sample_tokens(None)
    sched.update_from_output(so, out)
    request_facts = {
        "class": qualname(Request),
        "has___slots__": "__slots__" in Request.__dict__,
        "instance_attributes": len(vars(req)),
        "instance_attribute_names": list(vars(req)),
        "instance_dict_split": dict_is_split(vars(req)),
        "fields": {n: field_info(req, Request, n) for n in REQUEST_FIELDS},
        "num_computed_tokens_after_schedule": computed_after_schedule,
        "num_computed_tokens_after_update": req.num_computed_tokens,
        "prompt_tokens": 64,
        "request_id_in_engine": req.request_id,
    }
    while engine.has_unfinished_requests():
        engine.step()

    steps = {"step": EngineCore.step}
    if hasattr(EngineCore, "step_with_batch_queue"):
        steps["step_with_batch_queue"] = EngineCore.step_with_batch_queue
    step_facts = {}
    for name, fn in steps.items():
        calls = method_calls(fn)
        # Not always offset 0: MAKE_CELL/COPY_FREE_VARS come first in a function with cells.
        resume = next(i.offset for i in dis.get_instructions(fn) if i.opname == "RESUME")
        watch = {"RESUME": resume}
        after = [c for c in calls if c["name"] == "schedule"]
        if after:
            watch["after CALL schedule"] = after[0]["next_offset"]
        step_facts[name] = {
            "qualname": f"{fn.__module__}.{fn.__qualname__}",
            "calls": calls,
            "dis": dis.Bytecode(fn).dis(),
            "watched_bytes": monitoring_effect(fn.__code__, watch),
        }

    waiting = sched.waiting
    return {
        "vllm": vllm.__version__,
        "python": sys.version.split()[0],
        "engine_core_class": qualname(core),
        # 0.10's InprocClient calls EngineCore.step itself; step_fn exists on EngineCoreProc only.
        "step_fn_in_use": getattr(core, "step_fn", core.step).__name__,
        "has_step_fn_attribute": hasattr(core, "step_fn"),
        "batch_queue_size": getattr(core, "batch_queue_size", None),
        "busy_loop": [
            n
            for n in ("run_busy_loop",)
            if hasattr(sys.modules["vllm.v1.engine.core"].EngineCoreProc, n)
        ],
        "steps": step_facts,
        "scheduler": {
            "class": qualname(sched),
            "mro": [qualname(c) for c in type(sched).__mro__],
            "running": qualname(sched.running),
            "waiting": qualname(waiting),
            "waiting_mro": [qualname(c) for c in type(waiting).__mro__],
            "waiting_heap": qualname(waiting._heap) if hasattr(waiting, "_heap") else None,
            "requests": qualname(sched.requests),
            "max_num_running_reqs": sched.max_num_running_reqs,
            "max_num_scheduled_tokens": sched.max_num_scheduled_tokens,
            "kv_cache_manager": qualname(sched.kv_cache_manager),
            "block_pool": qualname(pool),
            "block_pool.num_gpu_blocks": getattr(pool, "num_gpu_blocks", None),
            "free_block_queue": qualname(pool.free_block_queue),
            "free_block_queue.num_free_blocks": getattr(
                pool.free_block_queue, "num_free_blocks", None
            ),
            "get_num_free_blocks()": pool.get_num_free_blocks(),
            "has__preempt_request": hasattr(sched, "_preempt_request"),
            "instance_attributes": len(vars(sched)),
            "instance_dict_split": dict_is_split(vars(sched)),
            "other_waiting_queues": {
                n: qualname(getattr(sched, n))
                for n in ("kv_holding_waiting", "deferred_waiting", "skipped_waiting")
                if hasattr(sched, n)
            },
            "policy": repr(getattr(sched, "policy", None)),
        },
        "request": request_facts,
        "request_status": {m.name: int(m.value) for m in RequestStatus},
        "scheduler_output_fields": [f.name for f in dataclasses.fields(SchedulerOutput)],
        "cached_request_data": qualname(so.scheduled_cached_reqs),
        "config_from_engine_core": {p: resolve(core.vllm_config, p) for p in CONFIG_PATHS},
    }
