"""Per-batch ground truth inside vLLM's EngineCore, on the real GPU executor.

A `vllm.general_plugins` entry point (declared by the dist-info beside this package, found
because its directory is on PYTHONPATH): vLLM calls `install_from_env` in every process that
loads plugins; with `GPU_GT_DIR` set, it watches with `sys.monitoring` (PY_START / PY_RETURN
as local events on exactly these code objects, none replaced): the step function(s), the
scheduler's `schedule` and `update_from_output`, the executor's `execute_model` /
`sample_tokens` (the launch; with worker processes, the message that sends them the
batch), the async output future's `result` (the wait for a batch's output) and `_process_aborts_queue` (the tracer's execute end). A batch is its
SchedulerOutput object: scheduled in one call, updated (maybe) in a later one.

Writes GPU_GT_DIR/gt_batches_<pid>.csv, one row per batch updated, and engine_<pid>.json.
Times are time.monotonic_ns() (CLOCK_MONOTONIC, the tracer's clock). Only the process that
runs the engine loop writes rows; the others' files stay empty.
"""

import csv
import json
import os
import sys
import threading
import time

COLUMNS = [
    "call", "entry_ns", "scheduled_ns", "launch_start_ns", "launched_ns", "wait_ns",
    "output_ns", "execute_done_ns", "update_start_ns", "update_done_ns",
    "tokens", "reqs", "new_reqs", "update_call",
]  # fmt: skip

_monitor = None


def install_from_env() -> None:
    global _monitor
    out = os.environ.get("GPU_GT_DIR")
    if out and _monitor is None:
        _monitor = Monitor(out)


class Monitor:
    def __init__(self, out: str):
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.engine.core import EngineCore
        from vllm.v1.executor.uniproc_executor import AsyncOutputFuture, UniProcExecutor

        mon = sys.monitoring
        self.tool = next(t for t in (mon.PROFILER_ID, 3, 4, 5) if mon.get_tool(t) is None)
        mon.use_tool_id(self.tool, "gpu_ground_truth")
        roles = {
            EngineCore.step: "call",
            EngineCore.step_with_batch_queue: "call",
            EngineCore._process_aborts_queue: "aborts",
            Scheduler.schedule: "schedule",
            Scheduler.update_from_output: "update",
            UniProcExecutor.execute_model: "launch",
            UniProcExecutor.sample_tokens: "launch",
            AsyncOutputFuture.result: "wait",
        }
        # With worker processes (MultiprocExecutor) the launch is the message to the workers
        # and the wait is on the future of their reply.
        try:
            from vllm.v1.executor.multiproc_executor import FutureWrapper, MultiprocExecutor
        except ImportError:
            pass
        else:
            roles[MultiprocExecutor.execute_model] = "launch"
            roles[MultiprocExecutor.sample_tokens] = "launch"
            roles[FutureWrapper.result] = "wait"
        # AsyncScheduler overrides neither, but be exact if a release does.
        for name, role in (("schedule", "schedule"), ("update_from_output", "update")):
            fn = AsyncScheduler.__dict__.get(name)
            if fn is not None:
                roles[fn] = role
        self.roles = {fn.__code__: role for fn, role in roles.items()}
        self.calls = 0
        self.call_entry = 0
        self.batches = {}  # id(SchedulerOutput) -> row
        self.scheduling = None  # the batch the open call scheduled
        self.last_wait = (0, 0)
        self.waiting_since = 0
        self.depth = 0
        pid = os.getpid()
        self.file = open(os.path.join(out, f"gt_batches_{pid}.csv"), "w", buffering=1)
        self.rows = csv.writer(self.file)
        self.rows.writerow(COLUMNS)
        with open(os.path.join(out, f"engine_{pid}.json"), "w") as f:
            json.dump({"pid": pid, "tid": threading.get_native_id()}, f)
        E = mon.events
        mon.register_callback(self.tool, E.PY_START, self._start)
        mon.register_callback(self.tool, E.PY_RETURN, self._return)
        for code in self.roles:
            mon.set_local_events(self.tool, code, E.PY_START | E.PY_RETURN)

    def _start(self, code, offset):
        t = time.monotonic_ns()
        role = self.roles[code]
        if role == "call":
            self.calls += 1
            self.call_entry = t
            self.scheduling = None
        elif role == "launch" and self.scheduling is not None:
            self.scheduling.setdefault("launch_start_ns", t)
        elif role == "wait":
            self.waiting_since = t
        elif role == "update":
            so = sys._getframe(1).f_locals.get("scheduler_output")
            row = self.batches.get(id(so))
            if row is not None:
                row["update_start_ns"] = t
                row["wait_ns"], row["output_ns"] = self.last_wait
                row["update_call"] = self.calls

    def _return(self, code, offset, retval):
        t = time.monotonic_ns()
        role = self.roles[code]
        if role == "schedule":
            row = dict.fromkeys(COLUMNS, "")
            row.update(
                call=self.calls, entry_ns=self.call_entry, scheduled_ns=t,
                tokens=retval.total_num_scheduled_tokens,
                reqs=len(retval.num_scheduled_tokens), new_reqs=len(retval.scheduled_new_reqs),
                so=retval,
            )  # fmt: skip
            self.batches[id(retval)] = row
            self.scheduling = row
        elif role == "launch" and self.scheduling is not None:
            self.scheduling["launched_ns"] = t
        elif role == "wait":
            self.last_wait = (self.waiting_since, t)
        elif role == "aborts":
            self.aborts_done = t
        elif role == "update":
            so = sys._getframe(1).f_locals.get("scheduler_output")
            row = self.batches.pop(id(so), None)
            if row is not None:
                row["execute_done_ns"] = getattr(self, "aborts_done", "")
                row["update_done_ns"] = t
                del row["so"]
                self.rows.writerow(row.values())
