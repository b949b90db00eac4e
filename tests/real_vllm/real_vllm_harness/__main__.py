"""Drive a real vLLM V1 engine (stand-in executor) with a Poisson workload of token-id prompts.

    python -m real_vllm_harness --out DIR [options]      (PYTHONPATH must hold tests/real_vllm)

Prints, on stdout, one `ready {json}` line once the engine is up (EngineCore pid, the engine
thread's native tid, vLLM version, mode) and one `summary {json}` line at the end; exits 1 if
the ground truth and vLLM's stats disagree (every request finished, in both, with the tokens
asked for; steps ran; preemption counts match where vLLM counts them). Writes to
--out: gt_steps.csv, gt_requests.csv, engine.json (from inside the EngineCore, monitor.py) and
stats.csv (vLLM's own per-request stats, read from the front end's request states).
"""

import argparse
import bisect
import csv
import dataclasses
import json
import os
import random
import sys
import time


def parse_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    return int(lo), int(hi or lo)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="real_vllm_harness", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--model-dir", help="where the tiny Llama config is written (default: OUT/model)"
    )
    p.add_argument("--requests", type=int, default=200)
    p.add_argument(
        "--rate", type=float, default=50.0, help="Poisson arrivals per second; 0: all at once"
    )
    p.add_argument("--prompt-len", type=parse_range, default=(32, 512), help="MIN:MAX, uniform")
    p.add_argument("--output-len", type=parse_range, default=(8, 128), help="MIN:MAX, uniform")
    p.add_argument("--prefix-groups", type=int, default=4, help="prompts share one of N prefixes")
    p.add_argument("--prefix-len", type=int, default=64, help="tokens of the shared prefix")
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--num-blocks", type=int, default=128, help="KV blocks (small: preemption)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--in-process", action="store_true", help="VLLM_ENABLE_V1_MULTIPROCESSING=0")
    p.add_argument(
        "--async-scheduling", action="store_true",
        help="AsyncScheduler, 2 batches in flight: EngineCore.step_with_batch_queue",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=0,
        help="tensor parallel over N worker processes: vLLM's MultiprocExecutor and Worker"
        " around a stand-in model runner (workers.py); needs --fake-cuda",
    )  # fmt: skip
    p.add_argument("--fake-cuda", help="the fake libcuda.so.1 the workers' runners call")
    p.add_argument("--forward-ms", type=float, default=2.0, help="stand-in forward time per step")
    p.add_argument("--per-token-us", type=float, default=10.0, help="plus this per scheduled token")
    p.add_argument("--wait-go", help="send requests only once this file exists")
    p.add_argument(
        "--warmup", type=int, default=0,
        help="run this many small requests (ids warm-N) before `ready`, as a server that has"
        " served before a tracer attaches",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--expect-preemption", action="store_true", help="fail if nothing was preempted")
    p.add_argument("--facts", help="write live facts (JSON) here; needs --in-process")
    return p.parse_args(argv)


def write_model_config(path: str) -> str:
    """A tiny random-size Llama: a valid config is all the engine needs (no weights are loaded)."""
    if not os.path.exists(os.path.join(path, "config.json")):
        from transformers import LlamaConfig

        cfg = LlamaConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        )  # fmt: skip
        cfg.architectures = ["LlamaForCausalLM"]
        cfg.save_pretrained(path)
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        # 0.8's V1 LLMEngine loads a tokenizer even with skip_tokenizer_init: one word per id.
        # Written by hand: what transformers would save names its own version's classes.
        from tokenizers import Tokenizer, models

        vocab = {f"t{i}": i for i in range(1024)}
        Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0")).save(
            os.path.join(path, "tokenizer.json")
        )
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "t0"}, f)
    return path


def main(argv) -> int:
    a = parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    # Read by the stand-in executor and the monitor inside the EngineCore (env is inherited).
    os.environ["REAL_VLLM_GT_DIR"] = out
    os.environ["REAL_VLLM_FORWARD_MS"] = str(a.forward_ms)
    os.environ["REAL_VLLM_PER_TOKEN_US"] = str(a.per_token_us)
    os.environ["REAL_VLLM_ASYNC_SCHEDULING"] = "1" if a.async_scheduling else "0"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if a.in_process else "1"
    # No network here: don't let Hugging Face or vLLM's usage stats try to reach it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_USE_V1", "1")  # 0.8.x picks V0 or V1 by itself
    # 0.34's CPU platform refuses x86 unless Triton has a CPU backend, or CUDA_VISIBLE_DEVICES
    # is set and empty (vllm/triton_utils/importing.py: "distributed environment"); no GPU is
    # used here, so empty hides nothing.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if a.facts and not a.in_process:
        sys.exit("--facts needs --in-process (it inspects the live EngineCore)")
    if a.workers:
        if not a.fake_cuda:
            sys.exit("--workers needs --fake-cuda (the workers' runners launch on it)")
        os.environ["REAL_VLLM_FAKE_CUDA"] = os.path.abspath(a.fake_cuda)
        # 0.33's MultiprocExecutor binds each CPU worker's OpenMP threads to a NUMA node of
        # its own, and refuses more workers than nodes; nothing here computes on them.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

    import vllm
    from vllm import SamplingParams
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    model = write_model_config(a.model_dir or os.path.join(out, "model"))
    kwargs = dict(
        model=model,
        skip_tokenizer_init=True,
        max_model_len=a.max_model_len,
        max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens,
        enable_chunked_prefill=True,
        enable_prefix_caching=not a.no_prefix_caching,
        block_size=a.block_size,
        num_gpu_blocks_override=a.num_blocks,
        async_scheduling=a.async_scheduling,
        distributed_executor_backend="real_vllm_harness.executor.StandInExecutor",
        disable_log_stats=False,
        enforce_eager=True,
        seed=a.seed,
    )
    if a.workers:
        try:
            from . import workers
        except ImportError as e:
            return unsupported(out, f"vLLM {vllm.__version__} lacks what --workers uses: {e}")
        workers.Group.create(os.path.join(out, workers.GROUP_FILE), a.workers)
        kwargs.update(
            distributed_executor_backend="mp",
            worker_cls="real_vllm_harness.workers.StandInWorker",
            tensor_parallel_size=a.workers,
        )
    # Releases differ in their EngineArgs: pass what this one has; a shape it cannot run is
    # "unsupported" (exit 3, the reason in unsupported.txt), not a failure.
    known = {f.name for f in dataclasses.fields(EngineArgs)}
    if a.async_scheduling and "async_scheduling" not in known:
        return unsupported(out, f"vLLM {vllm.__version__} has no EngineArgs.async_scheduling")

    def build(**override):
        args = {k: v for k, v in {**kwargs, **override}.items() if k in known or v}
        return LLMEngine.from_engine_args(EngineArgs(**args))

    t0 = time.monotonic()
    try:
        engine = build()
    except Exception as e:
        # 0.8 and 0.9 take a custom executor as the class itself, not its dotted path (0.9:
        # pydantic's "Input should be a type", raised by EngineArgs or its config).
        said = str(e).replace("_", " ")
        refused = "async scheduling only supports"
        if refused in said:
            return async_refused(out, vllm.__version__)
        if "distributed executor backend" not in said and "StandInExecutor" not in str(e):
            raise
        from .executor import StandInExecutor

        try:
            engine = build(distributed_executor_backend=StandInExecutor)
        except Exception as e2:
            if refused not in str(e2):
                raise
            return async_refused(out, vllm.__version__)
    startup_s = time.monotonic() - t0
    for i in range(a.warmup):
        engine.add_request(
            f"warm-{i}",
            {"prompt_token_ids": list(range(10, 10 + 2 * a.block_size))},
            SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False),
        )
    while engine.has_unfinished_requests():
        engine.step()
    with open(os.path.join(out, "args.json"), "w") as f:
        json.dump(
            {
                "model": model,
                "max_model_len": a.max_model_len,
                "max_num_seqs": a.max_num_seqs,
                "max_num_batched_tokens": a.max_num_batched_tokens,
                "block_size": a.block_size,
                "num_gpu_blocks": a.num_blocks,
                "enable_prefix_caching": not a.no_prefix_caching,
                "async_scheduling": a.async_scheduling,
                "in_process": a.in_process,
                "workers": a.workers,
                "requests": a.requests,
            },
            f,
        )
    with open(os.path.join(out, "engine.json")) as f:
        info = json.load(f)
    info.update(
        version=vllm.__version__,
        mode="inproc" if a.in_process else "mp",
        harness_pid=os.getpid(),
        startup_s=round(startup_s, 2),
    )
    print("ready " + json.dumps(info), flush=True)

    if a.wait_go:
        while not os.path.exists(a.wait_go):
            time.sleep(0.01)

    rng = random.Random(a.seed)
    prefixes = [
        [rng.randrange(10, 1000) for _ in range(a.prefix_len)]
        for _ in range(max(a.prefix_groups, 1))
    ]
    workload, t = [], 0.0
    for i in range(a.requests):
        t += rng.expovariate(a.rate) if a.rate > 0 else 0.0
        n = rng.randint(*a.prompt_len)
        prompt = (rng.choice(prefixes) if a.prefix_groups else [])[:n]
        prompt += [rng.randrange(10, 1000) for _ in range(n - len(prompt))]
        workload.append((t, f"req-{i}", prompt, rng.randint(*a.output_len)))

    states, finals = {}, {}
    start = time.monotonic()
    pending = list(reversed(workload))
    while pending or engine.has_unfinished_requests():
        now = time.monotonic() - start
        while pending and pending[-1][0] <= now:
            _, rid, prompt, max_tokens = pending.pop()
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, detokenize=False)
            internal = engine.add_request(rid, {"prompt_token_ids": prompt}, params) or rid
            if internal not in engine.output_processor.request_states:
                # 0.14 adds a suffix to the id inside the engine and returns None.
                internal = next(
                    k for k in engine.output_processor.request_states if k.startswith(rid + "-")
                )
            # vLLM's own per-request stats object; the output processor updates it in place.
            # None where the release keeps none (0.8's LLMEngine: log_stats=False, FIXME).
            states[rid] = (
                internal,
                engine.output_processor.request_states[internal].stats,
                max_tokens,
                time.monotonic(),
            )
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[-1][0] - (time.monotonic() - start)))
            continue
        for o in engine.step():
            if o.finished:
                finals[o.request_id] = o
    run_s = time.monotonic() - start

    write_stats(os.path.join(out, "stats.csv"), states, finals)
    if a.facts:
        from .facts import live_facts

        with open(a.facts, "w") as f:
            json.dump(live_facts(engine), f, indent=1)
    info["threads"] = thread_names(info["pid"])
    shutdown(engine)
    summary = summarize(out, a, run_s, info)
    print("summary " + json.dumps(summary), flush=True)
    problems = check(summary, a)
    for p in problems:
        print(f"check failed: {p}", file=sys.stderr)
    return 1 if problems else 0


UNSUPPORTED = 3
SHUTDOWN_TIMEOUT_S = 30


def async_refused(out: str, version: str) -> int:
    # Passing "uni" and swapping the stand-in in later (platform plugin) does not help: the
    # EngineCore child validates its config again (0.14.1, measured).
    return unsupported(
        out,
        f"vLLM {version} refuses async scheduling with any executor but mp, uni or"
        " external_launcher (VllmConfig), so not with the stand-in",
    )
_shutdown_hung = False


def shutdown(engine) -> None:
    """Shuts the engine down, waiting at most SHUTDOWN_TIMEOUT_S: 0.8.5's multiprocess client
    once never returned from shutdown() although its EngineCore had exited (1 run in 3)."""
    global _shutdown_hung
    import threading

    t = threading.Thread(target=engine.engine_core.shutdown, daemon=True)
    t.start()
    t.join(SHUTDOWN_TIMEOUT_S)
    if t.is_alive():
        _shutdown_hung = True
        print(f"engine shutdown() still running after {SHUTDOWN_TIMEOUT_S} s", file=sys.stderr)


def unsupported(out: str, why: str) -> int:
    with open(os.path.join(out, "unsupported.txt"), "w") as f:
        f.write(why + "\n")
    print(f"unsupported: {why}", file=sys.stderr)
    return UNSUPPORTED


STATS_COLUMNS = [
    "request_id", "engine_request_id", "arrival_time", "queued_ts", "scheduled_ts",
    "first_token_ts", "last_token_ts", "num_prompt_tokens", "num_output_tokens",
    "num_cached_tokens", "num_preemptions", "finish_reason", "max_tokens", "added_ts",
]  # fmt: skip


def write_stats(path, states, finals):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(STATS_COLUMNS)
        for rid, (internal, s, max_tokens, added) in states.items():
            o = finals.get(rid)
            done = o.outputs[0] if o else None
            times = (
                [s.arrival_time, s.queued_ts, s.scheduled_ts, s.first_token_ts, s.last_token_ts]
                if s is not None
                else [""] * 5
            )
            w.writerow(
                [
                    rid, internal, *times,
                    len(o.prompt_token_ids) if o else "", len(done.token_ids) if done else "",
                    o.num_cached_tokens if o else "", getattr(s, "num_preemptions", ""),
                    done.finish_reason if done else "", max_tokens, added,
                ]
            )  # fmt: skip


def thread_names(pid: int) -> dict[str, str]:
    names = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names[tid] = f.read().strip()
    return names


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarize(out, a, run_s, info):
    # A step's first row: SystemExit raised in the monitor's callback after its write writes it
    # again as raised (monitor.py, _write_row).
    steps, seen = [], set()
    for s in read_csv(os.path.join(out, "gt_steps.csv")):
        if s["step"] not in seen:
            seen.add(s["step"])
            steps.append(s)
    # The workload's requests only (--facts adds one of its own).
    freed = [
        r
        for r in read_csv(os.path.join(out, "gt_requests.csv"))
        if r["request_id"].startswith("req-")
    ]
    stats = read_csv(os.path.join(out, "stats.csv"))
    executed = [s for s in steps if s["scheduled_tokens"] not in ("", "0")]
    # vLLM stamps scheduled_ts (time.monotonic()) at the start of schedule(): the same clock
    # as the monitor's, so each must fall inside a schedule() call the monitor saw.
    calls = sorted(
        (int(s["schedule_start_ns"]), int(s["schedule_end_ns"]))
        for s in steps
        if s["schedule_start_ns"] and s["schedule_end_ns"]
    )
    starts = [c[0] for c in calls]

    def in_schedule_call(ts: float) -> bool:
        i = bisect.bisect_right(starts, round(ts * 1e9)) - 1
        return i >= 0 and calls[i][0] <= round(ts * 1e9) <= calls[i][1]

    return {
        "version": info["version"],
        "mode": info["mode"],
        "engine_pid": info["pid"],
        "engine_comm": info["comm"],
        "engine_title": info["title"],
        "engine_process_name": info["process_name"],
        "engine_threads": info["threads"],
        "run_s": round(run_s, 2),
        "step_calls": len(steps),
        # vLLM's SIGTERM handler raises SystemExit, which may end a step in flight at shutdown.
        "steps_raised": sum(s["raised"] not in ("", "SystemExit") for s in steps),
        "step_fns": sorted({s["step_fn"] for s in steps}),
        "steps_scheduled": len(executed),
        "scheduled_tokens": sum(int(s["scheduled_tokens"]) for s in executed),
        "preempted_gt": sum(int(s["preempted"] or 0) for s in steps),
        "max_running": max((int(s["running"]) for s in executed), default=0),
        "min_kv_free_blocks": min((int(s["kv_free_blocks"]) for s in executed), default=None),
        "requests": a.requests,
        "freed_in_engine": len(freed),
        "freed_finished": sum(r["status"].startswith("FINISHED") for r in freed),
        "finished_in_frontend": sum(r["finish_reason"] != "" for r in stats),
        "preemptions_stats": sum(int(r["num_preemptions"] or 0) for r in stats),
        "cached_tokens": sum(int(r["num_cached_tokens"] or 0) for r in stats),
        "output_tokens": sum(int(r["num_output_tokens"] or 0) for r in stats),
        "output_tokens_gt": sum(int(r["num_output_tokens"]) for r in freed),
        "expected_output_tokens": sum(int(r["max_tokens"]) for r in stats),
        "scheduled_ts_outside_schedule": sum(
            not in_schedule_call(float(r["scheduled_ts"])) for r in stats if r["scheduled_ts"]
        ),
        # Releases whose LLMEngine keeps no per-request stats (0.8): times not compared.
        "requests_without_stats": sum(not r["queued_ts"] for r in stats),
    }


def check(s, a) -> list[str]:
    problems = []
    if s["steps_raised"]:
        problems.append(f"{s['steps_raised']} step calls raised")
    if s["steps_scheduled"] == 0:
        problems.append("no step scheduled anything")
    for key in ("freed_in_engine", "freed_finished", "finished_in_frontend"):
        if s[key] != a.requests:
            problems.append(f"{key} = {s[key]}, expected {a.requests}")
    if not s["output_tokens"] == s["output_tokens_gt"] == s["expected_output_tokens"]:
        problems.append(
            f"output tokens: frontend {s['output_tokens']}, engine {s['output_tokens_gt']},"
            f" expected {s['expected_output_tokens']}"
        )
    if s["scheduled_ts_outside_schedule"]:
        problems.append(
            f"{s['scheduled_ts_outside_schedule']} requests' vLLM scheduled_ts lie outside"
            " every schedule() call the monitor saw"
        )
    if a.expect_preemption and s["preempted_gt"] == 0:
        problems.append("no preemption happened")
    if s["preemptions_stats"] and s["preemptions_stats"] != s["preempted_gt"]:
        problems.append(
            f"preemptions: vLLM stats {s['preemptions_stats']}, observed {s['preempted_gt']}"
        )
    return problems


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if _shutdown_hung:  # its threads would hold the interpreter's exit too
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
