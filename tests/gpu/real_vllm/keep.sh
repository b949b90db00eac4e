#!/usr/bin/env bash
# Copies what the checks and the note need from a run.sh directory (the device returns few files).
set -euo pipefail
SRC=$1; DST=$2; mkdir -p "$DST"
cp "$SRC"/harness.log "$SRC"/tracer.log "$SRC"/trace/steps.csv "$SRC"/trace/run.json "$SRC"/trace/requests.csv "$SRC"/harness/stats.csv "$SRC"/trace/ranks.csv "$DST"/ 2>/dev/null || true
cp "$(ls -S "$SRC"/harness/gt_batches_*.csv | head -1)" "$DST"/gt_batches.csv 2>/dev/null || true
