#!/usr/bin/env bash
# The validation probes of cropi_harvest's settings: seed 0 on the prompts influence scoring does not read
# (eval.split=validation_unscored, n = 200), an evaluation every 10 steps, single-threaded, two lanes (one per
# core).  Full data runs its 600 steps (it sets the threshold, and the seconds on this machine); each harvest
# setting stops at 300 steps, by when it has shown its crossing or has none within 2x full data's pace.
# Summaries: python -m lab.bench.probe_summary runs/probe-harvest --name probe-validation-harvest
set -euo pipefail
cd "$(dirname "$0")/../.."
CROPI=${CROPI:-.venv/bin/cropi}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=runs/probe-harvest/runs
COMMON=(--set eval.split=validation_unscored --set train.eval_every=10 --set train.seed=0)
run() {  # NAME STEPS SELECTOR [--set ...]
  local name=$1 steps=$2 sel=$3; shift 3
  "$CROPI" train --selector "$sel" "${COMMON[@]}" --set train.steps="$steps" "$@" --out "$OUT/$name" \
    $( [ -f "$OUT/$name/checkpoints/step-0000050/checkpoint.json" ] && echo --resume ) > "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
lane_a() {
  run full-s0 600 full
  run harvest_dot-s0 300 cropi_harvest --set train.filter.harvest_score=dot
}
lane_b() {
  run harvest-s0 300 cropi_harvest
  run harvest_share75-s0 300 cropi_harvest --set train.filter.harvest_share=0.75
}
lane_a & a=$!
lane_b & b=$!
wait $a; wait $b
