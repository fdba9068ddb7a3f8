"""Factored batched scoring against today's per-prompt loop, side by side in one run on one machine.

Collects a pool and a validation store with the embedded tiny policy (G = 8), then scores the same pool in exact
mode three ways: one backward per prompt (today's default), per-example gradients of 8 prompts from one backward,
and the same with the linear weights kept factored (``select.score.factored``), 8 and 32 prompts a backward.  Records usable prompts per second
of each (the validation mean included, as a run pays it), their ratio to the per-prompt loop, and the largest
difference of the factored scores from the per-prompt ones.  Writes ``OUT/factored_scoring.json``.

    python -m lab.bench.factored_scoring --out lab/results            # a few minutes on one core
    python -m lab.bench.factored_scoring --quick --out runs/bench-quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cropi.config import RunConfig, ScoreConfig
from cropi.policy import load_policy
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.scores.engine import score_pool
from cropi.tasks.synthetic import SuiteConfig, build_suite
from lab.machines import machine_description

WAYS = {"per_prompt": {"batch_size": 1}, "batched": {"batch_size": 8},
        "factored": {"batch_size": 8, "factored": True}, "factored_32": {"batch_size": 32, "factored": True}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quick"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench-factored"))
    ap.add_argument("--pool", type=int, default=256, help="pool prompts scored")
    ap.add_argument("--quick", action="store_true", help="64 pool prompts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="tiny", help="tiny (the embedded suite) or smollm2 (single-digit "
                    "arithmetic prompts, as the fidelity benchmark; `cropi model fetch smollm2` first)")
    ap.add_argument("--val", type=int, default=100, help="validation prompts")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--exclude", action="append", default=[], help="parameter name globs left out of scoring in "
                    "every way (select.score.exclude), e.g. '*embed_tokens*'")
    ap.add_argument("--ways", default=",".join(WAYS), help="which of " + ", ".join(WAYS) + " (per_prompt always); "
                    "a large model's flat per-example gradients of many prompts may not fit in memory")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 64 if args.quick else args.pool
    policy = load_policy(args.model, "cpu")
    if args.model == "tiny":
        suite = build_suite(SuiteConfig(pool_size=max(n, 400)))
        train, held = suite.pool, suite.validation["add"]
        ccfg = CollectConfig(group_size=8, max_new_tokens=args.max_new_tokens or 10)
    else:
        from lab.bench.arith import arithmetic_problems

        train, held = arithmetic_problems()
        ccfg = CollectConfig(group_size=8, max_new_tokens=args.max_new_tokens or 16, temperature=0.8)
    pool = collect(policy, train[:n], args.work / "pool", ccfg)
    val = collect(policy, held[:args.val], args.work / "val-add", ccfg)
    res: dict = {"schema_version": 1, "machine": machine_description(), "threads": args.threads,
                 "model": args.model, "pool_prompts": n, "validation_prompts": args.val, "group_size": 8,
                 "max_new_tokens": ccfg.max_new_tokens, "exclude": args.exclude, "ways": {}}
    scores = {}
    ways = {n: WAYS[n] for n in ["per_prompt", *[w for w in args.ways.split(",") if w and w != "per_prompt"]]}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, kw in ways.items():
        cfg = RunConfig()
        cfg.select.score = ScoreConfig(mode="exact", exclude=list(args.exclude), **kw)
        t0 = time.perf_counter()
        out = score_pool(policy, pool, {"add": val}, args.work / f"{name}.parquet", cfg)
        seconds = time.perf_counter() - t0
        rows = [r for r in out.table.to_pylist() if r["usable"]]
        scores[name] = {r["prompt_id"]: r["score_add"] for r in rows}
        res["ways"][name] = {"settings": kw, "seconds": round(seconds, 2), "usable_prompts": len(rows),
                             "prompts_per_second": round(len(rows) / seconds, 3)}
        (args.work / f"{name}.parquet").unlink()
        for g in args.work.glob(f"{name}.gradients"):
            import shutil

            shutil.rmtree(g)
        _summarize(res, scores)
        tmp = args.out / "factored_scoring.json.tmp"  # after every way: a later one may not fit in memory
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        tmp.replace(args.out / "factored_scoring.json")
    print(json.dumps(res["ways"], indent=1))
    return res


def _summarize(res: dict, scores: dict) -> None:
    base = res["ways"]["per_prompt"]["prompts_per_second"]
    for name, row in res["ways"].items():
        row["speedup_vs_per_prompt"] = round(row["prompts_per_second"] / base, 3)
        row["largest_score_difference_vs_per_prompt"] = max(
            abs(scores[name][p] - scores["per_prompt"][p]) for p in scores["per_prompt"])
    factored = [r["speedup_vs_per_prompt"] for n, r in res["ways"].items() if n.startswith("factored")]
    res["speedup_vs_per_prompt"] = max(factored) if factored else None
    res["target_speedup"] = 3.0
    res["target_met"] = bool(factored) and max(factored) >= 3.0


if __name__ == "__main__":
    main()
