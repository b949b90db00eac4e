"""Compare a tracer's output with the GPU harness's ground truth and vLLM's own stats.

    python3 -m gpu_vllm_harness.check --harness DIR --trace DIR [--capture-max 256]

Prints one `check {json}` line and exits 1 when an exact check fails: a ground-truth batch
without its row (matched by start time, then its scheduled tokens must be equal), a row whose
CUDA pattern (eager: kernel launches and no graph; graph: a graph launch) disagrees with its
own scheduled tokens vs the largest CUDA-graph capture size, or a request whose id, prompt
or output token count or finish status differs from vLLM's. Times are reported (µs
distributions), not bounded.
"""

import argparse
import bisect
import csv
import glob
import json
import os
import statistics
import sys


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dist(errors):
    if not errors:
        return None
    mags = sorted(abs(e) / 1e3 for e in errors)
    return {
        "n": len(mags),
        "signed_median_us": round(statistics.median(errors) / 1e3, 1),
        "p50_us": round(mags[len(mags) // 2], 1),
        "p99_us": round(mags[min(len(mags) - 1, int(len(mags) * 0.99))], 1),
    }


def union(spans):
    total, cur = 0, None
    for a, b in sorted(spans):
        if cur and a <= cur[1]:
            cur = (cur[0], max(cur[1], b))
        else:
            if cur:
                total += cur[1] - cur[0]
            cur = (a, b)
    return total + (cur[1] - cur[0] if cur else 0)


CALLS = ("cuda_launches", "cuda_graph_launches", "cuda_syncs", "cuda_d2h_copies")


def ranks_report(trace, run, rows, cuda_rows, expected, problems):
    """Per worker rank (ranks.csv): rows, calls, GPU wait; whether every CUDA row has each
    rank's share, the ranks' launches agree (under async scheduling only the output rank
    syncs, in its output thread), and they add up to the row's; how the workers' batches
    were marked (run.json)."""
    path = os.path.join(trace, "ranks.csv")
    shares = read_csv(path) if os.path.exists(path) else []
    by_step = {}
    for r in shares:
        by_step.setdefault(r["step"], []).append(r)
    names = sorted({r["rank"] for r in shares})
    per_rank = {
        name: {
            "rows": sum(r["rank"] == name for r in shares),
            **{c: sum(int(r[c] or 0) for r in shares if r["rank"] == name) for c in CALLS},
            "gpu_wait": dist([int(r["gpu_wait_ns"]) for r in shares
                              if r["rank"] == name and r["gpu_wait_ns"]]),
        }
        for name in names
    }  # fmt: skip
    calls = lambda r: (r["cuda_launches"], r["cuda_graph_launches"])  # noqa: E731
    steps = [r["step"] for r in cuda_rows]
    full = [st for st in steps if names
            and len({r["rank"] for r in by_step.get(st, [])}) == len(names)]
    agree = [st for st in full if len({calls(r) for r in by_step[st]}) == 1]
    summed = {r["step"]: r for r in rows}
    adds_up = [st for st in full if all(
        sum(int(r[c] or 0) for r in by_step[st]) == int(summed[st][c] or 0) for c in CALLS)]
    slowest = {}
    for r in rows:
        if r.get("slowest_rank"):
            slowest[r["slowest_rank"]] = slowest.get(r["slowest_rank"], 0) + 1
    if expected:
        if len(names) != expected:
            problems.append(f"ranks.csv names {len(names)} ranks ({names}), not {expected}")
        elif len(full) < len(steps):
            problems.append(f"{len(steps) - len(full)} of {len(steps)} CUDA rows lack a rank's share")
        elif len(agree) < len(full):
            problems.append(f"{len(full) - len(agree)} of {len(full)} rows' ranks made other launches")
        if run["cuda"]["workers_folded_by_time"]:
            problems.append("workers folded by time (no batch marks): "
                            + str([p.get("batch_marks_error") for p in run["cuda"]["processes"]]))
    cuda = run["cuda"]
    return {
        "batch_marks": [p.get("batch_marks") for p in cuda["processes"]],
        "batch_marks_matched": cuda.get("batch_marks_matched"),
        "batch_marks_unmatched": cuda.get("batch_marks_unmatched"),
        "per_rank": per_rank, "cuda_rows": len(steps), "with_every_rank": len(full),
        "ranks_agree": len(agree), "ranks_add_up_to_row": len(adds_up), "slowest": slowest,
    }  # fmt: skip


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--harness", required=True)
    p.add_argument("--trace", required=True)
    p.add_argument("--capture-max", type=int, default=256)
    p.add_argument("--ranks", type=int, default=0,
                   help="worker processes expected in ranks.csv (MultiprocExecutor): each "
                        "CUDA row must have a row from each, with the same calls")
    a = p.parse_args(argv)
    gt = max((read_csv(f) for f in glob.glob(os.path.join(a.harness, "gt_batches_*.csv"))),
             key=len)
    run = json.load(open(os.path.join(a.trace, "run.json")))
    rows = read_csv(os.path.join(a.trace, "steps.csv"))
    I = lambda r, k: int(r[k]) if r.get(k) not in ("", None) else None  # noqa: E731
    lo = run["trace_start_ns"] + round(run["attach_ms"] * 1e6)
    hi = run["trace_end_ns"]
    window = [g for g in gt if g["update_done_ns"] and lo < int(g["entry_ns"])
              and int(g["update_done_ns"]) < hi]
    starts = [I(r, "start_ns") for r in rows]
    problems, matched = [], []
    for g in window:
        e = int(g["entry_ns"])
        i = bisect.bisect_left(starts, e)
        near = min((j for j in (i - 1, i) if 0 <= j < len(rows)),
                   key=lambda j: abs(starts[j] - e), default=None)
        if near is None or abs(starts[near] - e) > 300_000:
            continue
        matched.append((g, rows[near], near))
    unmatched = len(window) - len(matched)
    if unmatched > max(2, len(window) // 100):
        problems.append(f"{unmatched} of {len(window)} ground-truth batches have no row")
    # A --phases-only trace has no batch or request columns: only its phases are compared.
    phases_only = not any(r["scheduled_tokens"] for r in rows)
    wrong_tokens = 0 if phases_only else sum(
        I(r, "scheduled_tokens") != int(g["tokens"]) for g, r, _ in matched
    )
    if wrong_tokens:
        problems.append(f"{wrong_tokens} rows' scheduled tokens differ from their batch's")
    err = lambda f: dist([f(g, r) for g, r, _ in matched if f(g, r) is not None])  # noqa: E731
    phases = {
        "schedule": err(lambda g, r: I(r, "schedule_ns") - (int(g["scheduled_ns"]) - int(g["entry_ns"]))),
        "execute": err(lambda g, r: I(r, "execute_ns") - (int(g["execute_done_ns"]) - int(g["scheduled_ns"]))),
        "update": err(lambda g, r: I(r, "update_ns") - (int(g["update_done_ns"]) - int(g["execute_done_ns"]))),
        "launch_host": err(lambda g, r: None if r["exec_launch_host_ns"] == "" or not g["launched_ns"] else I(r, "exec_launch_host_ns") - (int(g["launched_ns"]) - int(g["scheduled_ns"]))),
        "gpu_wait": err(lambda g, r: None if r["exec_gpu_wait_ns"] == "" or not g["wait_ns"] else I(r, "exec_gpu_wait_ns") - (int(g["output_ns"]) - int(g["wait_ns"]))),
    }  # fmt: skip

    def eager(r):
        return I(r, "cuda_graph_launches") == 0 and (I(r, "cuda_launches") or 0) > 0

    cuda_rows = [r for r in rows if r["cuda_graph_launches"] != "" and r["scheduled_tokens"]]
    own = sum(eager(r) != (I(r, "scheduled_tokens") > a.capture_max) for r in cuda_rows)
    nxt = sum(eager(r) != (I(n, "scheduled_tokens") > a.capture_max)
              for r, n in zip(cuda_rows, cuda_rows[1:]))
    if own:
        problems.append(f"{own} rows' CUDA pattern disagrees with their own tokens")
    tok = [I(r, "scheduled_tokens") for r in rows if r["scheduled_tokens"]]
    ex = [I(r, "execute_ns") for r in rows if r["scheduled_tokens"]]
    corr_own = statistics.correlation(ex, tok) if len(tok) > 2 else None
    corr_next = statistics.correlation(ex[:-1], tok[1:]) if len(tok) > 3 else None
    summed = sum(I(r, "step_ns") + (I(r, "tracer_ns") or 0) - I(r, "overlap_ns")
                 for _, r, _ in matched)
    busy = union((int(g["entry_ns"]), int(g["update_done_ns"])) for g, _, _ in matched)

    # vLLM 0.26 gives each request an internal id (the client's plus a suffix): the engine's.
    stats = {r["engine_request_id"]: r for r in read_csv(os.path.join(a.harness, "stats.csv"))
             if r["request_id"].startswith("req-")}
    reqs = {r["request_id"]: r for r in read_csv(os.path.join(a.trace, "requests.csv"))
            if r["request_id"].startswith("req-")}
    in_window = {k: s for k, s in stats.items() if float(s["queued_ts"]) * 1e9 > lo}
    missing = [k for k in in_window if k not in reqs]
    invented = [k for k in reqs if k not in stats]
    wrong = [k for k, s in in_window.items() if k in reqs and (
        reqs[k]["prompt_tokens"] != s["num_prompt_tokens"]
        or reqs[k]["output_tokens"] != s["num_output_tokens"]
        or reqs[k]["finish_status"] != "FINISHED_LENGTH_CAPPED")]  # fmt: skip
    if (missing or invented or wrong) and not phases_only:
        problems.append(f"requests: {len(missing)} missing, {len(invented)} invented, "
                        f"{len(wrong)} with other counts or status (e.g. {(missing + invented + wrong)[:3]})")
    both = [(reqs[k], s) for k, s in in_window.items() if k in reqs]

    def req_err(ours, theirs):
        return dist([int(r[ours]) - round(float(s[theirs]) * 1e9) for r, s in both
                     if r[ours] and float(s[theirs]) > 0])

    ranks = ranks_report(a.trace, run, rows, cuda_rows, a.ranks, problems)
    result = {
        "gt_batches": len(window), "matched": len(matched), "rows": len(rows),
        "wrong_tokens": wrong_tokens, "phases": phases,
        "cuda_rows": len(cuda_rows), "eager_disagree_own": own, "eager_disagree_next": nxt,
        "corr_execute_own_tokens": corr_own and round(corr_own, 3),
        "corr_execute_next_tokens": corr_next and round(corr_next, 3),
        "rows_sum_over_busy": round(summed / busy, 4) if busy else None,
        "step_sum_over_busy": round(sum(I(r, "step_ns") for _, r, _ in matched) / busy, 3) if busy else None,
        "requests": len(in_window), "requests_exact": len(in_window) - len(missing) - len(wrong),
        "queued": req_err("queued_ns", "queued_ts"),
        "first_token": req_err("first_token_ns", "first_token_ts"),
        "finished": req_err("finished_ns", "last_token_ts"),
        "tracer_ns": dist([I(r, "tracer_ns") for r in rows if r["tracer_ns"]]),
        "counters": run["counters"]["correlate"], "drops": run["counters"]["ring_buffer_drops"],
        "ranks": ranks, "problems": problems,
    }  # fmt: skip
    print("check " + json.dumps(result), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
