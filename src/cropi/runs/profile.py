"""Profile a policy on a suite: greedy test accuracy and the pool's pass-rate histogram at G samples.

RL needs prompts the policy sometimes solves: the histogram shows how many pool prompts are always solved
(p = 1), never solved (p = 0), and in between, per family."""

from __future__ import annotations

from collections import Counter, defaultdict

from cropi.evaluation.evaluate import evaluate
from cropi.policy import Policy
from cropi.rollouts.sampler import SamplingParams, generate
from cropi.tasks import grade_many
from cropi.tasks.suite import Suite


def pool_pass_rates(policy: Policy, problems, group_size: int = 8, temperature: float = 1.0,
                    max_new_tokens: int = 16, seed: int = 0, batch_size: int = 512) -> list[float]:
    prompts = [policy.encode_prompt(p.prompt) for p in problems]
    rows = [prompts[i] for i in range(len(problems)) for _ in range(group_size)]
    keys = [(seed, "profile", p.id, s) for p in problems for s in range(group_size)]
    gens = generate(policy, rows, SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens),
                    keys=keys, batch_size=batch_size)
    rewards = grade_many([p for p in problems for _ in range(group_size)],
                         [policy.decode_response(g.response_ids) for g in gens])
    return [sum(rewards[i * group_size:(i + 1) * group_size]) / group_size for i in range(len(problems))]


def profile_policy(policy: Policy, suite: Suite, group_size: int = 8, temperature: float = 1.0,
                   max_new_tokens: int = 16) -> dict:
    res = evaluate(policy, suite.test, suite.targeted, max_new_tokens)
    rates = pool_pass_rates(policy, suite.pool, group_size, temperature, max_new_tokens)
    hist = Counter(round(r * group_size) for r in rates)
    by_family: dict[str, list[float]] = defaultdict(list)
    by_level: dict[int, list[float]] = defaultdict(list)
    for p, r in zip(suite.pool, rates):
        by_family[p.family].append(r)
        by_level[p.difficulty].append(r)

    def shares(v: list[float]) -> dict:
        return {"n": len(v), "mean_pass_rate": sum(v) / len(v), "p0": sum(x == 0 for x in v) / len(v),
                "p1": sum(x == 1 for x in v) / len(v), "mixed": sum(0 < x < 1 for x in v) / len(v)}

    return {
        "greedy_test": res.to_dict(),
        "group_size": group_size,
        "temperature": temperature,
        "pool_size": len(rates),
        "pass_rate_histogram": {f"{k}/{group_size}": hist.get(k, 0) for k in range(group_size + 1)},
        "pool": shares(rates),
        "per_family": {f: shares(v) for f, v in by_family.items()},
        "per_difficulty": {str(k): shares(v) for k, v in sorted(by_level.items())},
    }


def profile_markdown(prof: dict) -> str:
    g = prof["greedy_test"]
    lines = [
        f"Greedy test accuracy: targeted {100 * g['targeted']:.1f}%, untargeted {100 * g['untargeted']:.1f}%",
        "",
        "| family | greedy test acc | pool n | mean pass rate | p=0 | 0<p<1 | p=1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f, s in prof["per_family"].items():
        lines.append(f"| {f} | {100 * g['per_family'].get(f, 0):.1f}% | {s['n']} | {s['mean_pass_rate']:.2f} | "
                     f"{100 * s['p0']:.0f}% | {100 * s['mixed']:.0f}% | {100 * s['p1']:.0f}% |")
    s = prof["pool"]
    lines.append(f"| **pool** | | {s['n']} | {s['mean_pass_rate']:.2f} | {100 * s['p0']:.0f}% | "
                 f"{100 * s['mixed']:.0f}% | {100 * s['p1']:.0f}% |")
    lines += ["", f"Pass-rate histogram at G = {prof['group_size']}, T = {prof['temperature']} (prompts per number "
              "of correct samples):", "", "| correct | " + " | ".join(prof["pass_rate_histogram"]) + " |",
              "| --- |" + " ---: |" * len(prof["pass_rate_histogram"]),
              "| prompts | " + " | ".join(str(v) for v in prof["pass_rate_histogram"].values()) + " |"]
    return "\n".join(lines) + "\n"
