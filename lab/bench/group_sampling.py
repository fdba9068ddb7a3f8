"""What running a group's prompt once saves when sampling: the same rows sampled with the prompt shared by the
group's G rows and with every row prefilled on its own, side by side.

    python -m lab.bench.group_sampling --config lab/configs/smollm2-arith.yaml --out lab/results
    python -m lab.bench.group_sampling --out runs/bench-quick            # the embedded suite and tiny policy

One step's prompts (``train.prompts_per_step`` pool prompts, each ``rollout.group_size`` times) are sampled as a
step samples them, ``--repeats`` times each way, alternating which goes first, after one warm-up of each.  The
per-row way is the sampler's own fallback for models whose cache cannot be repeated.  Reported: the median
seconds each way, their ratio, and whether the two ways sampled the same tokens.  Both ways keep only the last
position's logits; the sampler before it shared prompts computed them at every prompt position, so the per-row
time is a lower bound on that sampler's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cropi.config import load_config
from cropi.io import write_json
from cropi.policy import load_configured_policy
from cropi.rollouts import sampler
from cropi.rollouts.sampler import SamplingParams, generate
from cropi.tasks.synthetic import build_suite
from lab.machines import machine_description

SCHEMA_VERSION = 1


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="a run config (default: the embedded defaults)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="timed samplings each way (after a warm-up)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quick"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    policy = load_configured_policy(cfg.model)
    problems = build_suite(cfg.data.suite).pool[: cfg.train.prompts_per_step]
    g = cfg.rollout.group_size
    prompts = [policy.encode_prompt(p.prompt) for p in problems]
    rows = [x for x in prompts for _ in range(g)]
    keys = [(0, p.id, s) for p in problems for s in range(g)]
    params = SamplingParams(temperature=cfg.rollout.temperature, max_new_tokens=cfg.rollout.max_new_tokens)

    def sample(shared: bool):
        sampler._SHARED_UNSUPPORTED.pop(type(policy.model), None)
        if not shared:
            sampler._SHARED_UNSUPPORTED[type(policy.model)] = "benchmark: every row prefilled"
        t = time.perf_counter()
        gens = generate(policy, rows, params, keys=keys)
        return time.perf_counter() - t, [x.response_ids for x in gens]

    seconds = {"shared": [], "per_row": []}
    tokens = {}
    for i in [0, *range(args.repeats)]:  # a warm-up of each, then the repeats, alternating which goes first
        for way in (("shared", "per_row") if i % 2 == 0 else ("per_row", "shared")):
            s, toks = sample(way == "shared")
            seconds[way].append(s)
            tokens[way] = toks
    sampler._SHARED_UNSUPPORTED.pop(type(policy.model), None)
    med = {k: statistics.median(v[1:]) for k, v in seconds.items()}  # the first of each is the warm-up
    res = {"schema_version": SCHEMA_VERSION, "benchmark": "group_sampling", "machine": machine_description(),
           "threads": args.threads, "model": cfg.model.name, "config": args.config,
           "rows": len(rows), "prompts": len(prompts), "group_size": g,
           "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
           "max_new_tokens": params.max_new_tokens, "seconds": seconds, "median_seconds": med,
           "speedup": med["per_row"] / med["shared"], "same_tokens": tokens["shared"] == tokens["per_row"]}
    name = f"group_sampling-{cfg.model.name}"
    write_json(args.out / f"{name}.json", res)
    print(f"{name}: shared {med['shared']:.2f} s, per row {med['per_row']:.2f} s, "
          f"{res['speedup']:.2f}x; same tokens: {res['same_tokens']}")
    return res


if __name__ == "__main__":
    main()
