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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

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


def _rows(path: Path) -> tuple[dict, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = {r["step"]: {k: r[k] for k in ("targeted", "untargeted", "per_family")} for r in rows if r["event"] == "eval"}
    steps = {r["step"]: [r["reward_mean"], r["mixed_groups"], r["loss"], r["grad_norm"]] for r in rows
             if r["event"] == "step"}
    return evals, steps


def compare_rows(evals: dict, steps: dict, ref_evals: dict, ref_steps: dict) -> dict:
    """Evaluations equal to the letter, and where the sampled batches (reward mean, mixed share) first differ; the
    loss and grad norm are compared as floats (another machine's arithmetic moves their last digits)."""
    common = sorted(set(evals) & set(ref_evals))
    differ = [s for s in common if evals[s] != ref_evals[s]]
    shared = sorted(set(steps) & set(ref_steps))
    batch_differ = [s for s in shared if steps[s][:2] != ref_steps[s][:2]]
    same_batches = [s for s in shared if s < (batch_differ[0] if batch_differ else float("inf"))]
    rel = [abs(steps[s][3] - ref_steps[s][3]) / max(abs(ref_steps[s][3]), 1e-12) for s in same_batches]
    return {"evaluations_compared": len(common), "evaluations_equal": len(common) - len(differ),
            "first_evaluation_that_differs": differ[0] if differ else None,
            "steps_compared": len(shared), "first_step_whose_batch_differs": batch_differ[0] if batch_differ else None,
            "steps_bit_equal": sum(steps[s] == ref_steps[s] for s in shared),
            "grad_norm_largest_relative_difference_before_that": max(rel) if rel else None}


def compare(name: str, work: Path, old_code: Path | None = None) -> dict:
    ref = json.loads(REFERENCE.read_text())["runs"][OLD_NAMES[name]]
    evals, steps = _rows(work / name / "metrics.jsonl")
    ref_evals = {e["step"]: {k: e[k] for k in ("targeted", "untargeted", "per_family")} for e in ref["evals"]}
    ref_steps = {r[0]: r[1:] for r in ref["steps"]}
    out = {"old_name": OLD_NAMES[name], "against_the_committed_run": compare_rows(evals, steps, ref_evals, ref_steps)}
    if old_code is not None and (old_code / name / "metrics.jsonl").exists():
        # the code before the renaming, run here under its old name: what this machine makes of the same seeds
        out["against_the_old_code_here"] = compare_rows(evals, steps, *_rows(old_code / name / "metrics.jsonl"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/renamed-seed0"))
    ap.add_argument("--only", choices=sorted(OLD_NAMES), help=argparse.SUPPRESS)  # a worker process
    ap.add_argument("--out", type=Path, default=REFERENCE.with_name("renamed-seed0-check.json"))
    ap.add_argument("--old-code", type=Path, help="folder with full/ and cropi/ run folders that the code before "
                    "the renaming trained here (partial runs are fine): compared row by row as well")
    ap.add_argument("--compare-only", action="store_true", help="read the finished runs in --work, train nothing")
    args = ap.parse_args()
    if args.only:
        train(args.only, args.work)
        return
    if not args.compare_only:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, __file__, "--work", str(args.work), "--only", n], env=env)
                 for n in OLD_NAMES]
        if any(p.wait() for p in procs):
            sys.exit("a training process failed")
    from lab.machines import machine_description

    result = {"schema_version": 1, "machine": machine_description(),
              "runs": {n: compare(n, args.work, args.old_code) for n in OLD_NAMES}}
    result["reproduced"] = all(
        r["against_the_committed_run"]["evaluations_equal"] == r["against_the_committed_run"]["evaluations_compared"]
        for r in result["runs"].values())
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
