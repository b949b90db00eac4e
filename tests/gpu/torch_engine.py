#!/usr/bin/env python3
"""The fixture engine (tests/fixtures/engine) with a real model forward on CUDA.

`EngineCore.step` → `schedule()` → `execute_model()`, where execute_model runs, after the
fixture's own bookkeeping, an MLP of LAYERS × (Linear(HIDDEN, HIDDEN, bf16) + ReLU) on
TOKENS rows, an argmax, and copies the sampled ids to the host with `.cpu()` (a
device-to-host copy and a sync), eagerly or as one CUDA graph replay.

Before the fixture's `ready` line it prints, from torch.profiler over one execute:
    profile mode=<mode> kernels=<GPU kernels> api=<runtime/driver calls by name>
With --gpu-truth PATH it writes one row per execute at exit:
    exec_start_ns,exec_end_ns,gpu_ns
(CLOCK_MONOTONIC around the model part; GPU time between CUDA events around the forward.)

Usage: python3 torch_engine.py [--mode eager|graph] [...] -- <run_engine.py arguments>
"""

import argparse
import collections
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


class TorchExecutor:
    """Wraps the fixture's executor (which builds the output the scheduler expects)."""

    def __init__(self, base, mode: str, layers: int, hidden: int, tokens: int):
        self.base = base
        self.vllm_config = base.vllm_config
        torch.manual_seed(0)
        device = torch.device("cuda")
        self.layers = [torch.nn.Linear(hidden, hidden, dtype=torch.bfloat16, device=device)
                       for _ in range(layers)]
        self.x = torch.randn(tokens, hidden, dtype=torch.bfloat16, device=device)
        self.gpu_start = torch.cuda.Event(enable_timing=True)
        self.gpu_end = torch.cuda.Event(enable_timing=True)
        self.rows = []
        self.graph = None
        if mode == "graph":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.graph_out = self._forward()
        for _ in range(10):
            self.run_model()

    @torch.no_grad()
    def _forward(self):
        h = self.x
        for layer in self.layers:
            h = torch.relu(layer(h))
        return h.argmax(dim=-1)

    def run_model(self):
        self.gpu_start.record()
        if self.graph is not None:
            self.graph.replay()
            out = self.graph_out
        else:
            out = self._forward()
        self.gpu_end.record()
        return out.cpu()  # the sampled ids to the host: a D2H copy and a sync

    def execute_model(self, scheduler_output):
        output = self.base.execute_model(scheduler_output)
        t0 = time.monotonic_ns()
        self.run_model()
        t1 = time.monotonic_ns()
        self.rows.append((t0, t1, round(self.gpu_start.elapsed_time(self.gpu_end) * 1e6)))
        return output

    def profile(self, mode: str) -> str:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            self.run_model()
        torch.cuda.synchronize()
        kernels = 0
        api = collections.Counter()
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                if not event.name.startswith(("Memcpy", "Memset")):
                    kernels += 1
            elif event.name.startswith("cu"):
                api[event.name] += 1
        calls = ";".join(f"{name}:{n}" for name, n in sorted(api.items()))
        return f"profile mode={mode} kernels={kernels} api={calls}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine-dir", default=os.path.join(HERE, "../fixtures/engine"))
    p.add_argument("--mode", choices=("eager", "graph"), default="eager")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=8192)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--gpu-truth", metavar="PATH")
    args, rest = p.parse_known_args()
    if rest[:1] == ["--"]:
        rest = rest[1:]

    sys.path.insert(0, os.path.abspath(args.engine_dir))
    import run_engine

    executors = []
    build_engine = run_engine.build_engine

    def build_with_model(*a, **k):
        engine = build_engine(*a, **k)
        executor = TorchExecutor(engine.model_executor, args.mode, args.layers, args.hidden,
                                 args.tokens)
        print(executor.profile(args.mode), flush=True)
        engine.model_executor = executor
        executors.append(executor)
        return engine

    run_engine.build_engine = build_with_model
    status = run_engine.main(rest)
    if args.gpu_truth and executors:
        with open(args.gpu_truth, "w") as f:
            f.write("exec_start_ns,exec_end_ns,gpu_ns\n")
            for row in executors[0].rows:
                f.write(",".join(map(str, row)) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
