#!/usr/bin/env bash
# Keep the finished runs of the long comparisons in git, so that a comparison longer than one machine's
# lifetime goes on where it stopped on the next machine.
#
#   lab/scripts/keep_compare_runs.sh save      copy each finished run's record (config.yaml, summary.json,
#                                          metrics.jsonl, final_eval_items.json, report.md) from runs/FOLDER/runs/
#                                          to lab/results/compare-runs/FOLDER/; of each started unfinished run,
#                                          its config.yaml and metrics.jsonl, with its machine, to
#                                          .../FOLDER/unfinished/RUN/ (readings taken from it stay checkable)
#   lab/scripts/keep_compare_runs.sh restore   copy the kept records back where runs/FOLDER/runs/ lacks them
#
# restore leaves out a run whose machine has no full-data run kept in its folder: its seconds could never be
# set against full data's on the same machine, so it is trained again, curve and seconds together (full data's
# curve repeated exactly on three of four machines and differed from step 497 on the fourth; screened runs
# repeated theirs for 229-271 steps, then drifted).
# A run counts as finished when its summary.json exists; `cropi compare` then reads the run and never redoes
# it.  Checkpoints, final models and stores are not kept: they are large and a finished run does not need them.
# Unfinished runs are kept for reading only, never restored: without their checkpoints they restart from step 0 on
# a new machine, and seconds measured on two machines do not add up to one run's.
set -euo pipefail
cd "$(dirname "$0")/.."
KEPT=lab/results/compare-runs
FOLDERS=${FOLDERS:-"compare-peers-long compare-peers compare-peers-draw1 compare-peers-draw2 compare-peers-2400 plateau-full-4800 plateau-full-9600"}
FILES="config.yaml summary.json metrics.jsonl final_eval_items.json report.md"
case "${1:-}" in
  save)
    for folder in $FOLDERS; do
      for run in runs/"$folder"/runs/*/; do
        [ -f "$run/summary.json" ] || continue
        dest="$KEPT/$folder/$(basename "$run")"
        mkdir -p "$dest"
        for f in $FILES; do [ -f "$run/$f" ] && cp "$run/$f" "$dest/$f.tmp" && mv "$dest/$f.tmp" "$dest/$f"; done
        rm -rf "$KEPT/$folder/unfinished/$(basename "$run")"
        echo "kept $dest"
      done
      for run in runs/"$folder"/runs/*/; do
        # an empty curve (a run claimed just before its worker stopped) has nothing to read
        if [ -f "$run/summary.json" ] || [ ! -s "$run/metrics.jsonl" ]; then continue; fi
        dest="$KEPT/$folder/unfinished/$(basename "$run")"
        mkdir -p "$dest"
        for f in config.yaml metrics.jsonl; do [ -f "$run/$f" ] && cp "$run/$f" "$dest/$f.tmp" && mv "$dest/$f.tmp" "$dest/$f"; done
        python3 -c 'import json, pathlib, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r["step"] for r in rows if r.get("event") == "step"]
boot = pathlib.Path("/proc/sys/kernel/random/boot_id")  # the machine, as report.host_id names it
info = {"schema_version": 1, "host": boot.read_text().strip() if boot.exists() else __import__("platform").node(),
        "last_step": max(steps, default=0), "finished": False}
pathlib.Path(sys.argv[2] + ".tmp").write_text(json.dumps(info, indent=1) + "\n")' "$run/metrics.jsonl" "$dest/unfinished.json"
        mv "$dest/unfinished.json.tmp" "$dest/unfinished.json"
        echo "kept (unfinished, for reading only) $dest"
      done
    done ;;
  restore)
    for folder in $FOLDERS; do
      # the machines that have a full-data run (full-sN or a reference full-sN@HOST) kept in this folder
      referenced=$(python3 -c 'import json, pathlib, sys
print(" ".join(sorted({json.loads(p.read_text()).get("host") or "unrecorded"
                       for p in pathlib.Path(sys.argv[1]).glob("full-s*/summary.json")})))' "$KEPT/$folder")
      for kept in "$KEPT/$folder"/*/; do
        [ -f "$kept/summary.json" ] || continue
        host=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("host") or "unrecorded")' "$kept/summary.json")
        if [[ " $referenced " != *" $host "* ]]; then
          echo "not restored $(basename "$kept"): no full-data run on its machine ($host), so it is trained again"
          continue
        fi
        run="runs/$folder/runs/$(basename "$kept")"
        [ -f "$run/summary.json" ] && continue
        rm -rf "$run" && mkdir -p "$run"
        # summary.json last: until it is there the run does not count as finished
        for f in $FILES; do [ "$f" != summary.json ] && [ -f "$kept/$f" ] && cp "$kept/$f" "$run/$f"; done
        cp "$kept/summary.json" "$run/summary.json"
        echo "restored $run"
      done
    done ;;
  *) echo "usage: $0 save|restore" >&2; exit 2 ;;
esac
