"""Full-data GRPO learning-rate probe on the *validation* sets (never the test splits) for the embedded policy.

    python -m lab.bench.lr_probe [--steps 200] [--lrs 5e-5,1e-4,2e-4]

Writes lab/results/lr_probe_validation.json: the targeted validation accuracy (macro over the targeted
families' validation sets, greedy) every 25 steps for each learning rate.  The comparison's full-data lr is
chosen from this file before any selector runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from cropi.config import load_config
from cropi.evaluation.evaluate import evaluate
from lab.bench.common import RESULTS_DIR
from lab.machines import machine_description
from cropi.io import write_json
from cropi.policy import load_policy
from cropi.tasks.loading import load_data
from cropi.training.grpo import train_grpo


def probe(lr: float, steps: int, run_dir: Path) -> list[tuple[int, float]]:
    cfg = load_config(None, [f"train.lr={lr}", f"train.steps={steps}", "train.eval_every=25",
                             "train.checkpoint_every=1000"])
    suite = load_data(cfg.data)
    policy = load_policy(cfg.model.name, "cpu")
    rows: list[dict] = []

    def on_validation(pol, step):
        return {"val_targeted": evaluate(pol, suite.validation, suite.targeted, cfg.eval.max_new_tokens).targeted}

    train_grpo(policy, suite.pool, cfg.train, cfg.rollout, run_dir, on_validation,
               log=lambda r: rows.append(r) if r.get("event") == "eval" else None)
    return [(r["step"], r["val_targeted"]) for r in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lrs", default="5e-5,1e-4,2e-4")
    args = ap.parse_args(argv)
    results = {}
    for lr in [float(x) for x in args.lrs.split(",")]:
        curve = probe(lr, args.steps, Path("runs") / f"lr-probe-{lr:g}")
        results[f"{lr:g}"] = {"curve": curve, "last3_mean": statistics.fmean(v for _, v in curve[-3:]),
                              "best": max(v for _, v in curve)}
        print(f"lr {lr:g}: last-3 mean {results[f'{lr:g}']['last3_mean']:.3f}", flush=True)
    write_json(RESULTS_DIR / "lr_probe_validation.json",
               {"machine": machine_description(), "steps": args.steps, "threads": torch.get_num_threads(),
                "metric": "targeted validation accuracy (greedy, n = 400)", "lrs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
