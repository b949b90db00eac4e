"""A stand-in for vLLM's model executor: vLLM's engine runs unmodified around it.

It is passed as `distributed_executor_backend="real_vllm_harness.executor.StandInExecutor"`, so
vLLM constructs it inside the EngineCore (child process by default). It answers the start-up
calls the GPU worker would (a KV cache spec per attention layer, memory for the KV cache; the
block count itself comes from `num_gpu_blocks_override`) and, per step, returns what the GPU
model runner returns: one sampled token for each scheduled request whose prefill is complete
after this step, nothing for a request still in a chunked prefill. "Forward" time is a sleep,
so the engine thread blocks off-CPU as it would on a GPU sync.

Also installs the ground-truth monitor (monitor.py) in the EngineCore process, because this
class is constructed there (no sitecustomize needed, nothing of vLLM's edited).
"""

import dataclasses
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from vllm.v1.executor.abstract import Executor
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT

from . import monitor

# vLLM's own executors have sample_tokens (forward in execute_model, sampling there) from ~0.12.
SPLIT_SAMPLING = hasattr(Executor, "sample_tokens")

# What this release's ModelRunnerOutput has (fields come and go between releases).
OUTPUT_FIELDS = {f.name for f in dataclasses.fields(type(EMPTY_MODEL_RUNNER_OUTPUT))}

# Bytes reported free for KV cache: plenty; the block count is fixed by num_gpu_blocks_override.
KV_MEMORY_BYTES = 1 << 30


def _async_scheduling(vllm_config) -> bool:
    return bool(getattr(vllm_config.scheduler_config, "async_scheduling", False))


class _Worker:
    """The start-up RPCs vLLM sends to its workers, answered from the model config."""

    def __init__(self, vllm_config):
        self.vllm_config = vllm_config

    def get_kv_cache_spec(self):
        mc = self.vllm_config.model_config
        hf = mc.hf_config
        fields = {f.name for f in dataclasses.fields(FullAttentionSpec)}
        kwargs = dict(
            block_size=self.vllm_config.cache_config.block_size,
            num_kv_heads=hf.num_key_value_heads,
            head_size=hf.hidden_size // hf.num_attention_heads,
            dtype=mc.dtype if isinstance(mc.dtype, torch.dtype) else torch.float16,
        )
        if "use_mla" in fields:
            kwargs["use_mla"] = False
        spec = FullAttentionSpec(**kwargs)
        return {f"model.layers.{i}.self_attn.attn": spec for i in range(hf.num_hidden_layers)}

    def determine_available_memory(self):
        return KV_MEMORY_BYTES

    def get_supported_kv_cache_layouts(self):
        return ["NHD"]

    def get_supported_tasks(self):
        return ("generate",)

    def supports_draft_weight_updates(self):
        return False

    def get_kv_connector_handshake_metadata(self):
        return None

    def take_draft_token_ids(self):
        return None

    def _noop(self, *args, **kwargs):
        return None

    def compile_or_warm_up_model(self):
        # 0.2x's initialize_from_config takes each worker's compile times (CompilationTimes,
        # a NamedTuple) and reads `.language_model`; 0.18 takes the max of plain seconds;
        # earlier releases ignore what comes back.
        try:
            from vllm.v1.worker.worker_base import CompilationTimes
        except ImportError:
            return 0.0
        return CompilationTimes(*[0.0] * len(CompilationTimes._fields))

    # Calls whose GPU work (allocating caches, warm-up, profiling) has no stand-in equivalent.
    initialize_cache = _noop
    initialize_from_config = _noop
    set_kv_cache_layout = _noop
    check_health = _noop
    shutdown = _noop
    reset_mm_cache = _noop
    reset_encoder_cache = _noop
    profile = _noop
    update_max_model_len = _noop


class StandInExecutor(Executor):
    uses_ray = False

    def _init_executor(self) -> None:
        self.worker = _Worker(self.vllm_config)
        self.forward_s = float(os.environ.get("REAL_VLLM_FORWARD_MS", "2")) / 1e3
        self.per_token_s = float(os.environ.get("REAL_VLLM_PER_TOKEN_US", "10")) / 1e6
        self.book = TokenBook()
        # Async scheduling: forward passes run on this thread, as a GPU runs behind the CPU.
        self.pool = (
            ThreadPoolExecutor(1, thread_name_prefix="standin-gpu")
            if _async_scheduling(self.vllm_config)
            else None
        )
        self.pending: Future | None = None
        monitor.install_from_env(self)

    # 0.10/0.11 ask the executor how many batches may be in flight; 2 gives step_with_batch_queue.
    @property
    def max_concurrent_batches(self) -> int:
        return 2 if _async_scheduling(self.vllm_config) else 1

    @classmethod
    def supports_async_scheduling(cls) -> bool:
        return True

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None, non_block=False, **_):
        if isinstance(method, str):
            fn = getattr(self.worker, method, None)
            if fn is None:
                raise NotImplementedError(f"stand-in worker has no {method!r}")
            result = [fn(*args, **(kwargs or {}))]
        else:
            result = [method(self.worker, *args, **(kwargs or {}))]
        return _done(result) if non_block else result

    def check_health(self) -> None:
        return

    def compile_or_warm_up_model(self) -> None:
        # Nothing to compile; 0.33's base version expects compile times back from workers.
        return

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)

    def execute_model(self, scheduler_output, non_block: bool = False):
        # 0.10's step_with_batch_queue calls execute_model(so) and expects a future.
        want_future = non_block or self.pool is not None
        if self.pool is not None:
            out = self.pool.submit(self._forward, scheduler_output)
        else:
            out = _done(self._forward(scheduler_output))
        if SPLIT_SAMPLING and scheduler_output.total_num_scheduled_tokens > 0:
            # Like the GPU runner: execute_model yields None, sample_tokens the output (with
            # nothing scheduled the runner returns its empty output at once, and vLLM expects
            # that: step_with_batch_queue then skips sample_tokens).
            self.pending = out
            out = _done(None)
        return out if want_future else out.result()

    def sample_tokens(self, grammar_output, non_block: bool = False):
        out, self.pending = self.pending, None
        if out is None:
            out = _done(EMPTY_MODEL_RUNNER_OUTPUT)
        return out if non_block else out.result()

    def take_draft_token_ids(self):
        return None

    def _forward(self, so):
        output = self.book.sample(so)
        if so.total_num_scheduled_tokens:
            time.sleep(self.forward_s + self.per_token_s * so.total_num_scheduled_tokens)
        return output


class TokenBook:
    """What the GPU model runner samples: one token for each scheduled request whose prefill
    is complete after this batch, nothing for a request still in a chunked prefill. Keeps the
    tokens each request has (prompt + sampled): a batch completes the prefill of a request
    when its computed tokens reach that count."""

    def __init__(self):
        self.num_tokens: dict[str, int] = {}

    def sample(self, so):
        for rid in so.finished_req_ids:
            self.num_tokens.pop(rid, None)
        computed = {}
        for new in so.scheduled_new_reqs:
            # 0.34 sends a resumed (preempted) request as a new one, with the prompt and the
            # tokens sampled before in prefill_token_ids (0.33: set only on resume; before:
            # absent, resumed requests come as cached ones and keep our count).
            prefill = getattr(new, "prefill_token_ids", None)
            if prefill is not None:
                self.num_tokens[new.req_id] = len(prefill)
            else:
                self.num_tokens.setdefault(new.req_id, len(new.prompt_token_ids))
            computed[new.req_id] = new.num_computed_tokens
        cached = so.scheduled_cached_reqs
        if isinstance(cached, list):  # before 0.10: one object per request
            for c in cached:
                computed[c.req_id] = c.num_computed_tokens
        else:
            for rid, n in zip(cached.req_ids, cached.num_computed_tokens):
                computed[rid] = n
        if not so.total_num_scheduled_tokens:
            return EMPTY_MODEL_RUNNER_OUTPUT  # no forward pass for an empty batch
        req_ids = list(so.num_scheduled_tokens)
        sampled = []
        for rid in req_ids:
            total = self.num_tokens[rid]
            if computed[rid] + so.num_scheduled_tokens[rid] >= total:
                sampled.append([100 + total % 800])
                self.num_tokens[rid] = total + 1
            else:
                sampled.append([])
        fields = dict(req_ids=req_ids, sampled_token_ids=sampled)
        if "req_id_to_index" in OUTPUT_FIELDS:  # gone in 0.34
            fields["req_id_to_index"] = {rid: i for i, rid in enumerate(req_ids)}
        return dataclasses.replace(EMPTY_MODEL_RUNNER_OUTPUT, **fields)


def _done(value) -> Future:
    f = Future()
    f.set_result(value)
    return f
