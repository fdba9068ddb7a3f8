#!/usr/bin/env bash
# The committed comparison against the peers, and the two further draws of the embedded suite: every run
# single-threaded, two processes sharing each folder (one per core; runs are claimed with lock files), so the
# wall-clock of every run is measured under the same load.  Resumable: rerun to continue, finished runs are kept.
#
#   runs/compare-peers          3 seeds: full, the paper's baselines, the peers, online_influence and cropi
#   runs/compare-peers-draw1    another pool draw (data.suite.pool_seed=1): full, online_influence, the best peer
#   runs/compare-peers-draw2    another draw and difficulty mix (pool_seed=2, easier levels)
#   runs/compare-peers-long     full data alone at twice the budget (1,200 steps), 3 seeds: has it plateaued by 600?
#   runs/compare-peers-2400     four times the budget (2,400 steps), 3 seeds: full data, online_influence, the peers
#   runs/plateau-full-4800      full data alone at 4,800 steps, 3 seeds: does it level off after 2,400?
#   runs/plateau-full-9600      full data alone at 9,600 steps, 3 seeds: does it level off after 4,800?
#
# Run nothing else beside it: a third process inflates the seconds of the runs in flight.  Seconds compare only
# between runs on one machine, so run a folder to its end on one machine.  It takes many hours on 2 cores; the
# results feed lab/results/compare-peers.* and lab/log.md (the run records stay out of the tree; the ones these
# summaries were read from are in git history at 3e048ca, benchmarks/results/compare-runs/).
# The draws are withdrawn until the tiny policy's SFT data is rebuilt clean of every draw's validation and test
# problems (docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
CROPI=${CROPI:-.venv/bin/cropi}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MAIN=full,online_influence,online_filter,dapo,greso,gradalign,cropi,static_influence,learnability,pass_rate,random
DRAW=full,online_influence,online_filter
PROCS=${PROCS:-2}  # processes per folder; PROCS=1 leaves a core free, at the same load per run
both() {  # PROCS processes on one comparison folder; the later ones only run what the first has not claimed
  "$CROPI" compare "$@" &
  local first=$! pids=()
  for _ in $(seq 2 "$PROCS"); do
    sleep 20
    "$CROPI" compare "$@" >/dev/null &
    pids+=($!)
  done
  wait "$first"  # a refused or failed comparison stops the script here
  for p in "${pids[@]}"; do wait "$p"; done
}
both --seeds 0,1,2 --selectors "$MAIN" --out runs/compare-peers
both --seeds 0,1,2 --selectors "$DRAW" --set data.suite.pool_seed=1 --out runs/compare-peers-draw1
both --seeds 0,1,2 --selectors "$DRAW" --set data.suite.pool_seed=2 \
  --set "data.suite.difficulty_weights=[3.0,3.0,2.0,1.0,1.0]" --out runs/compare-peers-draw2
# last, as it informs the reading of the budget but not the verdicts: its first 600 steps should repeat the 600-step runs' (a step's batch depends on the seed and step only): compare them
both --seeds 0,1,2 --selectors full --set train.steps=1200 --set train.eval_every=20 --out runs/compare-peers-long
# full data still rises at 1,200 steps (lab/results/plateau.md): where does it level off?  Full data first
# (it ran there alone), then cropi's default and the peers against its best there (about 35 core-hours at the
# measured pace: lab/log.md).  Full data ran there contended, so the folder first repeats its first seed
# under the usual load (full-s0@HOST).
both --seeds 0,1,2 --selectors full,online_influence,online_filter,dapo,greso --set train.steps=2400 --set train.eval_every=40 \
  --out runs/compare-peers-2400
# full data still rises at 2,400 steps (lab/results/plateau-2400.md): its seeds twice as long (about 1.9
# hours of one core each)
both --seeds 0,1,2 --selectors full --set train.steps=4800 --set train.eval_every=40 --out runs/plateau-full-4800
# full data still rises at 4,800 steps (lab/results/plateau-4800.md): twice as long again (about 3.8 hours of
# one core per seed; on the same machine its first 4,800 steps should repeat the 4,800-step runs, the learning rate
# being constant, as those repeat the 2,400-step reference run)
both --seeds 0,1,2 --selectors full --set train.steps=9600 --set train.eval_every=40 --out runs/plateau-full-9600
