"""In-process ground truth for the EngineCore: per-step timestamps and scheduler state.

Uses `sys.monitoring` (CPython 3.12+), PY_START/PY_RETURN as *local* events on exactly the code
objects of the step function(s), the scheduler's `schedule` and `update_from_output`, the
executor's `execute_model`/`sample_tokens` and `Scheduler._free_request` (plus PY_UNWIND, which
can only be global, to close the row of a step that raises; `raised` names the exception).
The code objects are not replaced (no wrapper, no patched attribute); CPython rewrites the
RESUME and RETURN opcodes of those code objects in place into their INSTRUMENTED_* forms (same
addresses), which is what the tracer's byte watchpoints see while this monitor is on (FACTS.md,
"sys.monitoring").

Installed by the stand-in executor's `_init_executor` when `REAL_VLLM_GT_DIR` is set: that runs
in the EngineCore process (child or in-process) on the thread that will run the busy loop.
Times are `time.monotonic_ns()` (CLOCK_MONOTONIC, as the tracer's). Rows are written line-
buffered, one per step-function call, so a killed engine leaves complete rows behind.
"""

import csv
import json
import multiprocessing
import os
import sys
import threading
import time

STEP_COLUMNS = [
    "step", "step_fn", "step_start_ns",
    "schedule_start_ns", "schedule_end_ns", "schedule_cb_end_ns",
    "execute_start_ns", "execute_end_ns",
    "sample_start_ns", "sample_end_ns",
    "update_start_ns", "update_end_ns",
    "step_end_ns",
    "scheduled_reqs", "scheduled_tokens", "new_reqs", "running", "waiting",
    "preempted", "kv_free_blocks", "raised",
]  # fmt: skip

REQUEST_COLUMNS = [
    "request_id", "freed_ns", "status", "arrival_time", "num_prompt_tokens",
    "num_output_tokens", "num_computed_tokens", "num_cached_tokens",
    "num_preemptions", "observed_preemptions",
]  # fmt: skip

_installed = None


def install_from_env(executor) -> None:
    out = os.environ.get("REAL_VLLM_GT_DIR")
    global _installed
    if out and _installed is None:
        _installed = Monitor(out, executor)


def _free_blocks(scheduler):
    pool = scheduler.kv_cache_manager.block_pool
    return pool.get_num_free_blocks()


class Monitor:
    def __init__(self, out_dir: str, executor):
        from vllm.v1.engine.core import EngineCore

        os.makedirs(out_dir, exist_ok=True)
        mon = sys.monitoring
        self.tool = next(t for t in (mon.PROFILER_ID, 3, 4, 5) if mon.get_tool(t) is None)
        mon.use_tool_id(self.tool, "real_vllm_ground_truth")
        sched_cls = _scheduler_class(executor.vllm_config)
        ex_cls = type(executor)
        roles = {
            EngineCore.step: "step",
            sched_cls.schedule: "schedule",
            ex_cls.execute_model: "execute",
            sched_cls.update_from_output: "update",
            sched_cls._free_request: "free",
        }
        if hasattr(EngineCore, "step_with_batch_queue"):
            roles[EngineCore.step_with_batch_queue] = "step"
        if hasattr(ex_cls, "sample_tokens"):
            roles[ex_cls.sample_tokens] = "sample"
        self.roles = {fn.__code__: role for fn, role in roles.items()}
        self.step = 0
        self.row = None
        self.prev_running = []
        self.preemptions: dict[str, int] = {}
        # Ids scheduled before: from 0.34 a resumed request comes back in scheduled_new_reqs,
        # and new_reqs counts first schedulings only (the tracer's new_requests), as before.
        self.seen: set[str] = set()
        self.steps_file = open(os.path.join(out_dir, "gt_steps.csv"), "w", buffering=1)
        self.steps = csv.writer(self.steps_file)
        self.steps.writerow(STEP_COLUMNS)
        self.reqs_file = open(os.path.join(out_dir, "gt_requests.csv"), "w", buffering=1)
        self.reqs = csv.writer(self.reqs_file)
        self.reqs.writerow(REQUEST_COLUMNS)
        with open(os.path.join(out_dir, "engine.json"), "w") as f:
            json.dump(
                {
                    "pid": os.getpid(),
                    "tid": threading.get_native_id(),
                    "comm": _read(f"/proc/{os.getpid()}/comm").strip(),
                    # setproctitle's title (it rewrites argv) and multiprocessing's name.
                    "title": _read(f"/proc/{os.getpid()}/cmdline").split("\0")[0],
                    "process_name": multiprocessing.current_process().name,
                    "scheduler": f"{sched_cls.__module__}.{sched_cls.__qualname__}",
                },
                f,
            )
        E = mon.events
        mon.register_callback(self.tool, E.PY_START, self._start)
        mon.register_callback(self.tool, E.PY_RETURN, self._return)
        mon.register_callback(self.tool, E.PY_UNWIND, self._unwind)
        for code in self.roles:
            mon.set_local_events(self.tool, code, E.PY_START | E.PY_RETURN)
        # An exception leaving a step function ends its row too. PY_UNWIND cannot be a local
        # event, so this callback sees every unwinding frame (rare in the engine).
        mon.set_events(self.tool, E.PY_UNWIND)

    def _start(self, code, offset):
        t = time.monotonic_ns()
        role = self.roles[code]
        if role == "step":
            self.step += 1
            self.row = dict.fromkeys(STEP_COLUMNS, "")
            self.row.update(step=self.step, step_fn=code.co_name, step_start_ns=t)
        elif role == "free":
            self._freed(sys._getframe(1).f_locals["request"], t)
        elif self.row is not None and self.row[f"{role}_start_ns"] == "":
            self.row[f"{role}_start_ns"] = t

    def _return(self, code, offset, retval):
        t = time.monotonic_ns()
        role = self.roles[code]
        if role == "free" or self.row is None:
            return
        if role == "step":
            self.row["step_end_ns"] = t
            self._write_row()
            return
        self.row[f"{role}_end_ns"] = t
        if role == "schedule":
            self._scheduled(sys._getframe(1).f_locals["self"], retval)
            # The caller resumes only after this bookkeeping: a tracer's mark after the call
            # is compared with this time, not with the return's.
            self.row["schedule_cb_end_ns"] = time.monotonic_ns()

    def _unwind(self, code, offset, exc):
        if self.roles.get(code) == "step" and self.row is not None:
            self.row.update(step_end_ns=time.monotonic_ns(), raised=type(exc).__name__)
            self._write_row()

    def _write_row(self):
        """Written before it is let go: vLLM's SIGTERM handler raises SystemExit at whatever
        call the engine thread makes next, in these callbacks too, and a row let go first is
        lost then. (Sweep 3's vLLM 0.10.2 TP 2 had no row, twice, for the call that updated
        the last batch, which the tracer and both workers saw; not seen in 5 runs since.)
        Raised after the write, the row is written again by _unwind as raised; readers keep a
        step's first row."""
        self.steps.writerow(self.row.values())
        self.row = None

    def _scheduled(self, scheduler, so):
        from vllm.v1.request import RequestStatus

        preempted = [r for r in self.prev_running if r.status == RequestStatus.PREEMPTED]
        for r in preempted:
            self.preemptions[r.request_id] = self.preemptions.get(r.request_id, 0) + 1
        self.prev_running = list(scheduler.running)
        self.row.update(
            scheduled_reqs=len(so.num_scheduled_tokens),
            scheduled_tokens=so.total_num_scheduled_tokens,
            new_reqs=self._first_scheduled(so.scheduled_new_reqs),
            running=len(scheduler.running),
            waiting=len(scheduler.waiting),
            preempted=len(preempted),
            kv_free_blocks=_free_blocks(scheduler),
        )

    def _first_scheduled(self, new_reqs) -> int:
        first = [n.req_id for n in new_reqs if n.req_id not in self.seen]
        self.seen.update(first)
        return len(first)

    def _freed(self, r, t):
        self.reqs.writerow(
            [
                r.request_id, t, r.status.name, getattr(r, "arrival_time", ""), r.num_prompt_tokens,
                len(r._output_token_ids), r.num_computed_tokens, getattr(r, "num_cached_tokens", ""),
                getattr(r, "num_preemptions", ""),
                self.preemptions.pop(r.request_id, 0),
            ]
        )  # fmt: skip


def _scheduler_class(vllm_config):
    sc = vllm_config.scheduler_config
    if hasattr(sc, "get_scheduler_cls"):
        return sc.get_scheduler_cls()
    cls = sc.scheduler_cls
    if isinstance(cls, str):
        from vllm.utils import resolve_obj_by_qualname

        return resolve_obj_by_qualname(cls)
    return cls


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
