#!/usr/bin/env bash
# The pool scenarios and the clean draws, each a `cropi compare` of 3 seeds at the 600-step budget:
#
#   runs/compare-noisy_keys   a fifth of the targeted pool keyed to the common mistake (lab/results/scenarios.json)
#   runs/compare-off_target   the targeted families 5% of the pool
#   runs/compare-draw1        another pool draw (pool_seed 1), validation and test clean of the tiny policy's SFT data
#   runs/compare-draw2        another draw and difficulty mix (pool_seed 2, easier levels), clean likewise
#   runs/compare-smollm2      SmolLM2-135M-Instruct on few-shot arithmetic (lab/configs/smollm2-arith.yaml), seed 0:
#                             full data, cropi's default and the best peer, 150 steps
#
# Scenarios: full data, cropi's default (cropi_harvest), online_influence and the peers.  Draws: full data,
# cropi's default and the best peer on the clean pool (the online filter).  Every run is single-threaded; PROCS
# processes share each folder (runs are claimed with lock files), one per core, so every run is measured under
# the same load; nothing else may run beside them.  Each finished run gets RUN/host.json (its machine and the mean
# load while it ran: lab/scripts/stamp_host.py).  Resumable: rerun to continue.  About 11 core-hours per scenario
# and 4 per draw (draw 2: 1 h 52 min on 2 cores; lab/log.md): more than one session, and the machine may be
# replaced between sessions, so
#   - the tiny-policy folders run one seed at a time, full data's first, so that a machine mostly measures its own
#     full-data seconds; a last pass over all seeds only writes the folder's results.json;
#   - each finished run's small records (not its checkpoints or stores), gzipped, go to lab/results/compare-runs/
#     (commit them before a session ends) and back into runs/ on a machine that lacks them;
#   - a machine that takes a folder over with none of its full-data runs first repeats the current seed's as the
#     reference run full-sSEED@HOST, beside the others: seconds compare only within one machine
#     (lab.readings.compute_results_across_machines; finish_scenarios.sh reads such a folder with it).
#
# A folder runs one version of cropi's code from its first run to its last, even across sessions.  The tiny-policy
# folders began before the sampler ran a group's prompt once, which made sampling 1.85x faster on the tiny policy
# (lab/results/group_sampling-tiny.json) and so would change their seconds part-way: they run the code of TINY_PIN
# (a git worktree in runs/code-TINY_PIN, made on first use).  SmolLM2's folder runs the working tree.
#
#   [PROCS=1|2] lab/scripts/compare_scenarios.sh [FOLDER ...]    (default: all four, in the order above)
set -euo pipefail
cd "${CROPI_ROOT:-$(dirname "$0")/../..}"  # CROPI_ROOT: run a copy of this script, so editing it cannot disturb a run
CROPI=${CROPI:-.venv/bin/cropi}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PROCS=${PROCS:-2}
TINY_PIN=${TINY_PIN:-02878b6}
CODE=$(git rev-parse --short HEAD)
SCENARIO_SELECTORS=cropi_harvest,online_influence,online_filter,greso,dapo
DRAW_SELECTORS=cropi_harvest,online_filter
LOAD=runs/scenarios-load.log
mkdir -p runs
( while true; do echo "$(date +%s) $(cut -d' ' -f1 /proc/loadavg)" >> "$LOAD"; sleep 20; done ) &
sampler=$!
mark() {  # RUN/started_at: when a run first started (its config.yaml is rewritten on every resume)
  for c in "$1"/runs/*/config.yaml; do
    [ -f "$c" ] || continue
    local run
    run=$(dirname "$c")
    [ -f "$run/started_at" ] || stat -c %Y "$c" > "$run/started_at"
  done
}
stamp() {  # every finished run of a folder without its host record
  for s in "$1"/runs/*/summary.json; do
    [ -f "$s" ] || continue
    local run start
    run=$(dirname "$s")
    [ -f "$run/host.json" ] && continue
    start=$(cat "$run/started_at" 2>/dev/null || stat -c %Y "$run/config.yaml")
    "$PY" lab/scripts/stamp_host.py "$run" --load-log "$LOAD" --start "$start" --end "$(stat -c %Y "$s")" \
      --code "$CODE"
  done
}
both() {  # OUT ARGS...: PROCS processes on one comparison folder, stamping runs as they finish
  local out=$1 pids=() first
  shift
  "$CROPI" compare "$@" --out "$out" &
  first=$!
  for _ in $(seq 2 "$PROCS"); do
    sleep 20
    "$CROPI" compare "$@" --out "$out" >/dev/null &
    pids+=($!)
  done
  ( while kill -0 "$first" 2>/dev/null; do mark "$out"; stamp "$out"; keep "$out"; sleep 60; done ) &
  local stamper=$!
  wait "$first"  # a refused or failed comparison stops the script here
  for p in "${pids[@]}"; do wait "$p"; done
  kill "$stamper" 2>/dev/null || true
  stamp "$out"
  keep "$out"
}
KEPT=lab/results/compare-runs
HOST=$("$PY" -c "from lab.machines import host_id; print(host_id()[:8])")
keep() {  # OUT: a copy of each stamped finished run's small records under $KEPT, to outlive this machine
  local h run dest f
  for h in "$1"/runs/*/host.json; do
    [ -f "$h" ] || continue
    run=$(dirname "$h")
    dest=$KEPT/$(basename "$1")/$(basename "$run")
    [ -f "$dest/host.json" ] && continue
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    for f in config.yaml started_at host.json; do
      [ ! -f "$run/$f" ] || cp "$run/$f" "$dest.tmp/"
    done
    for f in summary.json final_eval_items.json metrics.jsonl; do  # gzipped: from a fifth to a tenth of the bytes
      [ ! -f "$run/$f" ] || gzip -9c "$run/$f" > "$dest.tmp/$f.gz"
    done
    mv "$dest.tmp" "$dest"
  done
}
restore() {  # OUT: the kept finished runs this machine lacks (an unfinished copy of one here is replaced)
  local src=$KEPT/$(basename "$1") r name
  [ -d "$src" ] || return 0
  mkdir -p "$1/runs"
  for r in "$src"/*/; do
    name=$(basename "$r")
    [ -f "$1/runs/$name/summary.json" ] && continue
    rm -rf "$1/runs/$name"
    cp -r "${r%/}" "$1/runs/$name"
    gunzip "$1/runs/$name"/*.gz
  done
}
needs_reference() {  # OUT SEED: full-sSEED finished elsewhere, and none of OUT's full-data runs is this machine's
  [ -f "$1/runs/full-s$2/host.json" ] || return 1
  ! grep -qs "\"host\": \"$HOST\"" "$1"/runs/full-s*/host.json
}
reference() {  # OUT SEED: full-sSEED repeated on this machine as full-sSEED@HOST (only its seconds are read)
  local run=$1/runs/full-s$2@$HOST start
  [ -f "$run/summary.json" ] && return 0
  start=$(date +%s)
  "$CROPI" train --config "$1/runs/full-s$2/config.yaml" --out "$run" \
    $([ -d "$run/checkpoints" ] && echo --resume) > "$run.log" 2>&1
  "$PY" lab/scripts/stamp_host.py "$run" --load-log "$LOAD" --start "$start" --end "$(date +%s)" --code "$CODE"
  keep "$1"
}
by_seed() {  # OUT ARGS...: `both` one seed at a time (this machine's reference first where needed), then all seeds
  local out=$1 seed ref
  shift
  restore "$out"
  for seed in 0 1 2; do
    if needs_reference "$out" "$seed"; then
      reference "$out" "$seed" &
      ref=$!
      [ "$PROCS" -gt 1 ] || wait "$ref"  # one process: the reference first, alone
      PROCS=$((PROCS > 1 ? PROCS - 1 : 1)) both "$out" --seeds "$seed" "$@"
      wait "$ref"
    else
      both "$out" --seeds "$seed" "$@"
    fi
    rm -f "$out/results.json" "$out/report.md"  # one seed's: only the last pass's are the folder's results
  done
  both "$out" --seeds 0,1,2 "$@"
}
trap 'kill $sampler 2>/dev/null' EXIT
pinned() {  # COMMAND ARGS...: run COMMAND (by_seed or both) on the code of TINY_PIN
  local dir=runs/code-$TINY_PIN
  [ -d "$dir" ] || git worktree add --detach "$dir" "$TINY_PIN" >/dev/null
  ( export PYTHONPATH="$PWD/$dir/src"; CODE=$TINY_PIN; "$@" )
}
run() {
  case "$1" in
    noisy_keys|off_target)
      pinned by_seed "runs/compare-$1" --selectors "$SCENARIO_SELECTORS" --set data.suite.scenario="$1" ;;
    draw1) pinned by_seed runs/compare-draw1 --selectors "$DRAW_SELECTORS" --set data.suite.pool_seed=1 ;;
    draw2) pinned by_seed runs/compare-draw2 --selectors "$DRAW_SELECTORS" --set data.suite.pool_seed=2 \
             --set "data.suite.difficulty_weights=[3.0,3.0,2.0,1.0,1.0]" ;;
    smollm2) both runs/compare-smollm2 --config lab/configs/smollm2-arith.yaml --seeds 0 --selectors "$DRAW_SELECTORS" ;;
    *) echo "unknown folder $1 (noisy_keys, off_target, draw1, draw2, smollm2)" >&2; exit 2 ;;
  esac
}
for f in "${@:-noisy_keys off_target draw1 draw2}"; do
  for g in $f; do run "$g"; done
done
