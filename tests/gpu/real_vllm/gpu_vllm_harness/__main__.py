"""Drive real vLLM (real GPU executor, dummy weights, token-id prompts) with a workload.

    python3 -m gpu_vllm_harness --out DIR [options]   (PYTHONPATH holds vLLM and this dir)

Prints `ready {json}` (EngineCore pid and tid) once the engine is up and warm, waits for
--wait-go (a file) if given, runs the workload, writes DIR/stats.csv (vLLM's own per-request
stats) and DIR/args.json, prints `summary {json}`. The EngineCore writes the per-batch ground
truth (monitor.py) when GPU_GT_DIR is set, which this sets to DIR.

Workloads: --in-flight N keeps N requests in flight (closed loop) for --requests requests;
--rate R sends them as Poisson arrivals; --burst sends all at once.
"""

import argparse
import csv
import json
import os
import random
import sys
import time

SHAPES = {
    # Llama-3.2-1B and Llama-3-8B shapes (no weights: load_format=dummy).
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8),
}  # fmt: skip


def parse_range(text):
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_vllm_harness", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shape", choices=SHAPES, default="1b")
    p.add_argument("--requests", type=int, default=400)
    w = p.add_mutually_exclusive_group()
    w.add_argument("--in-flight", type=int, default=128, help="closed loop (default 128)")
    w.add_argument("--rate", type=float, help="Poisson arrivals per second")
    w.add_argument("--burst", action="store_true", help="all requests at once")
    p.add_argument("--prompt-len", type=parse_range, default=(100, 1000))
    p.add_argument("--output-len", type=parse_range, default=(50, 300))
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--no-async-scheduling", action="store_true")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--tp", type=int, default=1, help="tensor_parallel_size")
    p.add_argument("--executor", choices=("uni", "mp"),
                   help="distributed_executor_backend (vLLM's default: uni for one GPU, "
                        "mp for more; mp with --tp 1 runs the model in one worker process)")
    p.add_argument("--warmup", type=int, default=32, help="requests served before ready")
    p.add_argument("--wait-go", help="start the workload once this file exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-monitor", action="store_true",
                   help="no ground truth in the EngineCore (throughput windows: sys.monitoring "
                        "costs the engine time of its own)")
    p.add_argument("--progress", type=float, metavar="SECONDS",
                   help="print `tokens <monotonic_ns> <output tokens so far>` this often")
    return p.parse_args(argv)


def write_model(path, shape):
    os.makedirs(path, exist_ok=True)
    config = dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
        torch_dtype="bfloat16", hidden_act="silu", tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, **SHAPES[shape],
    )  # fmt: skip
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


def main(argv):
    a = parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    if not a.no_monitor:
        os.environ["GPU_GT_DIR"] = out
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

    import vllm
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    args = EngineArgs(
        model=write_model(os.path.join(out, "model"), a.shape), load_format="dummy",
        skip_tokenizer_init=True, max_model_len=2048, seed=a.seed,
        gpu_memory_utilization=a.gpu_memory_utilization, enforce_eager=a.enforce_eager,
        async_scheduling=not a.no_async_scheduling, disable_log_stats=False,
        tensor_parallel_size=a.tp, distributed_executor_backend=a.executor,
    )  # fmt: skip
    t0 = time.monotonic()
    engine = LLMEngine.from_engine_args(args)
    startup_s = time.monotonic() - t0
    rng = random.Random(a.seed)

    def request(i, prefix="req"):
        n = rng.randint(*a.prompt_len)
        prompt = [rng.randrange(100, 30000) for _ in range(n)]
        params = SamplingParams(max_tokens=rng.randint(*a.output_len), ignore_eos=True,
                                detokenize=False)
        return f"{prefix}-{i}", prompt, params

    for i in range(a.warmup):
        rid, prompt, params = request(i, "warm")
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
    while engine.has_unfinished_requests():
        engine.step()
    engine_info = {}
    for name in os.listdir(out):
        if name.startswith("engine_") and name.endswith(".json"):
            with open(os.path.join(out, name)) as f:
                info = json.load(f)
            if os.path.getsize(os.path.join(out, f"gt_batches_{info['pid']}.csv")) > 200:
                engine_info = info
    engine_info.update(version=vllm.__version__, harness_pid=os.getpid(),
                       startup_s=round(startup_s, 1))
    print("ready " + json.dumps(engine_info), flush=True)
    if a.wait_go:
        while not os.path.exists(a.wait_go):
            time.sleep(0.01)

    # Made as they are sent: a long closed loop (windows.sh) would first build them all.
    def arrivals():
        t = 0.0
        for i in range(a.requests):
            t += rng.expovariate(a.rate) if a.rate else 0.0
            yield t, i

    upcoming = arrivals()
    following = next(upcoming, None)
    states, finals = {}, {}
    produced, lengths, next_progress = 0, {}, 0.0
    start = time.monotonic()
    while following is not None or engine.has_unfinished_requests():
        now = time.monotonic() - start
        while following is not None and (
            (a.rate and following[0] <= now)
            or a.burst
            or (not a.rate and len(states) - len(finals) < a.in_flight)
        ):
            rid, prompt, params = request(following[1])
            following = next(upcoming, None)
            internal = engine.add_request(rid, {"prompt_token_ids": prompt}, params) or rid
            states[rid] = (internal, engine.output_processor.request_states[internal].stats,
                           params.max_tokens, len(prompt))
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, following[0] - (time.monotonic() - start)))
            continue
        for o in engine.step():
            if a.progress:
                n = len(o.outputs[0].token_ids)
                produced += n - lengths.get(o.request_id, 0)
                lengths[o.request_id] = n
            if o.finished:
                finals[o.request_id] = o
                lengths.pop(o.request_id, None)
        if a.progress and time.monotonic() >= next_progress:
            print(f"tokens {time.monotonic_ns()} {produced}", flush=True)
            next_progress = time.monotonic() + a.progress
    run_s = time.monotonic() - start
    with open(os.path.join(out, "stats.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "engine_request_id", "arrival_time", "queued_ts", "scheduled_ts", "first_token_ts",
                    "last_token_ts", "num_prompt_tokens", "num_output_tokens",
                    "num_preemptions", "finish_reason", "max_tokens"])
        for rid, (internal, s, max_tokens, prompt_len) in states.items():
            o = finals.get(rid)
            w.writerow([rid, internal, s.arrival_time, s.queued_ts, s.scheduled_ts, s.first_token_ts,
                        s.last_token_ts, prompt_len,
                        len(o.outputs[0].token_ids) if o else "",
                        getattr(s, "num_preemptions", ""),
                        o.outputs[0].finish_reason if o else "", max_tokens])
    out_tokens = sum(len(o.outputs[0].token_ids) for o in finals.values())
    summary = dict(vars(a), run_s=round(run_s, 2), finished=len(finals),
                   output_tokens=out_tokens, tok_per_s=round(out_tokens / run_s))
    with open(os.path.join(out, "args.json"), "w") as f:
        json.dump(summary, f)
    print("summary " + json.dumps(summary), flush=True)
    engine.engine_core.shutdown()
    return 0 if len(finals) == a.requests else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
