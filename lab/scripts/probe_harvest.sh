#!/usr/bin/env bash
# The validation probes of cropi_harvest's settings: seed 0 on the prompts influence scoring does not read
# (eval.split=validation_unscored, n = 200), an evaluation every 10 steps, single-threaded, two lanes (one per
# core).  Full data runs its 600 steps (it sets the threshold, and the seconds on this machine); every other
# probe stops at 300 steps, by when it has crossed full data's best or has not within 1.67x its pace.
#   harvest_top100  the first version: every harvested prompt replayed by rank (as harvest_top=1)
#   greso           the same batches without the harvested ranking: what does influence add?
#   harvest         the defaults (the top 10% of the harvested ranking replayed)
#   harvest_family  and the stream weighted by family (harvest_family_decay=0.5)
#   cropi           today's cropi default (the paper's curriculum), to decide which regime cropi defaults to
# Summaries: python -m lab.bench.probe_summary runs/probe-harvest --name probe-validation-harvest
# A lane name picks the probes to run (default both lanes): lab/scripts/probe_harvest.sh a|b
set -euo pipefail
cd "$(dirname "$0")/../.."
CROPI=${CROPI:-.venv/bin/cropi}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=runs/probe-harvest/runs
COMMON=(--set eval.split=validation_unscored --set train.eval_every=10 --set train.seed=0)
run() {  # NAME STEPS SELECTOR [--set ...]
  local name=$1 steps=$2 sel=$3; shift 3
  [ -f "$OUT/$name/checkpoints/step-$(printf %07d "$steps")/checkpoint.json" ] && return 0
  "$CROPI" train --selector "$sel" "${COMMON[@]}" --set train.steps="$steps" "$@" --out "$OUT/$name" \
    $( [ -d "$OUT/$name/checkpoints" ] && echo --resume ) > "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
lane_a() {
  run full-s0 600 full
  run greso-s0 300 greso
  run cropi-s0 300 cropi  # today's cropi default, the paper's curriculum, on the same prompts
}
lane_b() {
  run harvest_top100-s0 300 cropi_harvest --set train.filter.harvest_top=1.0
  run harvest-s0 300 cropi_harvest
  run harvest_family-s0 300 cropi_harvest --set train.filter.harvest_family_decay=0.5
}
case "${1:-both}" in
  a) lane_a ;;
  b) lane_b ;;
  *) lane_a & a=$!; lane_b & b=$!; wait $a; wait $b ;;
esac
