#!/usr/bin/env bash
# The committed comparison against the peers, and the two further draws of the embedded suite: every run
# single-threaded, two processes sharing each folder (one per core; runs are claimed with lock files), so the
# wall-clock of every run is measured under the same load.  Resumable: rerun to continue, finished runs are kept.
#
#   runs/compare-peers          3 seeds: full, the paper's baselines, the peers, cropi and a cropi_curriculum variant
#   runs/compare-peers-draw1    another pool draw (data.suite.pool_seed=1): full, cropi, the best peer
#   runs/compare-peers-draw2    another draw and difficulty mix (pool_seed=2, easier levels)
#   runs/compare-peers-long     full data alone at twice the budget (1,200 steps), 3 seeds: has it plateaued by 600?
#   runs/compare-peers-2400     four times the budget (2,400 steps), 3 seeds: full data, then cropi and the peers
#   runs/plateau-full-4800      full data alone at 4,800 steps, 3 seeds: does it level off after 2,400?
#   runs/plateau-full-9600      full data alone at 9,600 steps, 3 seeds: does it level off after 4,800?
#
# Run nothing else beside it: a third process inflates the seconds of the runs in flight (each evaluation row
# records the machine's load, and each summary its mean and largest, so a contended run can be found).  Started
# with setsid it has its own scheduler autogroup, so `nice` in another shell does not yield to it; lower that
# shell's whole group instead (`echo 19 > /proc/self/autogroup`).  To edit the source while it runs, run it from
# a detached worktree (`git worktree add --detach DIR HEAD`, DIR/runs linked to this runs/, PYTHONPATH=DIR/src).
# Seconds are comparable only between runs on the same machine: each summary records its host, and a folder
# resumed on a new machine first repeats full data's first seed there (runs/full-s0@HOST) as its reference.
# A kept run whose machine has no full-data run kept is not restored, so it is trained again here.
# It takes many hours on 2 cores (a cropi run of 600 steps is about an hour); the results feed
# lab/results/compare-peers.* and lab/log.md.  Runs finished on an earlier machine and kept with
# `lab/scripts/keep_compare_runs.sh save` are restored first; save again before the machine goes away.
set -euo pipefail
cd "$(dirname "$0")/.."
CROPI=${CROPI:-.venv/bin/cropi}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MAIN=full,cropi,online_filter,dapo,greso,gradalign,cropi_curriculum+candidates1280+size80+stages60,static_influence,learnability,pass_rate,random
DRAW=full,cropi,online_filter
PROCS=${PROCS:-2}  # processes per folder; PROCS=1 leaves a core free, at the same load per run
bash lab/scripts/keep_compare_runs.sh restore
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
both --seeds 0,1,2 --selectors full,cropi,online_filter,dapo,greso --set train.steps=2400 --set train.eval_every=40 \
  --out runs/compare-peers-2400
# full data still rises at 2,400 steps (lab/results/plateau-2400.md): its seeds twice as long (about 1.9
# hours of one core each)
both --seeds 0,1,2 --selectors full --set train.steps=4800 --set train.eval_every=40 --out runs/plateau-full-4800
# full data still rises at 4,800 steps (lab/results/plateau-4800.md): twice as long again (about 3.8 hours of
# one core per seed; on the same machine its first 4,800 steps should repeat the 4,800-step runs, the learning rate
# being constant, as those repeat the 2,400-step reference run)
both --seeds 0,1,2 --selectors full --set train.steps=9600 --set train.eval_every=40 --out runs/plateau-full-9600
