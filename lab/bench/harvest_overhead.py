"""What harvesting influence inside the GRPO step costs: the same step with the hooks on and off, side by side.

    python -m lab.bench.harvest_overhead --out lab/results                  # tiny policy, the default step
    python -m lab.bench.harvest_overhead --model smollm2 --out lab/results  # SmolLM2-135M-Instruct

One batch is built once (tiny: the harvest rule's own GRESO batch of 32 mixed groups of 8; SmolLM2: 2 arithmetic
prompts, 8 responses of up to 16 tokens each at T = 0.8), then the update runs on it ``--repeats`` times with the
hooks on and off, alternating which goes first, after one warm-up of each.  Reported, medians of the repeats:

- ``update_overhead_ratio``: the update (forward, backward, clip, AdamW step) with the hooks over without;
- ``overhead_ratio``: the whole step, (building the batch + the update with hooks) over (building the batch +
  the update without), the batch's seconds measured in this run;
- ``overhead_ratio_with_target``: the same with the validation target amortised: its POPI means every
  ``harvest_val_every`` steps and its sampling every ``harvest_val_resample`` steps, each measured here.

Target: ``overhead_ratio`` <= 1.10.  The update is run repeatedly on one batch, so its weights drift a little; the
timing does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cropi.config import load_config
from cropi.io import write_json
from cropi.policy import load_policy
from cropi.selection import make_batch_builder
from cropi.selection.batch import Batch, sample_groups
from cropi.training.grpo import grpo_update, make_optimizer
from lab.machines import machine_description

SCHEMA_VERSION = 1
TARGET = 1.10


def _time_updates(policy, batch: Batch, cfg, harvester, repeats: int) -> tuple[list[float], list[float]]:
    opt = make_optimizer(policy.model, cfg.train)
    on, off = [], []
    for r in range(repeats + 1):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            t0 = time.perf_counter()
            grpo_update(policy, opt, batch, 0, cfg.train, cfg.rollout, harvester=harvester if mode == "on" else None)
            dt = time.perf_counter() - t0
            if r:  # the first round warms both up
                (on if mode == "on" else off).append(dt)
    return on, off


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (the embedded suite) or smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=6, help="timed updates each way (after a warm-up)")
    ap.add_argument("--builds", type=int, default=3, help="batches built to time the batch (tiny)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quick"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = ["train.selector=cropi_harvest", "train.filter.method=cropi_harvest", "model.device=cpu"]
    if args.model == "smollm2":
        sets += ["rollout.max_new_tokens=16", "rollout.temperature=0.8", "select.score.max_val_prompts=8"]
    cfg = load_config(None, sets)
    policy = load_policy(args.model, "cpu", "float32")
    res: dict = {"schema_version": SCHEMA_VERSION, "benchmark": "harvest_overhead", "machine": machine_description(),
                 "threads": args.threads, "model": args.model, "repeats": args.repeats, "target": TARGET,
                 "factor_k": cfg.select.score.factor_k}
    if args.model == "tiny":
        from cropi.tasks.synthetic import SuiteConfig, build_suite

        suite = build_suite(SuiteConfig())
        validation, pool = suite.validation, suite.pool
    else:
        from lab.bench.arith import arithmetic_problems

        train, held = arithmetic_problems()
        validation, pool = {"add": held}, train
    builder = make_batch_builder(cfg, validation)
    t0 = time.perf_counter()
    builder.validation_means(policy, 0)  # sampling the validation groups, then their POPI means
    first = time.perf_counter() - t0
    builder._means_step = -1
    t0 = time.perf_counter()
    builder.validation_means(policy, 0)
    means_s = time.perf_counter() - t0
    f = cfg.train.filter
    res["validation"] = {"prompts_per_set": cfg.select.score.max_val_prompts,
                         "mixed_groups": {v: len(g) for v, g in builder._val_groups.items()},
                         "means_seconds": round(means_s, 4), "sampling_seconds": round(first - means_s, 4),
                         "val_every": f.harvest_val_every, "val_resample": f.harvest_val_resample}
    if args.model == "tiny":
        extra: dict = {}
        builds = []
        for step in range(args.builds):
            b = builder.build(policy, pool, step, extra)
            builds.append(sum(b.seconds.values()) - b.seconds["scoring"])
        batch = b
        build_s = statistics.median(builds)
    else:
        t0 = time.perf_counter()
        groups = sample_groups(policy, pool[:2], (0, "bench"), range(cfg.rollout.group_size), cfg.rollout)
        build_s = time.perf_counter() - t0
        batch = Batch(groups)
    gens = [x for g in batch.groups for x in g.gens]
    res["batch"] = {"groups": len(batch.groups), "mixed": sum(g.mixed for g in batch.groups), "sequences": len(gens),
                    "mean_tokens": round(sum(len(x.prompt_ids) + len(x.response_ids) for x in gens) / len(gens), 2),
                    "build_seconds": round(build_s, 4)}
    on, off = _time_updates(policy, batch, cfg, builder, args.repeats)
    u_on, u_off = statistics.median(on), statistics.median(off)
    target_s = means_s / f.harvest_val_every + (first - means_s) / f.harvest_val_resample
    res["update_seconds"] = {"on": [round(x, 4) for x in on], "off": [round(x, 4) for x in off],
                             "median_on": round(u_on, 4), "median_off": round(u_off, 4)}
    res["update_overhead_ratio"] = round(u_on / u_off, 4)
    res["overhead_ratio"] = round((build_s + u_on) / (build_s + u_off), 4)
    res["target_seconds_per_step"] = round(target_s, 4)
    res["overhead_ratio_with_target"] = round((build_s + u_on + target_s) / (build_s + u_off), 4)
    res["met"] = res["overhead_ratio"] <= TARGET
    args.out.mkdir(parents=True, exist_ok=True)
    name = "harvest_overhead" + ("" if args.model == "tiny" else f"-{args.model}")
    write_json(args.out / f"{name}.json", res)
    print({k: res[k] for k in ("update_overhead_ratio", "overhead_ratio", "overhead_ratio_with_target", "met")})
    return res


if __name__ == "__main__":
    main()
