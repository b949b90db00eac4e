#!/usr/bin/env bash
# One GPU-machine call: start the harness, attach the tracer once the engine is warm, run
# the workload, stop the tracer, check. usage:
#   run.sh TRACER OUTDIR [harness options…] [-- tracer attach options…]
set -euo pipefail
TRACER=$(realpath "$1"); OUT=$(realpath -m "$2"); shift 2
HARNESS=(); TRACER_ARGS=()
while [ $# -gt 0 ]; do [ "$1" = -- ] && { shift; TRACER_ARGS=("$@"); break; }; HARNESS+=("$1"); shift; done
HERE=$(dirname "$(realpath "$0")")
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
python3 -m gpu_vllm_harness --out "$OUT/harness" --wait-go "$OUT/go" "${HARNESS[@]}" > "$OUT/harness.log" 2>&1 &
H=$!
until grep -q '^ready ' "$OUT/harness.log"; do
  kill -0 $H 2>/dev/null || { tail -30 "$OUT/harness.log"; exit 1; }; sleep 0.5
done
HPID=$(grep '^ready ' "$OUT/harness.log" | sed 's/.*"harness_pid": \([0-9]*\).*/\1/')
grep '^ready ' "$OUT/harness.log"
"$TRACER" attach --pid "$HPID" -o "$OUT/trace" "${TRACER_ARGS[@]}" 2> "$OUT/tracer.log" &
T=$!
until grep -q 'tracer: attached' "$OUT/tracer.log"; do kill -0 $T 2>/dev/null || { cat "$OUT/tracer.log"; exit 1; }; sleep 0.1; done
touch "$OUT/go"
wait $H || echo "harness exited $?"
S=$(date +%s%N)
# The engine's exit ends the trace; SIGINT only if the tracer has not noticed in 10 s.
for _ in $(seq 100); do kill -0 $T 2>/dev/null || break; sleep 0.1; done
kill -INT $T 2>/dev/null || true; wait $T || true
echo "tracer end after the harness exited: $(( ($(date +%s%N) - S) / 1000000 )) ms"
tail -3 "$OUT/tracer.log"; grep '^summary ' "$OUT/harness.log"
# CHECK_ARGS: more check.py options (e.g. "--ranks 2" with worker processes).
read -ra CHECK <<< "${CHECK_ARGS:-}"
[[ " ${HARNESS[*]} " == *" --enforce-eager "* ]] && CHECK+=(--capture-max 0)
python3 -m gpu_vllm_harness.check --harness "$OUT/harness" --trace "$OUT/trace" "${CHECK[@]}"
