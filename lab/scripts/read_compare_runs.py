"""Readings of a comparison's finished runs, before the whole comparison has finished (its results.json is
written only then): the comparison's own rule (``lab.readings.read_runs_across_machines``) applied to every
run folder that has a summary.json, with each run's machine.  Unfinished runs are left out; so are contended
repeats (``contended-*``), which, as in ``cropi compare``, are no seconds reference.

    .venv/bin/python lab/scripts/read_compare_runs.py runs/compare-off_target/runs --budget 600 --out FILE

A kept copy under lab/results/compare-runs/ is read once compare_scenarios.sh has restored it into runs/ (it keeps
the records gzipped).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.io import write_json
from lab.readings import read_runs_across_machines

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("folder", type=Path, help="a comparison's runs/ folder")
parser.add_argument("--budget", type=int, required=True, help="the comparison's train.steps")
parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
args = parser.parse_args()
results = read_runs_across_machines(args.folder, args.budget)  # each run's seconds against its own machine's
results["finished_runs_only"] = True
write_json(args.out, results)
for selector, sel in results["selectors"].items():
    for seed, r in sel["seeds"].items():
        print(f"{selector}-s{seed}: crosses at {r['steps_to_threshold']}, step acc. {r['step_acceleration']}, "
              f"wall acc. {r['wall_acceleration']}, host {str(r.get('host'))[:8]}")
