"""Summarise a validation probe: the runs of one ``cropi compare --seeds 0`` folder, finished or stopped early.

    python -m lab.bench.probe_summary runs/probe-unscored --name probe-validation-unscored

A probe is a comparison folder whose runs evaluate on the validation sets (``eval.split=validation`` or
``validation_unscored``) and whose non-full runs may be stopped once they have shown what they will show.
Stopped runs have no ``summary.json``, so this reads each run's ``metrics.jsonl``.  The threshold is full
data's smoothed best (as in ``compute_results``); each run gives its steps and sampled responses to it, its
seconds to it (as each run's evaluation rows record them: comparable only between runs that shared one machine
under one load), its accuracy every 100 steps, its last-3 mean and best.

A stopped run's last evaluation has no right neighbour, so its smoothed value is a two-point mean that a
full run would not have: crossings are read only where the smoothing window is complete, except at the end
of a run that finished its budget.

Writes ``lab/results/NAME.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cropi.errors import ConfigError
from lab.bench.common import RESULTS_DIR
from cropi.runs.metrics import SMOOTH, first_crossing, smooth
from lab.machines import machine_description
from cropi.io import read_jsonl, write_json

SCHEMA_VERSION = 1


def read_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(evaluation rows, step rows) of one run's ``metrics.jsonl`` (a killed run's torn last line is dropped)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [r for r in rows if r.get("event") == "eval"], [r for r in rows if r.get("event") == "step"]


def readable_curve(evals: list[dict], finished: bool) -> tuple[list[float], list[float], list[float]]:
    """(steps, seconds, smoothed targeted accuracy), without the trailing points whose window a stopped run
    cut short."""
    xs = [float(e["step"]) for e in evals]
    secs = [float(e["seconds"]) for e in evals]
    ys = smooth([e["targeted"] for e in evals])
    keep = len(xs) if finished else max(len(xs) - SMOOTH // 2, 0)
    return xs[:keep], secs[:keep], ys[:keep]


def summarize_probe(folder: Path) -> dict:
    """Every run of the probe folder ``folder`` against full data's seed-0 run there."""
    runs_dir = Path(folder) / "runs"
    if not (runs_dir / "full-s0" / "metrics.jsonl").is_file():
        raise ConfigError(f"{runs_dir / 'full-s0'}: a probe needs full data's seed-0 run (it sets the threshold)")
    cfg_path = Path(folder) / "config.yaml"
    runs: dict[str, tuple[list[dict], list[dict], bool]] = {}
    for run_dir in sorted(p for p in runs_dir.iterdir() if (p / "metrics.jsonl").is_file()):
        evals, steps = read_run(run_dir)
        if evals:
            runs[run_dir.name] = (evals, steps, (run_dir / "summary.json").is_file())
    f_evals, _, f_done = runs["full-s0"]
    fx, fsecs, fy = readable_curve(f_evals, f_done)
    threshold = max(fy)
    full_steps = first_crossing(fx, fy, threshold)
    full_seconds = first_crossing(fsecs, fy, threshold)
    out_runs = {}
    for name, (evals, steps, done) in runs.items():
        xs, secs, ys = readable_curve(evals, done)
        reached = first_crossing(xs, ys, threshold)
        reached_s = first_crossing(secs, ys, threshold)
        sampled = (sum(r.get("sampled_sequences", 0) for r in steps if r["step"] <= reached)
                   if reached is not None else None)
        acc = {str(int(e["step"])): e["targeted"] for e in evals if int(e["step"]) % 100 == 0 and e["step"] > 0}
        last3 = [e["targeted"] for e in evals[-3:]]
        out_runs[name] = {
            "finished": done,
            "last_step": int(evals[-1]["step"]),
            "steps_to_threshold": reached,
            "step_acceleration": (full_steps / reached) if reached else None,
            "seconds_to_threshold": reached_s,
            "wall_acceleration": (full_seconds / reached_s) if reached_s else None,
            "sequences_to_threshold": sampled,
            "accuracy_every_100": acc,
            "last3": sum(last3) / len(last3),
            "best": max(e["targeted"] for e in evals),
            "n": sum(evals[-1].get("n", {}).values()) or None,
            "seconds": evals[-1]["seconds"],
            "curve": [[int(e["step"]), e["targeted"]] for e in evals],
        }
    return {"schema_version": SCHEMA_VERSION, "benchmark": "validation-probe", "folder": str(folder),
            "config": cfg_path.read_text() if cfg_path.is_file() else None,
            "threshold": {"targeted": threshold, "full_steps": full_steps, "full_seconds": full_seconds},
            "machine": machine_description(), "runs": out_runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the probe's comparison folder (it holds runs/full-s0)")
    ap.add_argument("--name", required=True, help="results file name, without .json")
    ap.add_argument("--note", default="", help="free text stored with the numbers (protocol, load, caveats)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    try:
        res = summarize_probe(args.folder)
    except ConfigError as e:
        print(f"probe_summary: {e}", file=sys.stderr)
        return 2
    res["note"] = args.note
    write_json(args.out / f"{args.name}.json", res)
    for name, r in res["runs"].items():
        print(f"{name}: steps to {100 * res['threshold']['targeted']:.1f}% {r['steps_to_threshold']}, "
              f"last-3 {100 * r['last3']:.1f}% at step {r['last_step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
