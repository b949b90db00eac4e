"""Tensor-parallel workers (`--workers N`): vLLM's own MultiprocExecutor, its worker processes
and message queues, and its `Worker.execute_model` (gpu_worker.py, decorated as released),
around a stand-in model runner that calls a fake libcuda.

vLLM takes the executor as `mp` and the worker as `worker_cls`: `StandInWorker` subclasses
vLLM's GPU `Worker` and replaces only what needs a GPU (device set-up, model load, memory
profiling, the KV cache); torch.distributed runs on gloo, as vLLM's CPU worker does. Each rank's `StandInRunner` books
tokens as the stand-in executor does, launches kernels on the fake libcuda in a pattern that
depends on the batch (`launches_for`), and ends the batch's "GPU work" `forward` later: under
async scheduling the rank's output thread (vLLM's `async_output_busy_loop`) waits for it in
`cuEventSynchronize`, else the worker's main thread in `cuStreamSynchronize`. The ranks' GPUs
meet in all-reduces, so a batch's work ends `forward` after the last rank launched it
(`Group`).

Ground truth: `gt_rank<R>.csv` per rank (see `RANK_COLUMNS`), one `launch` row per batch and
one `sync` row per wait, times from `time.monotonic_ns()`.
"""

import csv
import ctypes
import mmap
import os
import struct
import sys
import threading
import time

from vllm.v1.executor.multiproc_executor import MultiprocExecutor
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, AsyncModelRunnerOutput
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment

from . import monitor
from .executor import SPLIT_SAMPLING, TokenBook, _Worker, _async_scheduling

# Graph launches stand for CUDA graphs: one per batch of at most this many tokens.
GRAPH_MAX_TOKENS = 32

RANK_COLUMNS = [
    "rank", "kind", "seq", "tid", "start_ns", "end_ns", "scheduled_tokens", "scheduled_reqs",
    "launches", "graph_launches",
]  # fmt: skip


def launches_for(tokens: int, reqs: int) -> tuple[int, int]:
    """Kernel and graph launches of a batch (`execute_model` and, from 0.12, `sample_tokens`
    together): they vary with the batch so that a row given a neighbour's calls shows."""
    return 2 + (tokens + 3 * reqs) % 11, int(tokens <= GRAPH_MAX_TOKENS)


class Group:
    """The ranks' launches per batch, in a file every rank maps (`GROUP_FILE` in the ground
    truth directory, created zeroed by the harness): per rank, `SLOTS` (batch, launched at)
    pairs, a batch in slot batch % SLOTS."""

    SLOTS = 64
    SLOT = struct.Struct("<QQ")  # launched at (ns), then the batch (written last)
    TIMEOUT_NS = 10_000_000_000  # a rank that never launches: its process died

    @classmethod
    def create(cls, path: str, ranks: int) -> None:
        with open(path, "wb") as f:
            f.write(bytes(ranks * cls.SLOTS * cls.SLOT.size))

    def __init__(self, path: str, ranks: int, rank: int):
        with open(path, "r+b") as f:
            self.map = mmap.mmap(f.fileno(), ranks * self.SLOTS * self.SLOT.size)
        self.ranks, self.rank = ranks, rank

    def _at(self, rank: int, seq: int) -> int:
        return (rank * self.SLOTS + seq % self.SLOTS) * self.SLOT.size

    def launched(self, seq: int, at_ns: int) -> None:
        self.SLOT.pack_into(self.map, self._at(self.rank, seq), at_ns, seq)

    def last_launch(self, seq: int) -> int:
        """When the last rank launched batch `seq` (waits for every rank to have)."""
        last, deadline = 0, time.monotonic_ns() + self.TIMEOUT_NS
        for rank in range(self.ranks):
            while True:
                at_ns, got = self.SLOT.unpack_from(self.map, self._at(rank, seq))
                if got == seq:
                    break
                if time.monotonic_ns() > deadline:
                    raise TimeoutError(f"rank {rank} never launched batch {seq}")
                time.sleep(20e-6)
            last = max(last, at_ns)
        return last


GROUP_FILE = "ranks.group"


def watch_multiproc_executor() -> None:
    """Installs the ground-truth monitor in the process that constructs vLLM's
    MultiprocExecutor (the EngineCore), as its `_init_executor` returns: a `sys.monitoring`
    return event on that code object, nothing replaced. The executor is passed as `mp`:
    releases from 0.12 accept async scheduling only with an executor by that name."""
    mon = sys.monitoring
    tool = next(t for t in (5, 4, 3) if mon.get_tool(t) is None)
    mon.use_tool_id(tool, "real_vllm_executor_watch")
    code = MultiprocExecutor._init_executor.__code__

    def returned(returning, offset, retval):
        if returning is code:
            monitor.install_from_env(sys._getframe(1).f_locals["self"])
        return mon.DISABLE

    mon.register_callback(tool, mon.events.PY_RETURN, returned)
    mon.set_local_events(tool, code, mon.events.PY_RETURN)


class StandInWorker(_Worker, Worker):
    """vLLM's GPU worker with the stand-in's answers for what needs a GPU (`_Worker`'s)."""

    def __init__(self, vllm_config, local_rank, rank, distributed_init_method, **kwargs):
        Worker.__init__(self, vllm_config, local_rank, rank, distributed_init_method, **kwargs)

    def init_device(self):
        init_worker_distributed_environment(
            self.vllm_config, self.rank, self.distributed_init_method, self.local_rank, "gloo"
        )
        self.model_runner = StandInRunner(self.vllm_config, self.rank)

    def load_model(self, *args, **kwargs):
        return None


class StandInRunner:
    is_pooling_model = False  # 0.33's Worker.execute_model asks (a generative model)

    def __init__(self, vllm_config, rank: int):
        self.rank = rank
        self.async_output = _async_scheduling(vllm_config)
        self.forward_ns = int(float(os.environ.get("REAL_VLLM_FORWARD_MS", "2")) * 1e6)
        self.per_token_ns = int(float(os.environ.get("REAL_VLLM_PER_TOKEN_US", "10")) * 1e3)
        self.cuda = ctypes.CDLL(os.environ["REAL_VLLM_FAKE_CUDA"])
        self.cuda.fakecuda_set_done_at.argtypes = [ctypes.c_uint64]
        self.book = TokenBook()
        self.group = Group(
            os.path.join(os.environ["REAL_VLLM_GT_DIR"], GROUP_FILE),
            vllm_config.parallel_config.world_size,
            rank,
        )
        self.seq = 0
        # 0.12+: the batch whose forward is launched, waiting for sample_tokens.
        self.pending = None
        path = os.path.join(os.environ["REAL_VLLM_GT_DIR"], f"gt_rank{rank}.csv")
        self.file = open(path, "w", buffering=1)
        self.rows = csv.writer(self.file)
        self.rows.writerow(RANK_COLUMNS)
        self.lock = threading.Lock()

    def _get_num_input_tokens(self, num_scheduled_tokens: int) -> int:
        return num_scheduled_tokens  # 0.11's Worker.execute_model asks (padding for graphs)

    def execute_model(self, so, intermediate_tensors=None):
        start = time.monotonic_ns()
        output = self.book.sample(so)
        tokens = so.total_num_scheduled_tokens
        if not tokens:
            return output  # no forward pass, no GPU work
        self.seq += 1
        reqs = len(so.num_scheduled_tokens)
        kernels, graphs = launches_for(tokens, reqs)
        if SPLIT_SAMPLING:
            kernels -= 1  # sample_tokens launches the last one
        self._launch(kernels, graphs)
        gpu_ns = self.forward_ns + self.per_token_ns * tokens
        batch = (self.seq, start, tokens, reqs, output, gpu_ns)
        if SPLIT_SAMPLING:
            self.pending = batch
            return None
        return self._launched(batch)

    def sample_tokens(self, grammar_output):
        batch, self.pending = self.pending, None
        if batch is None:
            return EMPTY_MODEL_RUNNER_OUTPUT
        self._launch(1, 0)
        return self._launched(batch)

    def take_draft_token_ids(self):
        return None

    def _launch(self, kernels: int, graphs: int) -> None:
        for _ in range(kernels):
            self.cuda.cuLaunchKernel(None, 1, 1, 1, 1, 1, 1, 0, None, None, None)
        for _ in range(graphs):
            self.cuda.cuGraphLaunch(None, None)

    def _launched(self, batch):
        seq, start, tokens, reqs, output, gpu_ns = batch
        kernels, graphs = launches_for(tokens, reqs)
        launched = time.monotonic_ns()
        self.group.launched(seq, launched)
        self._row("launch", seq, start, launched, tokens, reqs, kernels, graphs)
        if self.async_output:
            return _AsyncOutput(self, seq, output, gpu_ns)
        self._sync(seq, gpu_ns, self.cuda.cuStreamSynchronize)
        return output

    def _sync(self, seq: int, gpu_ns: int, sync) -> None:
        self.cuda.fakecuda_set_done_at(self.group.last_launch(seq) + gpu_ns)
        start = time.monotonic_ns()
        sync(None)
        self._row("sync", seq, start, time.monotonic_ns(), "", "", "", "")

    def _row(self, kind, seq, start, end, tokens, reqs, launches, graphs) -> None:
        with self.lock:
            self.rows.writerow(
                [self.rank, kind, seq, threading.get_native_id(), start, end, tokens, reqs,
                 launches, graphs]
            )  # fmt: skip


class _AsyncOutput(AsyncModelRunnerOutput):
    """The GPU runner's async output: its `get_output()` (vLLM's output thread) waits for the
    batch's GPU work, as the real one waits on the event after its device-to-host copy."""

    def __init__(self, runner: StandInRunner, seq: int, output, gpu_ns: int):
        self.runner, self.seq, self.output, self.gpu_ns = runner, seq, output, gpu_ns

    def get_output(self):
        self.runner._sync(self.seq, self.gpu_ns, self.runner.cuda.cuEventSynchronize)
        return self.output

    def get_kv_connector_output(self):
        return None  # 0.33 asks when get_output() fails (no KV connector here)
