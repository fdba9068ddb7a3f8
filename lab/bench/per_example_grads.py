"""POPI gradients: one backward pass per prompt (loop) vs per-example gradients of a batch of prompts from one
backward pass (``gradients.per_example``), in prompts/s at one thread, with the largest relative difference.

Models: the embedded tiny policy and the test suite's micro model (2 layers, width 32).  Responses are sampled
from the model itself (G = 8, up to 16 new tokens); rewards alternate so every group is usable.

    OMP_NUM_THREADS=1 python -m lab.bench.per_example_grads [--prompts 64] [--out lab/results]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lab.machines import machine_description  # noqa: E402
from cropi.gradients.popi import make_estimator  # noqa: E402
from cropi.rollouts.trajectory_store import PromptGroup  # noqa: E402
from cropi.io import write_json  # noqa: E402
from cropi.policy import load_policy  # noqa: E402
from cropi.rollouts.sampler import SamplingParams, generate  # noqa: E402
from cropi.tasks.synthetic import SuiteConfig, build_suite  # noqa: E402


def micro_policy():
    from cropi.policy.tiny import PretrainConfig, build_model, build_tokenizer

    out = Path(tempfile.mkdtemp()) / "micro"
    tok = build_tokenizer()
    build_model(PretrainConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, seed=0), tok).save_pretrained(out)
    tok.save_pretrained(out)
    return load_policy(str(out), device="cpu")


def groups_for(policy, n: int, g: int = 8) -> list[PromptGroup]:
    problems = build_suite(SuiteConfig(pool_size=max(n, 40), val_size=8, test_size_targeted=8,
                                       test_size_untargeted=8)).pool[:n]
    prompts = [policy.encode_prompt(p.prompt) for p in problems]
    gens = generate(policy, [p for p in prompts for _ in range(g)], SamplingParams(temperature=1.0, max_new_tokens=16),
                    keys=[(0, p.id, s) for p in problems for s in range(g)])
    return [PromptGroup(p.id, prompts[i], [x.response_ids for x in gens[i * g:(i + 1) * g]],
                        [x.behavior_logprobs for x in gens[i * g:(i + 1) * g]], [float(s % 2) for s in range(g)], 1.0)
            for i, p in enumerate(problems)]


def run(policy, groups, batch_size: int, by_length: bool = False):
    t0 = time.perf_counter()
    if by_length:  # what the gradient store does inside a chunk: similar widths share a batch (less padding)
        groups = sorted(groups, key=lambda g: len(g.prompt_ids) + max(map(len, g.response_ids)))
    out = {}
    for gb in make_estimator(policy.model, policy.pad_token_id, batch_size=batch_size).gradients(groups).batches:
        for b, pid in enumerate(gb.prompt_ids):
            out[pid] = torch.cat([g[b].flatten() for g in gb.grads.values()])
    return len(groups) / (time.perf_counter() - t0), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-sizes", default="2,4,8,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = {"benchmark": "per_example_grads", "machine": machine_description(), "threads": 1,
              "prompts": args.prompts, "group_size": 8, "models": {}}
    for name, policy in (("tiny", load_policy("tiny", device="cpu")), ("micro", micro_policy())):
        groups = groups_for(policy, args.prompts)
        run(policy, groups[:4], 1)  # warm-up
        variants = [("loop", 1, False)] + [(f"batched_{bs}" + ("_by_length" if bl else ""), bs, bl)
                                           for bs in map(int, args.batch_sizes.split(",")) for bl in (False, True)]
        best: dict[str, float] = {}
        grads: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleaved, best of n: the machine is shared and noisy
            for label, bs, bl in variants:
                rate, grads[label] = run(policy, groups, bs, bl)
                best[label] = max(best.get(label, 0.0), rate)
        ref = grads["loop"]
        # a few prompts have |g| ~ 1e-11 (saturated policy): float noise; measure relative to a typical norm
        floor = 1e-3 * float(torch.tensor([float(v.norm()) for v in ref.values()]).median())
        rows = {}
        for label, _, _ in variants:
            rows[label] = {"prompts_per_s": round(best[label], 2), "speedup": round(best[label] / best["loop"], 2),
                           "max_rel_diff": max(float((grads[label][k] - ref[k]).norm()) / max(float(ref[k].norm()), floor)
                                               for k in ref)}
            print(f"{name:6s} {label:20s} {rows[label]}", flush=True)
        result["models"][name] = rows
    if args.out:
        write_json(Path(args.out) / "per_example_grads.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
