"""Throughput per window and level from windows.sh's output (prints `windows {json}`)."""

import bisect
import csv
import json
import os
import statistics
import sys


def main(out):
    marks = []
    with open(os.path.join(out, "harness.log")) as f:
        for line in f:
            if line.startswith("tokens "):
                _, t, n = line.split()
                marks.append((int(t), int(n)))
    times = [t for t, _ in marks]

    def produced_at(t):
        i = bisect.bisect_left(times, t)
        if i == 0 or i == len(marks):
            raise SystemExit(f"window edge {t} outside the harness's progress lines")
        (t0, n0), (t1, n1) = marks[i - 1], marks[i]
        return n0 + (n1 - n0) * (t - t0) / (t1 - t0)

    rates, holds = {}, {}
    with open(os.path.join(out, "windows.txt")) as f:
        for line in f:
            _, level, t0, t1, d = line.split()
            t0, t1 = int(t0), int(t1)
            rates.setdefault(level, []).append((produced_at(t1) - produced_at(t0)) / ((t1 - t0) / 1e9))
            steps = os.path.join(d, "steps.csv")
            if os.path.exists(steps):
                with open(steps) as s:
                    holds.setdefault(level, []).extend(
                        int(r["tracer_ns"]) for r in csv.DictReader(s) if r["tracer_ns"])
            shadow = os.path.join(d, "run.json")
            if os.path.exists(shadow):
                with open(shadow) as s:
                    c = json.load(s)["counters"].get("shadow")
                if c:
                    holds.setdefault(level + "_shadow", []).append(c)
    base = statistics.mean(rates["untraced"])
    result = {}
    for level, r in rates.items():
        result[level] = {
            "windows": len(r), "tok_per_s_mean": round(statistics.mean(r)),
            "ratio_to_untraced": round(statistics.mean(r) / base, 4),
            "ratio_min": round(min(r) / base, 4), "ratio_max": round(max(r) / base, 4),
        }
        h = sorted(holds.get(level, []))
        if h:
            result[level]["tracer_ns_p50"] = h[len(h) // 2]
            result[level]["tracer_ns_p99"] = h[int(len(h) * 0.99)]
        if holds.get(level + "_shadow"):
            result[level]["shadow"] = holds[level + "_shadow"]
    print("windows " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
