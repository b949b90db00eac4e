#!/usr/bin/env python3
"""What the scheduler snapshots cost, on any machine with Python (no cargo needed): the
fixture engine, with untraced half-second windows alternating with windows traced
`--phases-only` and traced by default (phases + snapshots), in one process; prints the
mean step() ratios and the tracer's own per-step snapshot time (steps.csv `tracer_ns`).

    python3 tests/gpu/snapshot_overhead.py --tracer target/release/tracer --out DIR

`cargo xtask bench` is the same measurement where cargo is.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from cuda_probes import ROOT, Lines, fields, mean_us, read_steps, trace_windows, window

MODES = {"phases-only": ["--phases-only"], "default": []}


def measure(args, execute_ms: str, work: str) -> dict:
    engine_cmd = [args.python, os.path.join(ROOT, "tests/fixtures/engine/run_engine.py"),
                  "--execute-ms", execute_ms, "--rate-every", "0.5", "--warmup", "200"]
    proc = subprocess.Popen(engine_cmd, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    engine = Lines(proc.stdout, f"engine {execute_ms} ms")
    pid = int(fields(engine.next("ready", timeout=120))["pid"])
    engine.skip_backlog()
    engine.next("rate")  # settle
    sides = {"untraced": [], **{mode: [] for mode in MODES}}
    tracer_ns = {mode: [] for mode in MODES}
    for r in range(args.rounds):
        sides["untraced"] += [window(engine) for _ in range(args.windows)]
        for mode, options in MODES.items():
            out = os.path.join(work, f"{execute_ms}-{mode}-{r}")
            sides[mode] += trace_windows(args, engine, pid, "off", out, options)
            tracer_ns[mode] += [int(s["tracer_ns"] or 0) for s in read_steps(os.path.join(out, "steps.csv"))]
    proc.terminate()
    proc.wait(timeout=60)
    untraced = mean_us(sides["untraced"])
    result = {"execute_ms": execute_ms, "untraced_step_us": round(untraced, 1)}
    for mode in MODES:
        result[mode] = {"step_us": round(mean_us(sides[mode]), 1),
                        "ratio": round(mean_us(sides[mode]) / untraced, 4),
                        "tracer_ns_p50": statistics.median(tracer_ns[mode])}
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracer", required=True)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", help="directory for snapshot_overhead.json")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--windows", type=int, default=4, help="half-second windows per side")
    p.add_argument("--execute-ms", nargs="+", default=["0.2", "1", "5"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = [measure(args, ms, work) for ms in args.execute_ms]
    for r in results:
        print(json.dumps(r))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "snapshot_overhead.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
