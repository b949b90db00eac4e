"""Compare a tracer's output with the harness's ground truth and vLLM's own stats, same run.

    python -m real_vllm_harness.check_trace --harness DIR --trace DIR [--phases-only]

Prints one `check {json}` line (counts, error distributions in µs) and exits 1 when a check
fails. The window is the tracer's: ground-truth steps that started after its attach returned
(run.json trace_start_ns + attach_ms; or after its first step, if earlier: probes go on
before the attach returns) and ended before its trace_end_ns, so steps before the attach
don't count; likewise only requests vLLM queued after that are compared (an attach
during the load, as the in-process engine needs, sees the earlier ones only in part).

Phase definitions, so both sides measure the same span (DESIGN §3, "execute" = from
`schedule` returning to `update_from_output` starting):
  schedule = schedule() return − step start;  execute = update_from_output() start −
  schedule() return;  update = update_from_output() return − its start,
where "schedule() return" is the end of the monitor's callback at that return (its
bookkeeping runs before the caller resumes). The monitor stamps inside its callbacks, the
tracer at the watched byte in the caller, so each boundary differs by the callbacks' dispatch
and the few instructions between; and the tracer's snapshot after execute (default traces)
runs before update_from_output() starts, so it lands in the ground truth's execute and in
neither of the tracer's phases (execute reads short by it). The bounds are what that leaves,
with slack for a loaded 2-core VM.
"""

import argparse
import csv
import json
import os
import statistics
import sys

# |tracer − ground truth| per phase, µs: the median and the 99th percentile must stay below.
PHASE_BOUND_US = {"p50": 200.0, "p99": 1000.0}
# Request times vs vLLM's own timestamps, µs (p99 of |error|).
REQUEST_BOUND_US = 2000.0
# vLLM stamps scheduled_ts as schedule() starts, the tracer's first_scheduled_ns is the
# return of the schedule() that first scheduled the request, so their difference holds that
# call's own time (up to 3.6 ms on the dev VM: reported, not bounded). The start of that
# step (or batch) is what is bounded: |start − scheduled_ts| p99 below this, µs (0.46-0.49 ms
# measured on 0.10.2 and 0.11.0; a request placed in the wrong step is off by a step, ≥ 2 ms).
SCHEDULED_STEP_BOUND_US = 1000.0


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dist(errors_ns):
    """median, p99 and max of |error| in µs, and the signed median."""
    if not errors_ns:
        return None
    mags = sorted(abs(e) / 1e3 for e in errors_ns)
    return {
        "n": len(mags),
        "signed_median_us": round(statistics.median(errors_ns) / 1e3, 1),
        "p50_us": round(mags[len(mags) // 2], 1),
        "p99_us": round(mags[min(len(mags) - 1, int(len(mags) * 0.99))], 1),
        "max_us": round(mags[-1], 1),
    }


def armed_ns(run):
    """When the tracer's probes were on: its start plus the attach time."""
    return run["trace_start_ns"] + round(run["attach_ms"] * 1e6)


def gt_records(gt_steps):
    """The ground truth's steps, or with `step_with_batch_queue` its batches: the k-th
    scheduled is the k-th updated (a FIFO queue), so a batch is (the call that scheduled it,
    the later call that updated it). Each record: start, schedule end (after the monitor's
    bookkeeping), update start and end, the scheduling call's row (batch columns), and when the
    call before the scheduling one ended."""
    records, in_flight, last_end, last_step = [], [], None, None
    for s in gt_steps:
        # A call written twice: returned, then SystemExit raised in the monitor's callback
        # after the write (monitor.py, _write_row): the first row holds.
        if s["step"] == last_step:
            continue
        last_step = s["step"]
        previous_end, last_end = last_end, int(s["step_end_ns"]) if s["step_end_ns"] else None
        # The tracer makes no record of a call an exception ended, but a batch whose update
        # returned before it (vLLM's SIGTERM at shutdown: SystemExit) is complete.
        if s["raised"] and not (s["step_fn"] == "step_with_batch_queue" and s["update_end_ns"]):
            continue
        if s["schedule_end_ns"] and not s["raised"]:
            in_flight.append((int(s["step_start_ns"]), int(s["schedule_cb_end_ns"]), s, previous_end))
        if s["update_end_ns"] and in_flight:
            start, sched, row, before = in_flight.pop(0)
            records.append((start, sched, int(s["update_start_ns"]), int(s["update_end_ns"]), row, before))
    return records


def steps_check(gt_steps, steps, run, problems):
    # Probes go on during the attach, before it returns: steps from then on count too.
    first = int(steps[0]["start_ns"]) - 1_000_000 if steps else armed_ns(run)
    lo, hi = min(armed_ns(run), first), run["trace_end_ns"]
    gt = [r for r in gt_records(gt_steps) if lo <= r[0] and r[3] <= hi]
    out = {
        "step_fns": sorted({s["step_fn"] for s in gt_steps}),
        "gt_steps_in_window": len(gt),
        "tracer_steps": len(steps),
    }
    if len(gt) != len(steps):
        problems.append(f"steps: tracer {len(steps)}, ground truth {len(gt)} in the window")
        return out, []
    # A step starts after the call before it ended and before its schedule() ended. (The
    # monitor's own start stamp can lag the call's entry by a GIL switch, up to 5 ms: one step
    # in 2 321 did so on 0.10.2 with a 1 ms allowance.)
    far = [
        int(t["step"]) for g, t in zip(gt, steps)
        if not (g[5] if g[5] is not None else g[0] - 1_000_000) <= int(t["start_ns"]) <= g[1]
    ]  # fmt: skip
    if far:
        problems.append(f"{len(far)} tracer steps start outside their ground-truth step: {far[:5]}")
    errs = {"schedule": [], "execute": [], "update": []}
    for (start, sched, upd0, upd1, _, _), t in zip(gt, steps):
        errs["schedule"].append(int(t["schedule_ns"]) - (sched - start))
        # The tracer's copies at schedule()'s return (per batch) and at execute_model()'s
        # fall between the monitor's schedule end and update start: the monitor counts them
        # in execute, the tracer in no phase (tracer_ns, with the copy after the update).
        held = int(t["tracer_ns"] or 0)
        errs["execute"].append(int(t["execute_ns"]) + held - (upd0 - sched))
        errs["update"].append(int(t["update_ns"]) - (upd1 - upd0))
    out["phase_error"] = {k: dist(v) for k, v in errs.items()}
    for phase, d in out["phase_error"].items():
        for key, bound in PHASE_BOUND_US.items():
            if d[f"{key}_us"] > bound:
                problems.append(f"{phase} phase error {key} {d[f'{key}_us']} µs > {bound} µs")
    return out, [(g[4], t) for g, t in zip(gt, steps)]


# steps.csv column → ground-truth column (as `schedule()` left the scheduler).
BATCH_COLUMNS = {
    "batch_size": "scheduled_reqs",
    "scheduled_tokens": "scheduled_tokens",
    "new_requests": "new_reqs",
    "running": "running",
    "waiting": "waiting",
}


def batch_check(pairs, run, problems):
    # A shadow copy that ended after the engine thread moved on is dropped: its step has its
    # phases and no batch columns, and run.json counts it; so may the step in which `auto`
    # switched (its plan changed between its marks). Those steps are not compared; more of
    # them than counted, or over 1 %, is a problem.
    shadow = run["counters"].get("shadow") or {}
    dropped_allowed = sum(shadow.get(k, 0) for k in ("late", "failed", "switches"))
    dropped = [t for _, t in pairs if not t["batch_size"]]
    out = {"dropped_shadow_copies": len(dropped)}
    if dropped and (len(dropped) > dropped_allowed or len(dropped) * 100 > len(pairs)):
        problems.append(f"{len(dropped)} steps without batch columns "
                        f"({dropped_allowed} shadow copies late or failed, or switches)")
    elif dropped:
        pairs = [(g, t) for g, t in pairs if t["batch_size"]]
    # A step after an unseen one whose scheduled tokens were not read has no token columns
    # (run.json counts it): not compared there.
    unknown = {t["step"] for _, t in pairs if t["batch_size"] and not t["scheduled_tokens"]}
    out["steps_tokens_unknown"] = len(unknown)
    if len(unknown) > run["counters"]["requests"].get("steps_tokens_unknown", 0):
        problems.append(f"{len(unknown)} steps without token columns, more than run.json counts")
    for col, gcol in BATCH_COLUMNS.items():
        compared = [(g, t) for g, t in pairs if t[col] or t["step"] not in unknown]
        bad = [(int(t["step"]), t[col], g[gcol]) for g, t in compared if t[col] != g[gcol]]
        out[col] = {"equal": len(compared) - len(bad), "differ": len(bad), "first": bad[:3]}
        if bad:
            problems.append(f"steps.csv {col} differs from the ground truth in {len(bad)} steps")
    # An empty kv_blocks_total (snapshots off) is a difference, not a crash.
    bad = [
        (int(t["step"]), t["kv_blocks_used"], g["kv_free_blocks"]) for g, t in pairs
        if not t["kv_blocks_total"]
        or t["kv_blocks_used"] != str(int(t["kv_blocks_total"]) - int(g["kv_free_blocks"]))
    ]  # fmt: skip
    out["kv_blocks_used"] = {"equal": len(pairs) - len(bad), "differ": len(bad), "first": bad[:3]}
    if bad:
        problems.append(f"steps.csv kv_blocks_used differs in {len(bad)} steps")
    return out


def requests_check(stats, gt_requests, requests, steps, from_step, problems):
    """requests.csv against vLLM's RequestStateStats (front end) and what `_free_request` saw.
    `from_step`: requests whose queued_ns the tracer took from a step (run.json)."""
    schedule_done = [int(r["start_ns"]) + int(r["schedule_ns"]) for r in steps]

    def after_unseen(t):
        """The request was first seen scheduled right after a step without batch columns, or
        in one whose token columns the tracer could not tell (its prefix-cache hit neither)."""
        at = t["first_scheduled_ns"] and int(t["first_scheduled_ns"])
        i = schedule_done.index(at) if at in schedule_done else 0
        return i > 0 and (not steps[i - 1]["batch_size"] or not steps[i]["scheduled_tokens"])

    by_id = {r["request_id"]: r for r in requests}
    freed = {r["request_id"]: r for r in gt_requests}
    out = {"stats": len(stats), "tracer": len(requests)}
    missing = [s["engine_request_id"] for s in stats if s["engine_request_id"] not in by_id]
    out["missing"] = len(missing)
    if missing:
        problems.append(f"{len(missing)} requests missing from requests.csv: {missing[:3]}")
    both = [(s, by_id[s["engine_request_id"]]) for s in stats if s["engine_request_id"] in by_id]
    for col, scol in (
        ("prompt_tokens", "num_prompt_tokens"),
        ("output_tokens", "num_output_tokens"),
        # Prefix-cache hit tokens at the first scheduling (vLLM sends them with the outputs).
        ("cached_tokens", "num_cached_tokens"),
    ):
        # Where vLLM's output leaves it out (0.8's LLMEngine: cached tokens), the monitor's;
        # where neither has it (0.8's Request has no num_cached_tokens), not compared.
        want = lambda s: s[scol] or freed[s["engine_request_id"]][scol]  # noqa: E731
        known = [(s, t) for s, t in both if want(s) != ""]
        # The tracer leaves a prefix-cache hit empty where the step before the one it first
        # saw the request scheduled in went unseen (a dropped shadow copy): that one may have
        # been its first. Allowed only there.
        unknown = [(s, t) for s, t in known if col == "cached_tokens" and t[col] == ""]
        known = [p for p in known if p not in unknown]
        bad = [(s["request_id"], t[col], want(s)) for s, t in known if t[col] != want(s)]
        out[col] = {
            "equal": len(known) - len(bad), "differ": len(bad), "first": bad[:3],
            "not_compared": len(both) - len(known) - len(unknown), "unknown": len(unknown),
        }  # fmt: skip
        if bad:
            problems.append(f"requests.csv {col} differs from vLLM's stats in {len(bad)} requests")
        unexplained = [s["request_id"] for s, t in unknown if not after_unseen(t)]
        if unexplained:
            problems.append(f"requests.csv {col} empty for {unexplained[:3]}")
    # vLLM counts preemptions itself from 0.33; before, the monitor's count at schedule().
    bad = []
    for s, t in both:
        want = s["num_preemptions"] or freed[s["engine_request_id"]]["observed_preemptions"]
        if t["preemptions"] != want:
            bad.append((s["request_id"], t["preemptions"], want))
    out["preemptions"] = {
        "total": sum(int(t["preemptions"] or 0) for _, t in both),
        "differ": len(bad),
        "first": bad[:3],
    }
    if bad:
        problems.append(f"requests.csv preemptions differ in {len(bad)} requests")
    order = lambda key, rows: [r["request_id"] for r in sorted(rows, key=key)]  # noqa: E731
    ours = [s["request_id"] for s, t in sorted(both, key=lambda p: int(p[1]["first_token_ns"] or 0))]
    # A release whose LLMEngine keeps no request stats (0.8) has no vLLM times to compare.
    timed = all(s["first_token_ts"] for s, _ in both)
    theirs = order(lambda s: float(s["first_token_ts"]), [s for s, _ in both]) if timed else ours
    out["first_token_order_equal"] = ours == theirs if timed else None
    if ours != theirs:
        problems.append("requests.csv first-token order differs from vLLM's first_token_ts order")
    times = {}
    for col, scol in (
        ("queued_ns", "queued_ts"),
        ("first_scheduled_ns", "scheduled_ts"),
        ("first_token_ns", "first_token_ts"),
    ):
        errs = [int(t[col]) - round(float(s[scol]) * 1e9) for s, t in both if t[col] and s[scol]]
        empty = sum(not t[col] for s, t in both if s[scol] or not timed)
        if col == "queued_ns" and from_step:
            # The requests whose stamp the tracer says was gone hold the step's start: the
            # latest ones are theirs, bounded apart.
            errs = sorted(errs)[:-from_step]
        times[col] = {"vs": scol, "empty": empty, **(dist(errs) or {})}
        if empty:
            problems.append(f"requests.csv {col} empty for {empty} requests")
        bounded = col != "first_scheduled_ns"
        if bounded and errs and times[col]["p99_us"] > REQUEST_BOUND_US:
            problems.append(f"requests.csv {col} vs vLLM {scol}: p99 {times[col]['p99_us']} µs")
    # The step (or batch) whose schedule() returned at first_scheduled_ns: its start.
    step_start = {int(r["start_ns"]) + int(r["schedule_ns"]): int(r["start_ns"]) for r in steps}
    located = [
        (step_start.get(int(t["first_scheduled_ns"])), round(float(s["scheduled_ts"]) * 1e9))
        for s, t in both if t["first_scheduled_ns"] and s["scheduled_ts"]
    ]  # fmt: skip
    unlocated = sum(start is None for start, _ in located)
    errs = [start - ts for start, ts in located if start is not None]
    times["first_scheduled_step_start_ns"] = {"vs": "scheduled_ts", "unlocated": unlocated, **(dist(errs) or {})}
    if unlocated:
        problems.append(f"requests.csv first_scheduled_ns is no step's schedule() return for {unlocated} requests")
    if errs and times["first_scheduled_step_start_ns"]["p99_us"] > SCHEDULED_STEP_BOUND_US:
        problems.append(
            "the step that first scheduled a request vs vLLM scheduled_ts: "
            f"p99 {times['first_scheduled_step_start_ns']['p99_us']} µs"
        )
    errs = [
        int(t["finished_ns"]) - int(freed[s["engine_request_id"]]["freed_ns"])
        for s, t in both if t["finished_ns"]
    ]  # fmt: skip
    times["finished_ns"] = {"vs": "_free_request", **(dist(errs) or {})}
    out["times"] = times
    bad = [
        (s["request_id"], t["finish_status"], freed[s["engine_request_id"]]["status"])
        for s, t in both if t["finish_status"] != freed[s["engine_request_id"]]["status"]
    ]  # fmt: skip
    out["finish_status"] = {"differ": len(bad), "first": bad[:3]}
    if bad:
        problems.append(f"requests.csv finish_status differs in {len(bad)} requests")
    return out


def ranks_check(harness, args, pairs, ranks, run, problems):
    """With `--workers`: every rank's calls per batch (ranks.csv) against what its stand-in
    runner launched for the batch the row is (workers.launches_for of the ground truth's
    tokens and requests), its wait's entry and return against the runner's sync call, and
    (under async scheduling) that every worker's batches were marked.
    The calls a neighbouring batch would have had are counted too (`next_would_differ`): it
    shows how many misplaced rows the check would catch."""
    from .workers import launches_for

    out = {}
    cuda = run.get("cuda") or {}
    for key in ("batch_marks_matched", "batch_marks_unmatched", "workers_folded_by_time"):
        out[key] = cuda.get(key)
    # Workers of a per-step engine are folded by the engine's step spans (a step holds its
    # batch's whole life); under async scheduling each must be marked.
    unmarked = [p["pid"] for p in cuda.get("processes", []) if not p.get("batch_marks")]
    if args["async_scheduling"] and (unmarked or cuda.get("workers_folded_by_time")):
        problems.append(f"workers without batch marks: {unmarked or 'folded by time'}")
    by_step = {}
    for r in ranks:
        by_step.setdefault(r["step"], {})[int(r["worker_pid"])] = r
    executed = [(g, t) for g, t in pairs if int(g["scheduled_tokens"])]
    want = [launches_for(int(g["scheduled_tokens"]), int(g["scheduled_reqs"])) for g, _ in executed]
    workers = sorted({int(r["worker_pid"]) for r in ranks})
    for pid in workers:
        rows = [by_step.get(t["step"], {}).get(pid) for _, t in executed]
        got = [(int(r["cuda_launches"]), int(r["cuda_graph_launches"])) if r else None for r in rows]
        own = sum(g != w for g, w in zip(got, want))
        neighbour = sum(g != w for g, w in zip(got[1:], want[:-1]))
        truth = _rank_truth(harness, pid, executed)
        # The wait itself (ranks.csv wait_start/wait_end: its sync's entry and return); its
        # gpu_wait_ns leaves out what of it lay in other batches' phases, so is not compared.
        waits = {"start": [], "end": []}
        for r, (_, sync) in zip(rows, truth):
            if r and sync and r["wait_start_ns"]:
                waits["start"].append(int(r["wait_start_ns"]) - sync[0])
                waits["end"].append(int(r["wait_end_ns"]) - sync[1])
        name = next((r["rank"] for r in rows if r), f"pid{pid}")
        out[name] = {
            "rows": sum(r is not None for r in rows),
            "batches": len(executed),
            "calls_differ": own,
            "next_would_differ": neighbour,
            "truth_tokens_differ": sum(t != int(g["scheduled_tokens"]) for (t, _), (g, _) in zip(truth, executed))
            + abs(len(truth) - len(executed)),
            "syncs": sum(sync is not None for _, sync in truth),
            "wait_start_error": dist(waits["start"]),
            "wait_end_error": dist(waits["end"]),
        }  # fmt: skip
        if own:
            first = [(t["step"], g, w) for (_, t), g, w in zip(executed, got, want) if g != w][:3]
            problems.append(f"ranks.csv {name}: {own} of {len(executed)} batches' calls differ: {first}")
        if out[name]["truth_tokens_differ"]:
            problems.append(f"{name}: the runner's batches do not line up with the engine's")
        # A per-step engine waits for the output rank only: another rank's wait that ended
        # after the step did is folded (by time) into the next step: 0.1–1.5 % of batches
        # here (2 cores, 3 busy processes); over 2 % is a fault.
        missed = out[name]["syncs"] - len(waits["start"])
        if missed and (args["async_scheduling"] or missed * 50 > len(executed)):
            problems.append(f"{name}: {out[name]['syncs']} syncs, {len(waits['start'])} waits")
        for edge in ("start", "end"):
            d = out[name][f"wait_{edge}_error"]
            for key, bound in PHASE_BOUND_US.items():
                if d and d[f"{key}_us"] > bound:
                    problems.append(f"{name} wait {edge} error {key} {d[f'{key}_us']} µs > {bound} µs")
    if len(workers) != args["workers"]:
        problems.append(f"ranks.csv has {len(workers)} ranks, the engine {args['workers']}")
    return out


def _rank_truth(harness, pid, executed):
    """The runner's record of the worker `pid`'s batches lined up with `executed`: (tokens,
    its sync's (start, end) or None: only the output rank syncs under async scheduling),
    from its first batch that began after the first executed batch was scheduled."""
    for name in os.listdir(harness):
        if name.startswith("gt_rank"):
            rows = read_csv(os.path.join(harness, name))
            if rows and int(rows[0]["tid"]) == pid:
                break
    else:
        return []
    first = int(executed[0][0]["schedule_end_ns"]) if executed else 0
    launches = [r for r in rows if r["kind"] == "launch" and int(r["start_ns"]) >= first]
    launches = launches[: len(executed)]  # batches after the trace ended are not compared
    syncs = {r["seq"]: (int(r["start_ns"]), int(r["end_ns"])) for r in rows if r["kind"] == "sync"}
    return [(int(r["scheduled_tokens"]), syncs.get(r["seq"])) for r in launches]


def config_check(run, args, problems):
    config = run.get("config") or {}
    keys = ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size",
            "num_gpu_blocks", "enable_prefix_caching")  # fmt: skip
    bad = {k: (config.get(k), args[k]) for k in keys if config.get(k) != args[k]}
    if not str(config.get("model", "")).endswith(os.path.basename(args["model"])):
        bad["model"] = (config.get("model"), args["model"])
    if bad:
        problems.append(f"run.json config differs from the EngineArgs: {bad}")
    return {"differ": bad}


def main(argv):
    p = argparse.ArgumentParser(prog="check_trace", description=__doc__.split("\n")[0])
    p.add_argument("--harness", required=True, help="the harness's --out")
    p.add_argument("--trace", required=True, help="the tracer's -o")
    p.add_argument("--phases-only", action="store_true", help="the tracer ran --phases-only")
    a = p.parse_args(argv)
    h = lambda name: os.path.join(a.harness, name)  # noqa: E731
    t = lambda name: os.path.join(a.trace, name)  # noqa: E731
    with open(t("run.json")) as f:
        run = json.load(f)
    with open(h("args.json")) as f:
        args = json.load(f)
    problems = []
    result = {"vllm": run.get("vllm_version"), "engine_shape": run.get("engine_shape")}
    steps = read_csv(t("steps.csv"))
    result["steps"], pairs = steps_check(read_csv(h("gt_steps.csv")), steps, run, problems)
    result["config"] = config_check(run, args, problems)
    if not a.phases_only:
        if pairs:
            result["batch"] = batch_check(pairs, run, problems)
        stats = [
            s for s in read_csv(h("stats.csv"))
            if s["request_id"].startswith("req-")
            and float(s["queued_ts"] or s["added_ts"]) * 1e9 > armed_ns(run)
        ]  # fmt: skip
        if args.get("workers"):
            result["ranks"] = ranks_check(a.harness, args, pairs, read_csv(t("ranks.csv")), run, problems)
        from_step = run["counters"]["requests"].get("queued_from_step", 0)
        result["requests"] = requests_check(
            stats, read_csv(h("gt_requests.csv")), read_csv(t("requests.csv")), steps, from_step,
            problems,
        )  # fmt: skip
        result["requests"]["queued_from_step"] = from_step
    result["problems"] = problems
    print("check " + json.dumps(result), flush=True)
    for problem in problems:
        print(f"check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
