"""Greedy evaluation on test splits: per-family accuracy and the targeted / untargeted macro-averages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from cropi.policy import Policy
from cropi.rollouts.sampler import SamplingParams, generate
from cropi.tasks import Problem, grade_many


@dataclass
class EvalResult:
    targeted: float | None
    untargeted: float | None
    per_family: dict[str, float]
    n: dict[str, int]
    items: dict[str, float] | None = None  # problem id -> reward, for paired comparisons between runs

    def to_dict(self) -> dict:
        return {"targeted": self.targeted, "untargeted": self.untargeted, "per_family": self.per_family, "n": self.n}


def _macro(per_family: dict[str, float], families: Sequence[str]) -> float | None:
    vals = [per_family[f] for f in families if f in per_family]
    return sum(vals) / len(vals) if vals else None


def evaluate(
    policy: Policy,
    test: dict[str, list[Problem]],
    targeted: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 512,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Greedy accuracy per family of ``test``; ``targeted`` / ``untargeted`` are macro-averages over families."""
    problems = [p for fam in test for p in test[fam]]
    prompts = [policy.encode_prompt(p.prompt) for p in problems]
    # Sorting by length keeps padding low; greedy results do not depend on the order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    gens = generate(policy, [prompts[i] for i in order], SamplingParams(greedy=True, max_new_tokens=max_new_tokens),
                    batch_size=batch_size, on_batch=on_batch)
    responses = [""] * len(problems)
    for i, g in zip(order, gens):
        responses[i] = policy.decode_response(g.response_ids)
    rewards = grade_many(problems, responses)
    per_family, n = {}, {}
    for fam in test:
        idx = [i for i, p in enumerate(problems) if p.family == fam]
        n[fam] = len(idx)
        per_family[fam] = sum(rewards[i] for i in idx) / max(1, len(idx))
    untargeted = [f for f in test if f not in targeted]
    return EvalResult(_macro(per_family, targeted), _macro(per_family, untargeted), per_family, n,
                      {p.id: r for p, r in zip(problems, rewards)})
