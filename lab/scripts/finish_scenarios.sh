#!/usr/bin/env bash
# Once lab/scripts/compare_scenarios.sh has finished its folders: copy each comparison's results into lab/results/
# (compare-FOLDER.*) with its report and plots written again from them, and write the readings across them:
#
#   lab/results/scenarios-table.*   the pool scenarios side by side, the clean pool (compare-harvest.json) first
#   lab/results/draws-clean.*       the clean pool and its two other draws: the spread between draws beside seeds
#   lab/results/smollm2-verdict.*   whether the toy's ordering of the methods holds on SmolLM2
#
# A folder is copied once it has a results.json (a comparison writes it only when all its runs are done); the
# others are named as not finished.  Each reading is written once every copy it reads is in lab/results/, which
# outlives the machine the folder ran on.  Rerun as folders finish.
#
#   lab/scripts/finish_scenarios.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=lab/results
CLEAN=$DEST/compare-harvest.json  # the clean pool: its reading across the machines its runs took
done_() { [[ -f runs/compare-$1/results.json ]]; }
have() { [[ -f $DEST/compare-$1.json ]]; }
copy() {  # FOLDER: its results, and its report and plots written again from them by this checkout's code (a pinned
  local src=runs/compare-$1 tmp  # folder's own plots come from its older plotting code), pointed at the copies' names
  if [[ $(cat "$src"/runs/*/host.json 2>/dev/null | grep -o '"host": "[^"]*"' | sort -u | wc -l) -gt 1 ]]; then
    "$PY" lab/scripts/results_across_machines.py "$src" --out "$DEST/compare-$1.json"  # seconds per machine
  else
    cp "$src/results.json" "$DEST/compare-$1.json"
  fi
  tmp=$(mktemp -d)
  "$PY" -c 'import sys; from pathlib import Path; from cropi.io import read_json; from cropi.runs.report import write_comparison_report
write_comparison_report(read_json(Path(sys.argv[1])), Path(sys.argv[2]))' "$DEST/compare-$1.json" "$tmp"
  for png in "$tmp"/*.png; do cp "$png" "$DEST/compare-$1-$(basename "$png")"; done
  "$PY" lab/scripts/shrink_png.py "$DEST/compare-$1-"*.png  # the committed copies in a palette: a third the bytes
  sed -E "s/\]\(([a-z_]+\.png)\)/](compare-$1-\1)/g" "$tmp/report.md" > "$DEST/compare-$1.md"
  rm -rf "$tmp"
  echo "finish_scenarios.sh: wrote $DEST/compare-$1.json, .md and plots"
}
[[ -f $CLEAN ]] || { echo "finish_scenarios.sh: $CLEAN is missing" >&2; exit 2; }
for f in noisy_keys off_target draw1 draw2 smollm2; do
  if done_ "$f"; then copy "$f"
  elif have "$f"; then echo "finish_scenarios.sh: $DEST/compare-$f.json kept (runs/compare-$f is not here)"
  else echo "finish_scenarios.sh: runs/compare-$f has not finished"; fi
done
if have noisy_keys && have off_target; then
  "$PY" lab/scripts/scenario_table.py clean="$CLEAN" noisy_keys="$DEST/compare-noisy_keys.json" \
    off_target="$DEST/compare-off_target.json" --out "$DEST/scenarios-table"
fi
if have draw1 && have draw2; then
  "$PY" lab/scripts/draw_spread.py draw0="$CLEAN" draw1="$DEST/compare-draw1.json" \
    draw2="$DEST/compare-draw2.json" --out "$DEST" --name draws-clean
fi
if have smollm2; then
  "$PY" lab/scripts/ordering_verdict.py "$CLEAN" "$DEST/compare-smollm2.json" \
    --names "the toy" SmolLM2 --out "$DEST/smollm2-verdict"
fi
