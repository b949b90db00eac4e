#!/usr/bin/env bash
# Overhead on the real engine: one vLLM process under a steady closed loop, windows of W
# seconds untraced and traced at each level, in a rotating order, R rounds; throughput per
# window from the harness's own token count (no ground-truth monitor in the engine).
#   [LEVELS="untraced phases-only default sync"] windows.sh TRACER OUTDIR W R [harness options…]
# Fixed prompt and output lengths keep the closed loop's mix steady (with U(100,1000) and
# U(50,300), 12 s windows of one level varied ±15 % on the H200).
set -euo pipefail
TRACER=$(realpath "$1"); OUT=$(realpath -m "$2"); W=$3; R=$4; shift 4
HERE=$(dirname "$(realpath "$0")")
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
python3 -m gpu_vllm_harness --out "$OUT/harness" --wait-go "$OUT/go" --no-monitor \
  --progress 0.25 --requests 1000000 "$@" > "$OUT/harness.log" 2>&1 &
H=$!
until grep -q '^ready ' "$OUT/harness.log"; do
  kill -0 $H 2>/dev/null || { tail -30 "$OUT/harness.log"; exit 1; }; sleep 0.5
done
HPID=$(grep '^ready ' "$OUT/harness.log" | sed 's/.*"harness_pid": \([0-9]*\).*/\1/')
touch "$OUT/go"; sleep 15  # the closed loop fills up
now() { python3 -c 'import time; print(time.monotonic_ns())'; }
read -ra LEVELS <<< "${LEVELS:-untraced phases-only default sync}"
: > "$OUT/windows.txt"
for r in $(seq "$R"); do
  for i in "${!LEVELS[@]}"; do
    level=${LEVELS[$(( (i + r) % ${#LEVELS[@]} ))]}
    dir="$OUT/w$r-$level"
    case $level in
      untraced) t0=$(now); sleep "$W"; t1=$(now) ;;
      *) opts=(); [ "$level" = phases-only ] && opts=(--phases-only)
         [ "$level" = sync ] && opts=(--snapshots sync)
         "$TRACER" attach --pid "$HPID" -o "$dir" -d "$W" -q "${opts[@]}" 2> "$dir.log" || { cat "$dir.log"; exit 1; }
         t0=$(python3 -c "import json; print(json.load(open('$dir/run.json'))['trace_start_ns'])")
         t1=$(python3 -c "import json; print(json.load(open('$dir/run.json'))['trace_end_ns'])") ;;
    esac
    echo "$r $level $t0 $t1 $dir" >> "$OUT/windows.txt"
  done
done
sleep 1; kill $H; wait $H 2>/dev/null || true  # a progress line after the last window
python3 "$HERE/windows.py" "$OUT"
