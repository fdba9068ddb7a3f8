"""Has full data plateaued within the comparison's budget?  Full data alone at a longer budget, read against
the main comparison.

    python -m lab.bench.plateau --long runs/compare-peers-long/results.json \
        --compare lab/results/compare-peers.json [--out lab/results]

The long comparison (``cropi compare --selectors full --set train.steps=1200``) repeats full data's seeds of the
main one with a longer budget; a step's batch depends only on the seed and the step, so its first evaluations
should repeat the main runs' (``repeat`` says how far they do).  They do exactly only on a machine that computes
like the main runs' one: machines sold under one CPU name have been seen to fall into two such kinds, whose
runs part after a few hundred steps.  From the two results files this writes
``NAME.json`` and ``NAME.md`` (``--name``, default ``plateau``): full data's seed-mean targeted accuracy per
100 steps (``--block``) up to the long budget, its smoothed best
there against the main threshold, and every run of the main comparison re-read against the long threshold
within its own budget (``metrics.plateau_reading`` defines each number).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cropi.errors import CropiError
from lab.bench.common import RESULTS_DIR
from cropi.runs.metrics import SMOOTH
from lab.readings import plateau_reading
from cropi.io import read_json, write_json, write_text


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _x(v) -> str:
    return "never" if v is None else f"{v:.2f}×"


def plateau_markdown(r: dict) -> str:
    """The report of ``plateau_reading``'s result."""
    blocks = r["full_mean_targeted_per_block"]
    gain = r["threshold_long"] - r["threshold_main"]
    lines = [
        "# Full data at a longer budget: has it plateaued?", "",
        f"Full data alone, {r['long_budget_steps']} steps, the main comparison's seeds and settings, against the main "
        f"comparison's {r['budget_steps']}-step budget.",
        f"The long runs are evaluated every {r['long_eval_every']:.0f} steps, so their smoothed best averages {SMOOTH} "
        f"evaluations over {SMOOTH * r['long_eval_every']:.0f} steps." if r.get("long_eval_every") else "", "",
        f"- Main threshold (seed-mean smoothed best within {r['budget_steps']} steps): {_pct(r['threshold_main'])}, "
        f"at step {r['full_steps_to_threshold_main']:.0f}.",
        f"- At {r['long_budget_steps']} steps: {_pct(r['threshold_long'])}, at step "
        f"{r['full_steps_to_threshold_long']:.0f} ({100 * gain:+.1f} points).",
        "- Within the main budget, the long runs against the main runs of the same seed: "
        + "; ".join(f"seed {s}: " + ("identical at all " if v["first_differing_step"] is None else
                                     f"identical before step {v['first_differing_step']}, then at most "
                                     f"{100 * v['max_abs_diff']:.1f} points apart, over ") + f"{v['evaluations']} evaluations"
                    for s, v in r["repeat"].items()) + ".", "",
        f"Seed-mean targeted accuracy per {r['block_steps']} steps (mean of the evaluations in each span), and per seed:", "",
        "| steps | " + " | ".join(f"≤{k}" for k in blocks) + " |",
        "| --- | " + " | ".join("---:" for _ in blocks) + " |",
        "| seed mean | " + " | ".join(_pct(v) for v in blocks.values()) + " |",
    ]
    for seed, per in r["full_seed_targeted_per_block"].items():
        lines.append(f"| seed {seed} | " + " | ".join(_pct(per.get(k)) for k in blocks) + " |")
    lines += [
        "", f"## The main comparison re-read against {_pct(r['threshold_long'])}", "",
        f"Each run of the main comparison, within its {r['budget_steps']} steps, against full data's "
        f"{r['long_budget_steps']}-step smoothed best (full data crosses it at step "
        f"{r['full_steps_to_threshold_long']:.0f}). Wall-clock: full data's seconds to that step in the long runs, "
        "scaled to each run's machine by full data's seconds at the main budget there (an estimate). "
        "\"never\": not within the run's budget.", "",
        "| selector | median step accel. | median wall accel. (est.) | seeds that reach it | per seed: steps to it |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, sel in r["selectors"].items():
        n = len(sel["seeds"])
        per = ", ".join("never" if v["steps_to_threshold"] is None else f"{v['steps_to_threshold']:.0f}"
                        for v in sel["seeds"].values())
        lines.append(f"| {name} | {_x(sel['median']['step_acceleration'])} | {_x(sel['median']['wall_acceleration'])} "
                     f"| {n - sel['never']}/{n} | {per} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", type=Path, required=True, help="results.json of full data at the longer budget")
    ap.add_argument("--compare", type=Path, required=True, help="results.json of the main comparison")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for NAME.json and NAME.md")
    ap.add_argument("--name", default="plateau", help="file name of the results, without extension")
    ap.add_argument("--block", type=int, default=100,
                    help="steps per column of the accuracy table (a longer budget reads better in wider spans)")
    args = ap.parse_args(argv)
    try:
        for p in (args.long, args.compare):
            if not p.is_file():
                raise CropiError(f"{p}: not found")
        long, main_ = read_json(args.long), read_json(args.compare)
        if "full" not in long.get("selectors", {}) or "full" not in main_.get("selectors", {}):
            raise CropiError("both results files need full data's runs")
        if long["budget_steps"] <= main_["budget_steps"]:
            raise CropiError(f"{args.long}: its budget ({long['budget_steps']} steps) is not longer than the main one's")
        if args.block <= 0:
            raise CropiError(f"--block must be a positive number of steps, not {args.block}")
        res = plateau_reading(long, main_, block=args.block)
    except CropiError as e:
        print(f"plateau: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", res)
    write_text(args.out / f"{args.name}.md", plateau_markdown(res))
    print(f"plateau: wrote {args.out / args.name}.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
