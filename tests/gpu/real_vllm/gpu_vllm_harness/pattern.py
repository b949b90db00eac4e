"""Do two traces make the same CUDA calls for the same batches? (e.g. the model run in the
EngineCore, TP = 1, against the same model in worker processes.)

    python3 -m gpu_vllm_harness.pattern BASE_TRACE OTHER_TRACE [--ranks]

Batches are keyed by (scheduled tokens, requests); a key's pattern in BASE is its most common
(launches, graph launches, syncs, D2H copies). Prints one `pattern {json}` line: how many of
OTHER's rows (or, with --ranks, of its per-rank rows in ranks.csv) with a key BASE has show
that pattern, and the commonest differences. Exits 1 if fewer than 95 % do.
"""

import argparse
import collections
import json
import os
import sys

from .check import CALLS, read_csv


def keyed(trace, per_rank):
    rows = [r for r in read_csv(os.path.join(trace, "steps.csv"))
            if r["scheduled_tokens"] and r["cuda_graph_launches"] != ""]
    key = {r["step"]: (int(r["scheduled_tokens"]), int(r["batch_size"])) for r in rows}
    if not per_rank:
        return [(key[r["step"]], tuple(int(r[c] or 0) for c in CALLS)) for r in rows]
    return [(key[s["step"]], tuple(int(s[c] or 0) for c in CALLS))
            for s in read_csv(os.path.join(trace, "ranks.csv")) if s["step"] in key]


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("other")
    p.add_argument("--ranks", action="store_true", help="OTHER's per-rank rows (ranks.csv)")
    a = p.parse_args(argv)
    patterns = collections.defaultdict(collections.Counter)
    for key, calls in keyed(a.base, False):
        patterns[key][calls] += 1
    modal = {key: c.most_common(1)[0][0] for key, c in patterns.items()}
    compared = same = 0
    differ = collections.Counter()
    for key, calls in keyed(a.other, a.ranks):
        if key not in modal:
            continue
        compared += 1
        if calls == modal[key]:
            same += 1
        else:
            differ[(key, modal[key], calls)] += 1
    base_stable = sum(c.most_common(1)[0][1] for c in patterns.values())
    result = {
        "base_rows": sum(sum(c.values()) for c in patterns.values()),
        "base_rows_with_their_keys_modal_pattern": base_stable,
        "compared": compared, "same": same,
        "commonest_differences": [
            {"tokens_requests": k, "base": b, "other": o, "rows": n}
            for (k, b, o), n in differ.most_common(5)
        ],
    }  # fmt: skip
    print("pattern " + json.dumps(result), flush=True)
    return 0 if compared and same * 100 >= compared * 95 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
