"""Benchmark: full-data GRPO on the embedded default raises targeted test accuracy.

Runs `cropi train --selector full` with the default config (or --steps / --set overrides), then writes
lab/results/grpo_full.json (the run's own summary.json plus the gain, its standard error and the
machine) and grpo_full.md.  With --quick it runs a few steps and writes under runs/ instead.

    python -m lab.bench.grpo_full            # the committed result
    python -m lab.bench.grpo_full --quick    # CI-sized smoke run
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

from cropi.config import load_config
from lab.bench.common import QUICK_DIR, RESULTS_DIR
from cropi.runs.run import run_training
from cropi.io import read_json, write_json, write_text


def macro_se(per_family: dict, n: dict, families: list[str]) -> float:
    """Standard error of a macro-average of per-family accuracies (binomial within each family)."""
    var = sum(per_family[f] * (1 - per_family[f]) / n[f] for f in families) / len(families) ** 2
    return math.sqrt(var)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few steps on a small suite, written under runs/")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    args = ap.parse_args(argv)
    sets = list(args.set)
    if args.quick:
        sets += ["train.steps=3", "train.eval_every=1", "data.suite.test_size_targeted=50",
                 "data.suite.test_size_untargeted=20", "data.suite.pool_size=200"]
        out_dir, run_dir = QUICK_DIR, QUICK_DIR / "grpo_full_run"
    else:
        out_dir, run_dir = RESULTS_DIR, Path("runs") / "bench-grpo-full"
    if args.steps:
        sets.append(f"train.steps={args.steps}")
    cfg = load_config(None, sets)
    shutil.rmtree(run_dir, ignore_errors=True)
    def show(r: dict) -> None:
        if r.get("event") == "eval":
            print(f"step {r['step']}: targeted {r['targeted']:.3f} untargeted {r['untargeted']:.3f}", flush=True)
        elif r.get("event") == "step":
            print(f"step {r['step']}: reward {r['reward_mean']:.3f}", flush=True)

    summary = run_training(cfg, run_dir, on_event=show)
    rows = [r for r in map(__import__("json").loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r.get("event") == "eval"]
    from cropi.tasks.loading import load_data

    targeted = load_data(cfg.data).targeted
    first, last3 = rows[0], rows[-3:]
    gain = summary["final_targeted"] - first["targeted"]
    se0 = macro_se(first["per_family"], first["n"], targeted)
    se1 = math.sqrt(sum(macro_se(r["per_family"], r["n"], targeted) ** 2 for r in last3)) / len(last3)
    result = {
        **read_json(run_dir / "summary.json"),
        "benchmark": "grpo_full",
        "targeted_test_n": sum(first["n"][f] for f in targeted),
        "targeted_gain": gain,
        "targeted_gain_se": math.sqrt(se0**2 + se1**2),
        "target": "gain >= 0.10",
        "target_met": gain >= 0.10,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "grpo_full.json", result)
    shutil.copy(run_dir / "accuracy.png", out_dir / "grpo_full.png")
    write_text(out_dir / "grpo_full.md", "\n".join([
        "# Full-data GRPO on the embedded default",
        "",
        f"- machine: {result['machine']}",
        f"- {result['steps']} steps x {result['prompts_per_step']} prompts x G={result['group_size']}; "
        f"training wall time {result['train_seconds']:.0f} s (evaluation excluded), "
        f"{result['steps_per_minute']:.1f} GRPO steps/min, rollout {result['rollout_tokens_per_second']:.0f} tokens/s",
        f"- targeted test accuracy (n = {result['targeted_test_n']}, macro over {', '.join(targeted)}): "
        f"{100 * first['targeted']:.1f}% at step 0 -> {100 * summary['final_targeted']:.1f}% (mean of last 3 evals)",
        f"- gain {100 * gain:+.1f} points, standard error {100 * result['targeted_gain_se']:.1f} points "
        f"(binomial, independent evaluations) -> target >= +10 points: {'met' if result['target_met'] else 'NOT met'}",
        "",
        "![curve](grpo_full.png)",
        "",
    ]) + "\n")
    print(f"targeted gain {100 * gain:+.1f} +- {100 * result['targeted_gain_se']:.1f} points; wrote {out_dir / 'grpo_full.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
