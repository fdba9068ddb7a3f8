"""The pool scenarios side by side (``lab.readings.scenario_table``): one column per scenario's comparison, the
first the reference (the clean pool), and the targets judged for cropi's default.

    .venv/bin/python lab/scripts/scenario_table.py clean=lab/results/compare-harvest.json \
        noisy_keys=runs/compare-noisy_keys/results.json off_target=runs/compare-off_target/results.json \
        --out lab/results/scenarios-table
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.io import read_json
from lab.readings import scenario_table, write_scenario_table

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("comparisons", nargs="+", help="NAME=results.json, the reference scenario first")
ap.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
ap.add_argument("--selectors", default="full,cropi_harvest,online_influence,online_filter,greso,dapo",
                help="the rows, in order (the scenarios' methods)")
args = ap.parse_args()
results = {}
for item in args.comparisons:
    name, _, path = item.partition("=")
    results[name] = read_json(Path(path))
write_scenario_table(scenario_table(results, selectors=args.selectors.split(",")), args.out)
print(args.out.with_suffix(".md"))
