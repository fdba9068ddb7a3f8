"""Batched scoring (factored projection, or exact from factors) against today's per-prompt loop, side by side in
one run on one machine.

Collects a pool and a validation store (G = 8), then scores the same pool in several ways (``WAYS``): today's
default, one backward per prompt in exact mode; the same loop with the flat SJLT projection (today's projected
mode); exact scores from factored per-example gradients of many prompts per backward; and the factored projection
``factored-sjlt`` (each weight's gradient P G Qᵀ from module hooks inside one backward, each prompt run once for its
responses) at several per-side dimensions.  For each way: usable prompts per second (the validation mean included,
as a run pays it; best of ``--repeats`` after a warm-up, so imports and first-call costs count for no way), the
ratio to the per-prompt loop, precision@10% and Spearman ρ of its scores against the per-prompt exact scores, and
the numbers each way keeps per prompt and per validation set.  Writes ``OUT/factored_scoring.json`` after every way.

    python -m lab.bench.factored_scoring --out lab/results            # a few minutes on one core
    python -m lab.bench.factored_scoring --quick --out runs/bench-quick
    python -m lab.bench.factored_scoring --model smollm2 --pool 320 --threads 2 --repeats 1 --out lab/results/smollm2
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

from cropi.config import RunConfig, ScoreConfig
from cropi.policy import load_policy
from cropi.projection import param_shapes_of
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.scores.engine import make_score_projector, score_pool
from cropi.tasks.synthetic import SuiteConfig, build_suite
from lab.bench.fidelity import precision_at, spearman
from lab.machines import machine_description

WAYS = {
    "per_prompt": {"mode": "exact", "batch_size": 1},
    "per_prompt_sjlt": {"mode": "projected", "kind": "sjlt", "k": 8192, "batch_size": 1},
    "factored_exact_32": {"mode": "exact", "batch_size": 32, "factored": True},
    "sketch_8": {"mode": "projected", "kind": "factored-sjlt", "factor_k": 8, "batch_size": 32},
    "sketch_16": {"mode": "projected", "kind": "factored-sjlt", "factor_k": 16, "batch_size": 32},
    "sketch_32": {"mode": "projected", "kind": "factored-sjlt", "factor_k": 32, "batch_size": 32},
    # the same, with the embedding and the norms left out (the "project them or leave them out")
    "sketch_16_linear_only": {"mode": "projected", "kind": "factored-sjlt", "factor_k": 16, "batch_size": 32,
                              "exclude": ["*embed_tokens*", "*norm*"]},
    "sketch_32_linear_only": {"mode": "projected", "kind": "factored-sjlt", "factor_k": 32, "batch_size": 32,
                              "exclude": ["*embed_tokens*", "*norm*"]},
}
SKETCH_SEEDS = (0, 1, 2)  # projection seeds of the factored ways: precision is reported as mean and spread


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quick"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench-factored"))
    ap.add_argument("--pool", type=int, default=512, help="pool prompts scored")
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
    ap.add_argument("--baseline", default="per_prompt", choices=["per_prompt", "factored_exact_32"],
                    help="the way the others are timed and ranked against (an exact one)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each way after the warm-up (best kept)")
    ap.add_argument("--seeds", type=int, default=len(SKETCH_SEEDS), help="projection seeds of the sketch ways")
    ap.add_argument("--collect-threads", type=int, default=None, help="torch threads while collecting the stores "
                    "(default --threads); scoring is timed at --threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.collect_threads or args.threads)
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
    warm_pool = collect(policy, train[:16], args.work / "warm-pool", ccfg)
    torch.set_num_threads(args.threads)
    res: dict = {"schema_version": 2, "machine": machine_description(), "threads": args.threads,
                 "model": args.model, "pool_prompts": n, "validation_prompts": args.val, "group_size": 8,
                 "max_new_tokens": ccfg.max_new_tokens, "exclude": args.exclude, "repeats": args.repeats, "ways": {}}
    base = args.baseline
    res["pool_tokens"] = token_stats(pool)
    ways = {w: WAYS[w] for w in [base, *[w for w in args.ways.split(",") if w and w != base]]}
    res["baseline"] = base
    args.out.mkdir(parents=True, exist_ok=True)
    d = sum(math.prod(s) for s in param_shapes_of(policy.model, exclude=args.exclude or None).values())

    peaks: dict[str, float] = {}

    def run(name: str, kw: dict, seed: int = 0) -> tuple[float, dict]:
        cfg = RunConfig()
        cfg.select.score = ScoreConfig(**{"exclude": list(args.exclude), "seed": seed, **kw})
        out_file = args.work / f"{name}.parquet"
        with PeakRss() as rss:
            t0 = time.perf_counter()
            out = score_pool(policy, pool, {"add": val}, out_file, cfg)
            seconds = time.perf_counter() - t0
        peaks[name] = max(peaks.get(name, 0.0), rss.increase_mb)
        out_file.unlink()
        shutil.rmtree(args.work / f"{name}.gradients", ignore_errors=True)
        return seconds, {r["prompt_id"]: r["score_add"] for r in out.table.to_pylist() if r["usable"]}

    warm = dict(WAYS[base])  # imports, first-call allocations and kernel choices, paid by no way
    for kw in [warm, *[w for w in ways.values() if w.get("kind") == "factored-sjlt"][:1]]:
        cfg = RunConfig()
        cfg.select.score = ScoreConfig(**{"exclude": list(args.exclude), **kw})
        score_pool(policy, warm_pool, {"add": warm_pool}, args.work / "warm.parquet", cfg)
        shutil.rmtree(args.work / "warm.gradients", ignore_errors=True)
    scores: dict[str, dict] = {}
    for name, kw in ways.items():
        seeds = range(args.seeds) if kw.get("kind") == "factored-sjlt" else range(1)
        times, runs = [], []
        for seed in seeds:
            for r in range(args.repeats if seed == 0 else 1):  # timing from seed 0; other seeds for precision
                seconds, sc = run(name, kw, seed)
                if seed == 0:
                    times.append(seconds)
            runs.append(sc)
        scores[name] = runs[0]
        usable = len(runs[0])
        row = {"settings": kw, "seconds": round(min(times), 3), "seconds_all": [round(t, 3) for t in times],
               "usable_prompts": usable, "prompts_per_second": round(usable / min(times), 3),
               "numbers_per_prompt": _numbers_per_prompt(policy, kw, d, args.exclude),
               "numbers_per_validation_set": _numbers_per_set(policy, kw, d, args.exclude),
               "peak_rss_increase_mb": round(peaks[name], 1)}
        if name != base:
            ref = scores[base]
            ids = sorted(ref)
            prec = [precision_at(ids, [ref[i] for i in ids], [sc[i] for i in ids]) for sc in runs]
            rho = [spearman([ref[i] for i in ids], [sc[i] for i in ids]) for sc in runs]
            row.update(precision_at_10=round(sum(prec) / len(prec), 4), precision_at_10_all=prec,
                       spearman=round(sum(rho) / len(rho), 4),
                       largest_score_difference=max(abs(runs[0][i] - ref[i]) for i in ids))
        res["ways"][name] = row
        _summarize(res)
        tmp = args.out / "factored_scoring.json.tmp"  # after every way: a later one may not fit in memory
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        tmp.replace(args.out / "factored_scoring.json")
        print(name, json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
    return res


def token_stats(store: Path) -> dict:
    """Mean prompt and response tokens of a store's usable groups, and the token positions of a group run packed
    (G·(P + R)) against each prompt run once (P + G·R)."""
    from cropi.rollouts.trajectory_store import iter_prompt_groups

    p, r, packed, shared = [], [], 0, 0
    for _, g in iter_prompt_groups(store):
        if g.zero_variance:
            continue
        p.append(len(g.prompt_ids))
        r += [len(x) for x in g.response_ids]
        packed += sum(len(g.prompt_ids) + len(x) for x in g.response_ids)
        shared += len(g.prompt_ids) + sum(len(x) for x in g.response_ids)
    return {"usable_groups": len(p), "mean_prompt_tokens": round(sum(p) / len(p), 2),
            "mean_response_tokens": round(sum(r) / len(r), 2), "packed_over_shared_positions": round(packed / shared, 2)}


class PeakRss:
    """The largest resident-set size of this process while the block runs, above its size at the start (sampled
    every 10 ms from /proc; 0 where there is no /proc)."""

    def __enter__(self) -> "PeakRss":
        import threading

        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        self.increase_mb = self.peak - self.start


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _numbers_per_prompt(policy, kw: dict, d: int, exclude) -> int:
    """fp32 numbers a way keeps per scored prompt: its projection, or one inner product per validation set."""
    if kw["mode"] == "exact":
        return 1
    cfg = ScoreConfig(**{"exclude": list(exclude), **kw})
    return make_score_projector(policy, cfg).k


def _numbers_per_set(policy, kw: dict, d: int, exclude) -> int:
    """fp32 numbers a way keeps per validation set: the whole mean gradient (exact), or its projection."""
    return d if kw["mode"] == "exact" else _numbers_per_prompt(policy, kw, d, exclude)


def _summarize(res: dict) -> None:
    name = res["baseline"]
    key = f"speedup_vs_{name}"
    base = res["ways"][name]["prompts_per_second"]
    for row in res["ways"].values():
        row[key] = round(row["prompts_per_second"] / base, 3)
    # the fastest batched way whose top 10% agrees with exact scoring on at least 90% of the prompts
    ok = {n: r for n, r in res["ways"].items() if n != name and r.get("precision_at_10", 0) >= 0.90}
    best = max(ok, key=lambda n: ok[n][key], default=None)
    res["fastest_way_with_precision_0_90"] = best
    res[key] = ok[best][key] if best else None
    res["precision_at_10"] = ok[best]["precision_at_10"] if best else None
    res["target_speedup"] = 3.0
    res["target_precision_at_10"] = 0.90
    res["target_met"] = (best is not None and ok[best][key] >= 3.0) if name == "per_prompt" else None


if __name__ == "__main__":
    main()
