"""Do today's selector names reproduce the committed 600-step test comparison's seed-0 curves?

Trains seed 0 of ``full`` and of ``cropi`` (its defaults: what that comparison ran as
``cropi_curriculum+candidates1280+size80+stages60``) from the comparison's stored configs, each in its own
single-threaded process, and checks every evaluation and every step's reward mean, mixed share, loss and grad
norm against ``lab/results/compare-peers-seed0-reference.json``.  Writes ``lab/results/renamed-seed0-check.json``.

    python lab/scripts/check_renamed_seed0.py --work runs/renamed-seed0      # about 20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "compare-peers-seed0-reference.json"
OLD_NAMES = {"full": "full", "cropi": "cropi_curriculum+candidates1280+size80+stages60"}


def run_config(name: str, work: Path):
    from cropi.config import RunConfig, from_dict

    old = yaml.safe_load(json.loads(REFERENCE.read_text())["runs"][OLD_NAMES[name]]["config_yaml"])
    cfg = from_dict(RunConfig, old)
    cfg.train.selector = name
    cfg.select.stores = str(work / "stores")
    if name == "cropi":  # left unset: the selector's defaults decide them
        cfg.select.candidates = cfg.select.size = cfg.select.stages = None
    return cfg


def train(name: str, work: Path) -> None:
    import torch

    from cropi.runs.run import run_training

    torch.set_num_threads(1)
    run_dir = work / name
    run_training(run_config(name, work), run_dir, resume=(run_dir / "config.yaml").exists())


def compare(name: str, work: Path) -> dict:
    ref = json.loads(REFERENCE.read_text())["runs"][OLD_NAMES[name]]
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    evals = [{k: r[k] for k in ("step", "targeted", "untargeted", "per_family")} for r in rows if r["event"] == "eval"]
    steps = [[r["step"], r["reward_mean"], r["mixed_groups"], r["loss"], r["grad_norm"]] for r in rows
             if r["event"] == "step"]
    ref_evals = {e["step"]: e for e in ref["evals"]}
    common = [e for e in evals if e["step"] in ref_evals]
    return {"old_name": OLD_NAMES[name], "evaluations_compared": len(common),
            "evaluations_equal": sum(e == ref_evals[e["step"]] for e in common),
            "reference_evaluations": len(ref["evals"]),
            "steps_compared": min(len(steps), len(ref["steps"])),
            "steps_equal": sum(a == b for a, b in zip(steps, ref["steps"])),
            "reference_steps": len(ref["steps"]),
            "first_difference": next((s[0] for s, r in zip(steps, ref["steps"]) if s != r), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/renamed-seed0"))
    ap.add_argument("--only", choices=sorted(OLD_NAMES), help=argparse.SUPPRESS)  # a worker process
    ap.add_argument("--out", type=Path, default=REFERENCE.with_name("renamed-seed0-check.json"))
    args = ap.parse_args()
    if args.only:
        train(args.only, args.work)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--work", str(args.work), "--only", n], env=env)
             for n in OLD_NAMES]
    if any(p.wait() for p in procs):
        sys.exit("a training process failed")
    result = {"schema_version": 1, "runs": {n: compare(n, args.work) for n in OLD_NAMES}}
    result["reproduced"] = all(r["evaluations_equal"] == r["reference_evaluations"] == r["evaluations_compared"]
                               and r["steps_equal"] == r["reference_steps"] for r in result["runs"].values())
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
