#!/usr/bin/env bash
# Every GPU check in one run, at most 8 minutes on one GPU, with the embedded tiny policy; writes
# OUT/gpu_check.json and OUT/gpu_check.md (OUT defaults to runs/gpu-check).  See
# lab/bench/gpu_check.py for what each check measures.
#
# On a machine without network: run lab/bench/gpu_wheels.sh where pip works, copy .whl/ with the tree, and
# this script installs them into a fresh temporary folder first (WHEELS=DIR names another folder, WHEELS= none).  cropi
# itself runs from src/ (no install needed).
# Extra arguments go to the checks, e.g. `--only projector,grpo` or `--device cpu --quick` (a dry run).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/gpu-check}
PY=${PYTHON:-python3}
WHEELS=${WHEELS-.whl}
if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" -m lab.bench.gpu_check --out "$OUT" "$@"
