"""A finished comparison's results.json with its seconds read per machine, for a folder whose runs span several
(lab/scripts/compare_scenarios.sh carries a folder over to a new machine with a reference run full-sSEED@HOST):
every run's wall-clock acceleration divides by full data's seconds on its own machine
(``lab.readings.compute_results_across_machines``).  Everything else, the threshold, steps, accuracies, paired
errors and training signal, is the package's results.json as ``cropi compare`` wrote it.

    .venv/bin/python lab/scripts/results_across_machines.py runs/compare-off_target --out FILE
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.io import read_json, write_json
from lab.readings import read_runs_across_machines

ROW_KEYS = ("wall_acceleration", "wall_acceleration_is_lower_bound", "host", "wall_reference", "contended",
            "load_1min_at_evals")
TOP_KEYS = ("machine", "full_seconds_to_threshold", "run_machines", "hosts", "reference_runs", "noise_floor")


def across_machines(folder: Path) -> dict:
    results = read_json(folder / "results.json")
    across = read_runs_across_machines(folder / "runs", results["budget_steps"])
    # the same runs give the same threshold: a mismatch means the folder's runs are not the results' runs
    if across["threshold_targeted"] != results["threshold_targeted"]:
        raise SystemExit(f"{folder}: its runs' threshold {across['threshold_targeted']} is not its results.json's "
                         f"{results['threshold_targeted']}")
    for name, block in results["selectors"].items():
        other = across["selectors"][name]
        for seed, row in block["seeds"].items():
            row.update({k: other["seeds"][seed][k] for k in ROW_KEYS})
        block["median"]["wall_acceleration"] = other["median"]["wall_acceleration"]
        block["wall_unreferenced"], block["wall_contended"] = other["wall_unreferenced"], other["wall_contended"]
    results.update({k: across[k] for k in TOP_KEYS})
    # the machines of the finished runs themselves (a machine that ran only a reference is not one)
    results["seconds_across_machines"] = sorted(h for h, row in across["hosts"].items() if row["runs"])
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a finished comparison folder (results.json and runs/)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    out = across_machines(args.folder)
    write_json(args.out, out)
    for selector, block in out["selectors"].items():
        print(f"{selector}: median wall acc. {block['median']['wall_acceleration']}, "
              f"{block['wall_unreferenced']} run(s) without a full-data run on their machine")
