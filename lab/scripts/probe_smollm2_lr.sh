#!/usr/bin/env bash
# The learning rate of the SmolLM2 arithmetic comparison, chosen on validation before it runs: full-data GRPO for
# 40 steps at each rate, evaluated every 20 steps on the validation prompts that influence scoring does not read
# (eval.split=validation_unscored).  One single-threaded process; the rate with the best validation accuracy at
# step 40 (ties: the training reward) goes into lab/configs/smollm2-arith.yaml.
#
#   lab/scripts/probe_smollm2_lr.sh [RATE ...]     (default 1e-4 3e-5 1e-5)
set -euo pipefail
cd "${CROPI_ROOT:-$(dirname "$0")/../..}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for lr in ${@:-1e-4 3e-5 1e-5}; do
  out=runs/probe-smollm2-lr-$lr
  [ -f "$out/summary.json" ] && continue
  .venv/bin/cropi train --config lab/configs/smollm2-arith.yaml --selector full --set train.lr="$lr" \
    --set train.steps=40 --set train.eval_every=20 --set eval.split=validation_unscored \
    $( [ -d "$out/checkpoints" ] && echo --resume ) --out "$out" > "$out.log" 2>&1
done
