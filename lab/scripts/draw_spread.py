"""The spread of a comparison's verdict between pool draws, next to its spread between seeds
(``lab.readings.draw_spread``): one comparison per draw, the same methods and seeds in each.

    .venv/bin/python lab/scripts/draw_spread.py draw0=runs/compare-harvest/results.json \
        draw1=runs/compare-draw1/results.json draw2=runs/compare-draw2/results.json \
        --out lab/results --name draws-clean
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.io import read_json
from lab.readings import draw_spread, write_draws_report

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("comparisons", nargs="+", help="NAME=results.json, one per pool draw")
ap.add_argument("--out", type=Path, required=True, help="the folder NAME.json and NAME.md are written to")
ap.add_argument("--name", default="draws", help="the files' stem")
args = ap.parse_args()
results = {}
for item in args.comparisons:
    name, sep, path = item.partition("=")
    if not sep:
        sys.exit(f"draw_spread.py: '{item}' is not NAME=results.json")
    results[name] = read_json(Path(path))
write_draws_report(draw_spread(results), args.out, name=args.name)
print(args.out / f"{args.name}.md")
