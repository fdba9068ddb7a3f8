#!/usr/bin/env bash
# cropi_harvest in the committed 600-step test comparison: its 3 seeds, plus full data's seed 0 repeated on this
# machine (full-s0@HOST), which gives the seconds every harvest run is divided by.  The peers' and full data's
# runs are the committed comparison's own records (git 3e048ca, benchmarks/results/compare-runs/compare-peers;
# its cropi-s* are today's online_influence), copied in first.  Two single-threaded processes at a time, one
# per core, as in the committed comparison; nothing else may run beside them (a third process makes both
# contended).  Each finished run gets RUN/host.json (lab/scripts/stamp_host.py).  Resumable: rerun to continue.
#
#   [LANE=a|b] lab/scripts/compare_harvest.sh [SELECTOR]   (default cropi_harvest; both lanes)
#   .venv/bin/python lab/scripts/read_compare_runs.py runs/compare-harvest/runs --budget 600 --out FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
CROPI=${CROPI:-.venv/bin/cropi}
PY=${PY:-.venv/bin/python}
SEL=${1:-cropi_harvest}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
RUNS=runs/compare-harvest/runs
LOAD=runs/compare-harvest/load.log
if [ ! -d "$RUNS/full-s0" ]; then
  RECORDS=runs/compare-harvest/records  # the committed records, unpacked once
  mkdir -p "$RUNS" "$RECORDS"
  git archive 3e048ca benchmarks/results/compare-runs/compare-peers | tar -x -C "$RECORDS"
  cp -r "$RECORDS"/benchmarks/results/compare-runs/compare-peers/* "$RUNS/"
  for s in 0 1 2; do mv "$RUNS/cropi-s$s" "$RUNS/online_influence-s$s"; done
fi
HOST=$($PY -c "from lab.machines import host_id; print(host_id()[:8])")
( while true; do echo "$(date +%s) $(cut -d' ' -f1 /proc/loadavg)" >> "$LOAD"; sleep 20; done ) &
sampler=$!
trap 'kill $sampler 2>/dev/null' EXIT
one() {  # NAME SELECTOR SEED
  local dir=$RUNS/$1 start
  [ -f "$dir/summary.json" ] && return 0
  start=$(date +%s)
  "$CROPI" train --selector "$2" --set train.seed="$3" --out "$dir" \
    $( [ -d "$dir/checkpoints" ] && echo --resume ) > "$dir.log" 2>&1
  "$PY" lab/scripts/stamp_host.py "$dir" --load-log "$LOAD" --start "$start" --end "$(date +%s)"
}
lane_a() { one "full-s0@$HOST" full 0; one "$SEL-s1" "$SEL" 1; }
lane_b() { one "$SEL-s0" "$SEL" 0; one "$SEL-s2" "$SEL" 2; }
case "${LANE:-both}" in  # LANE=a or b runs one lane, for a core that frees up before the other
  a) lane_a ;;
  b) lane_b ;;
  *) lane_a & a=$!; lane_b & b=$!; wait $a; wait $b ;;
esac
