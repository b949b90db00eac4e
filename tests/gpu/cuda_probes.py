#!/usr/bin/env python3
"""CUDA probes on a fixture-shaped engine: overhead per --cuda level and per-step accuracy.

Starts the engine (EngineCore.step → schedule → execute_model), lets it run, and in one
process alternates untraced windows with windows traced at `--cuda off`, `sync` and
`launches`; the engine reports its own mean step() time per half-second window, so
overhead = mean traced step ÷ mean untraced step, per level, with drift hitting all sides.
Then checks the steps traced at `launches`:
- torch engine (GPU box): kernel launches per step against torch.profiler's count of
  launch calls for one identical step, graph launches in CUDA-graph mode, and host time
  blocked in syncs and copies against the GPU time of the step (CUDA events);
- fake engine (here, tests/fixtures/fakecuda): launches against the fixture's constant,
  blocked time against the fake's configured wait.

    python3 tests/gpu/cuda_probes.py --tracer target/release/tracer --engine torch --out DIR
    python3 tests/gpu/cuda_probes.py --tracer target/release/tracer --engine fake --out DIR

Writes DIR/summary.json (every number printed) and with --samples, per mode, one traced
steps.csv and run.json.
"""

import argparse
import bisect
import collections
import csv
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../.."))
LEVELS = ("off", "sync", "launches")


class Lines:
    """A child's text stream, line by line, readable with a timeout."""

    def __init__(self, stream, echo: str):
        self.lines = []
        self.cond = threading.Condition()
        self.read = 0

        def pump():
            for line in stream:
                sys.stdout.write(f"[{echo}] {line}")
                with self.cond:
                    self.lines.append(line.rstrip("\n"))
                    self.cond.notify_all()
            with self.cond:
                self.lines.append(None)
                self.cond.notify_all()

        threading.Thread(target=pump, daemon=True).start()

    def skip_backlog(self) -> None:
        """Forget the lines read so far but not consumed (e.g. rate windows that ended
        before the tracer attached)."""
        with self.cond:
            self.read = max(self.read, len(self.lines) - (self.lines[-1:] == [None]))

    def next(self, prefix: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                while self.read < len(self.lines):
                    line = self.lines[self.read]
                    self.read += 1
                    if line is None:
                        raise RuntimeError(f"stream ended while waiting for {prefix!r}")
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {prefix!r} line within {timeout} s")
                self.cond.wait(left)


def fields(line: str) -> dict:
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def build_fake_libcuda(dir: str) -> str:
    lib = os.path.join(dir, "libcuda.so.1")
    subprocess.run(["gcc", "-O2", "-fPIC", "-shared", "-fno-ipa-icf", "-o", lib,
                    os.path.join(ROOT, "tests/fixtures/fakecuda/fakecuda.c")], check=True)
    return lib


def engine_command(args, mode: str, work: str) -> list:
    common = ["--execute-ms", args.execute_ms, "--rate-every", "0.5", "--warmup", "200",
              *shlex.split(args.engine_args)]
    if args.engine == "torch":
        return [args.python, os.path.join(HERE, "torch_engine.py"), "--mode", mode,
                "--engine-dir", args.engine_dir, "--layers", str(args.layers),
                "--hidden", str(args.hidden), "--tokens", str(args.tokens),
                "--gpu-truth", os.path.join(work, f"{mode}-gpu.csv"), "--"] + common
    return [args.python, os.path.join(args.engine_dir, "run_engine.py"), *common,
            "--fake-cuda", args.fake_lib, "--fake-cuda-launches", str(args.fake_launches),
            "--fake-cuda-graph-launches", "0", "--fake-cuda-wait-us", str(args.fake_wait_us)]


def window(engine: Lines) -> tuple:
    f = fields(engine.next("rate"))
    return int(f["steps"]), int(f["steps"]) * int(f["mean_step_ns"])


def trace_windows(args, engine: Lines, pid: int, level: str, out: str, options=()) -> list:
    tracer = subprocess.Popen([args.tracer, "attach", "--pid", str(pid), "-o", out,
                               "--cuda", level, *options], stderr=subprocess.PIPE, text=True)
    err = Lines(tracer.stderr, f"tracer {level}")
    err.next("tracer: attached", timeout=60)
    engine.skip_backlog()
    engine.next("rate")  # the window the attach landed in
    windows = [window(engine) for _ in range(args.windows)]
    tracer.send_signal(signal.SIGINT)
    if tracer.wait(timeout=60) != 0:
        raise RuntimeError(f"tracer --cuda {level} failed")
    engine.skip_backlog()
    engine.next("rate")  # the window the detach landed in
    return windows


def mean_us(windows: list) -> float:
    return sum(ns for _, ns in windows) / sum(n for n, _ in windows) / 1e3


def side(windows: list) -> dict:
    """Mean step time over the windows, and the spread of the windows' own means."""
    per_window = [ns / n / 1e3 for n, ns in windows]
    return {"step_us": round(mean_us(windows), 2), "steps": sum(n for n, _ in windows),
            "window_sd_us": round(statistics.stdev(per_window), 2) if len(windows) > 1 else 0}


def host_split(steps: list) -> dict:
    """Mean execute split of traced steps (those with CUDA columns)."""
    steps = [s for s in steps if s["exec_gpu_wait_ns"] != ""]
    mean = lambda key: round(statistics.mean(int(s[key]) for s in steps) / 1e3, 2)  # noqa: E731
    return {"steps": len(steps), "exec_launch_host_us": mean("exec_launch_host_ns"),
            "exec_gpu_wait_us": mean("exec_gpu_wait_ns"), "execute_us": mean("execute_ns")}


def read_steps(path: str) -> list:
    with open(path) as f:
        return list(csv.DictReader(f))


def quantiles(values: list) -> dict:
    values = sorted(values)
    if not values:
        return {}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"n": len(values), "p10": pick(0.10), "p50": pick(0.50), "p90": pick(0.90),
            "min": values[0], "max": values[-1]}


def check_accuracy(args, mode: str, profile: dict, steps: list, gpu_rows: list) -> dict:
    # Steps that began before the CUDA probes were in have empty CUDA columns.
    steps = [s for s in steps if s["cuda_launches"] != ""]
    launches = [int(s["cuda_launches"]) for s in steps]
    graphs = [int(s["cuda_graph_launches"]) for s in steps]
    count = lambda values: dict(sorted(collections.Counter(values).items()))  # noqa: E731
    result = {"steps": len(steps),
              "launches_per_step": count(launches),
              "graph_launches_per_step": count(graphs),
              "syncs_per_step": count(int(s["cuda_syncs"]) for s in steps),
              "d2h_per_step": count(int(s["cuda_d2h_copies"]) for s in steps)}
    if args.engine == "torch":
        api = dict(kv.split(":") for kv in profile["api"].split(";") if kv)
        expect_launches = sum(int(n) for name, n in api.items() if "LaunchKernel" in name)
        expect_graphs = sum(int(n) for name, n in api.items() if "GraphLaunch" in name)
        result["profiler"] = {"kernels": int(profile["kernels"]), "api": api,
                              "launch_calls": expect_launches, "graph_launch_calls": expect_graphs}
    else:
        expect_launches, expect_graphs = args.fake_launches, 0
    result["steps_with_expected_launches"] = sum(n == expect_launches for n in launches)
    result["steps_with_expected_graph_launches"] = sum(n == expect_graphs for n in graphs)
    # Host time blocked in syncs and copies against the GPU time of the same step.
    starts = [row[0] for row in gpu_rows]
    blocked, wait, host = [], [], []
    for s in steps:
        exec_start = int(s["start_ns"]) + int(s["schedule_ns"])
        exec_end = exec_start + int(s["execute_ns"])
        i = bisect.bisect_left(starts, exec_start)
        if args.engine == "torch":
            if i == len(gpu_rows) or gpu_rows[i][1] > exec_end:
                continue
            gpu_ns = gpu_rows[i][2]
        else:
            gpu_ns = 2 * args.fake_wait_us * 1000  # the copy and the sync each wait this long
        blocked.append((int(s["cuda_sync_ns"]) + int(s["cuda_d2h_ns"])) / gpu_ns)
        wait.append(int(s["exec_gpu_wait_ns"]) / gpu_ns)
        host.append(int(s["exec_launch_host_ns"]) / 1e3)
    result["paired_steps"] = len(blocked)
    result["sync_plus_d2h_over_gpu_time"] = quantiles(blocked)
    result["exec_gpu_wait_over_gpu_time"] = quantiles(wait)
    result["exec_launch_host_us"] = quantiles(host)
    if gpu_rows:
        result["gpu_time_us"] = quantiles([row[2] / 1e3 for row in gpu_rows])
    return result


def run_mode(args, mode: str, work: str) -> dict:
    started = time.monotonic()
    proc = subprocess.Popen(engine_command(args, mode, work), stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    engine = Lines(proc.stdout, f"engine {mode}")
    profile = fields(engine.next("profile", timeout=300)) if args.engine == "torch" else {}
    pid = int(fields(engine.next("ready", timeout=300))["pid"])
    engine.skip_backlog()
    engine.next("rate")  # settle
    sides = {name: [] for name in ("untraced",) + LEVELS}
    outs = {level: [] for level in LEVELS}
    for r in range(args.rounds):
        sides["untraced"] += [window(engine) for _ in range(args.windows)]
        for level in LEVELS:
            out = os.path.join(work, f"{mode}-{level}-{r}")
            sides[level] += trace_windows(args, engine, pid, level, out)
            outs[level].append(out)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    untraced = mean_us(sides["untraced"])
    overhead = {"untraced": side(sides["untraced"])}
    for level in LEVELS:
        overhead[level] = dict(side(sides[level]),
                               ratio=round(mean_us(sides[level]) / untraced, 4))
    # What the launch probes add to the host's launch work: same split, sync vs launches.
    for level in ("sync", "launches"):
        overhead[level]["split"] = host_split(
            [s for out in outs[level] for s in read_steps(os.path.join(out, "steps.csv"))])
    gpu_rows = []
    gpu_path = os.path.join(work, f"{mode}-gpu.csv")
    if os.path.exists(gpu_path):
        with open(gpu_path) as f:
            gpu_rows = [tuple(int(x) for x in row) for row in list(csv.reader(f))[1:]]
    outs = outs["launches"]
    steps = [s for out in outs for s in read_steps(os.path.join(out, "steps.csv"))]
    accuracy = check_accuracy(args, mode, profile, steps, gpu_rows)
    runs = [json.load(open(os.path.join(out, "run.json")))["cuda"] for out in outs]
    accuracy["outside_steps"] = [r["outside_steps"] for r in runs]
    accuracy["ring_buffer_drops"] = sum(r["ring_buffer_drops"] for r in runs)
    accuracy["libcuda"] = sorted({p["libcuda"] for r in runs for p in r["processes"]})
    accuracy["functions_probed"] = runs[0]["processes"][0]["functions"] if runs[0]["processes"] else []
    if args.samples:
        shutil.copy(os.path.join(outs[0], "steps.csv"), os.path.join(args.out, f"{mode}-steps.csv"))
        shutil.copy(os.path.join(outs[0], "run.json"), os.path.join(args.out, f"{mode}-run.json"))
    return {"overhead": overhead, "accuracy": accuracy,
            "wall_s": round(time.monotonic() - started, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracer", required=True)
    p.add_argument("--engine", choices=("torch", "fake"), required=True)
    p.add_argument("--engine-dir", default=os.path.join(ROOT, "tests/fixtures/engine"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", help="directory for summary.json")
    p.add_argument("--samples", action="store_true",
                   help="also copy one traced steps.csv and run.json per mode to --out")
    p.add_argument("--tag", default="", help="suffix of summary<tag>.json")
    p.add_argument("--modes", default=None,
                   help="comma list (torch: eager,graph; fake: fake)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--windows", type=int, default=4, help="half-second windows per side")
    p.add_argument("--execute-ms", default="0",
                   help="fixture executor's own cost before the model (default 0)")
    p.add_argument("--engine-args", default="",
                   help="more run_engine.py arguments, e.g. '--max-num-seqs 8' for a steadier "
                        "per-step Python cost")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=8192)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--fake-launches", type=int, default=49)
    p.add_argument("--fake-wait-us", type=int, default=1000)
    args = p.parse_args()
    modes = (args.modes or ("eager,graph" if args.engine == "torch" else "fake")).split(",")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        if args.engine == "fake":
            args.fake_lib = build_fake_libcuda(work)
        summary = {"engine": args.engine, "rounds": args.rounds, "windows": args.windows,
                   "modes": {mode: run_mode(args, mode, work) for mode in modes}}
    text = json.dumps(summary, indent=1)
    if args.out:
        with open(os.path.join(args.out, f"summary{args.tag}.json"), "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    for mode, m in summary["modes"].items():
        print(brief(mode, m))
    return 0


def brief(mode: str, m: dict) -> str:
    o, a = m["overhead"], m["accuracy"]
    ratios = " ".join(f"{level} {o[level]['ratio']:.4f} (window sd {o[level]['window_sd_us']} us)"
                      for level in LEVELS)
    profiler = a.get("profiler", {})
    return (f"{mode}: untraced step {o['untraced']['step_us']} us (window sd "
            f"{o['untraced']['window_sd_us']} us); traced/untraced: {ratios}\n"
            f"  execute split, sync level: {o['sync']['split']}\n"
            f"  execute split, launches level: {o['launches']['split']}\n"
            f"  launches/step {a['launches_per_step']} graph launches/step "
            f"{a['graph_launches_per_step']} syncs/step {a['syncs_per_step']} d2h/step "
            f"{a['d2h_per_step']}; profiler launch calls {profiler.get('launch_calls')} graph "
            f"launch calls {profiler.get('graph_launch_calls')} kernels {profiler.get('kernels')}\n"
            f"  (sync+d2h)/gpu time {a['sync_plus_d2h_over_gpu_time']}; gpu us "
            f"{a.get('gpu_time_us')}")


if __name__ == "__main__":
    sys.exit(main())
