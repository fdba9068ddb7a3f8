"""Whether the toy's ordering of the methods holds on another comparison (``lab.readings.ordering_verdict``): the
methods ranked by seconds to full data's best, steps to it and final targeted accuracy in each, and one line.

    .venv/bin/python lab/scripts/ordering_verdict.py lab/results/compare-harvest.json \
        runs/compare-smollm2/results.json --names "the toy" SmolLM2 --out lab/results/smollm2-verdict
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.io import read_json, write_json, write_text
from lab.readings import ORDER_KEYS, ordering_verdict

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("reference", type=Path, help="the reference comparison's results.json (the toy's)")
ap.add_argument("other", type=Path, help="the other comparison's results.json")
ap.add_argument("--names", nargs=2, default=["the toy", "the other model"], help="what to call the two")
ap.add_argument("--selectors", default="full,cropi_harvest,online_filter", help="the methods compared")
ap.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
args = ap.parse_args()
reference, other = read_json(args.reference), read_json(args.other)
verdict = ordering_verdict(reference, other, args.selectors.split(","), tuple(args.names))
verdict["seconds_by_kind"] = {n: {seed: row.get("seconds_by_kind") for seed, row in block["seeds"].items()}
                              for n, block in other["selectors"].items() if n in verdict["selectors"]}
write_json(args.out.with_suffix(".json"), verdict)
lines = [f"# Does {args.names[0]}'s ordering hold on {args.names[1]}?", "", verdict["verdict"], "",
         "| measure | " + " | ".join(args.names) + " |", "| --- | --- | --- |"]
for k in ORDER_KEYS:
    lines.append(f"| {k} | " + " | ".join(" > ".join(verdict["orders"][k][n]) for n in args.names) + " |")
write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
print(verdict["verdict"])
