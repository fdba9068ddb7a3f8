#!/usr/bin/env bash
# Once lab/scripts/compare_peers.sh has finished every folder: copy the comparison's results into
# lab/results/ (compare-peers.*, its plots, draws.*), and run the cost model and the plateau check on it.  Refuses, and copies
# nothing, while a folder has no results.json (a comparison writes it only when all its runs are done).
#
#   lab/scripts/finish_compare.sh          everything: the main comparison, the draws, the long budget(s), the cost model
#   lab/scripts/finish_compare.sh main     the main comparison and the cost model only (the others still running)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=lab/results
MAIN=runs/compare-peers
DRAWS=(runs/compare-peers runs/compare-peers-draw1 runs/compare-peers-draw2)
case "${1:-}" in
  "") NEEDED=("${DRAWS[@]}" runs/compare-peers-long) ;;
  main) NEEDED=("$MAIN") ;;
  *) echo "finish_compare.sh: unknown argument '$1' (expected nothing or 'main')" >&2; exit 2 ;;
esac
for d in "${NEEDED[@]}"; do
  [[ -f $d/results.json ]] || { echo "finish_compare.sh: $d/results.json is missing: the comparison is not done" >&2; exit 2; }
done
cp "$MAIN/results.json" "$DEST/compare-peers.json"
for png in "$MAIN"/*.png; do cp "$png" "$DEST/compare-peers-$(basename "$png")"; done
"$PY" lab/scripts/shrink_png.py "$DEST"/compare-peers-accuracy_vs_*.png  # a palette: a third the bytes
# the report names its plots by their own names: point it at the copies
sed -E 's/\]\(([a-z_]+\.png)\)/](compare-peers-\1)/g' "$MAIN/report.md" > "$DEST/compare-peers.md"
"$PY" -m lab.bench.cost_model --compare "$MAIN" --out "$DEST"
if [[ ${1:-} == main ]]; then
  echo "finish_compare.sh: wrote $DEST/compare-peers.*, cost_model.*"
  exit 0
fi
cp runs/compare-peers-long/results.json "$DEST/compare-peers-long.json"
"$PY" -m lab.bench.plateau --long "$DEST/compare-peers-long.json" --compare "$DEST/compare-peers.json" --out "$DEST"
"$PY" lab/scripts/draw_spread.py draw0="${DRAWS[0]}/results.json" draw1="${DRAWS[1]}/results.json" \
  draw2="${DRAWS[2]}/results.json" --out "$DEST"
echo "finish_compare.sh: wrote $DEST/compare-peers.*, cost_model.*, compare-peers-long.json, plateau.*, draws.*"
# the 2,400-step folder, where it has finished: full data's plateau check, and once cropi and the peers have
# finished there too (results.json is rewritten only then), their comparison at that budget
LONG=runs/compare-peers-2400
if [[ -f $LONG/results.json ]]; then
  cp "$LONG/results.json" "$DEST/compare-peers-2400.json"
  "$PY" -m lab.bench.plateau --long "$DEST/compare-peers-2400.json" --compare "$DEST/compare-peers.json" \
    --out "$DEST" --name plateau-2400 --block 200
  echo "finish_compare.sh: wrote $DEST/compare-peers-2400.json, plateau-2400.*"
  if "$PY" -c 'import json, sys; sys.exit("cropi" not in json.load(open(sys.argv[1]))["selectors"])' "$LONG/results.json"; then
    for png in "$LONG"/*.png; do cp "$png" "$DEST/compare-peers-2400-$(basename "$png")"; done
    "$PY" lab/scripts/shrink_png.py "$DEST"/compare-peers-2400-*.png
    sed -E 's/\]\(([a-z_]+\.png)\)/](compare-peers-2400-\1)/g' "$LONG/report.md" > "$DEST/compare-peers-2400.md"
    echo "finish_compare.sh: wrote $DEST/compare-peers-2400.md and its plots"
  fi
fi
# full data alone at a longer budget (3 seeds), where it has finished: the plateau check of the 2,400-step
# comparison against its best, and the cost model of the 2,400-step runs at that threshold
longer_full() {
  local steps=$1
  [[ -f runs/plateau-full-$steps/results.json && -f $DEST/compare-peers-2400.json ]] || return 0
  cp "runs/plateau-full-$steps/results.json" "$DEST/plateau-full-$steps.json"
  "$PY" -m lab.bench.plateau --long "$DEST/plateau-full-$steps.json" \
    --compare "$DEST/compare-peers-2400.json" --out "$DEST" --name "plateau-$steps" --block 400
  echo "finish_compare.sh: wrote $DEST/plateau-full-$steps.json, plateau-$steps.*"
  if [[ -f $LONG/results.json ]]; then  # the cost model reads the 2,400-step runs themselves
    "$PY" -m lab.bench.cost_model --compare "$LONG" --accelerations "$DEST/plateau-$steps.json" \
      --out "$DEST" --name "cost_model-$steps"
    echo "finish_compare.sh: wrote $DEST/cost_model-$steps.*"
  fi
}
longer_full 4800
longer_full 9600
