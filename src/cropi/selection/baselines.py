"""Data-selection baselines that need no gradients (docs/method.md §6).  Each returns prompt ids.

``pass_rates`` are the behaviour policy's stored pass rates (``rollouts.trajectory_store.pass_rates``)."""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from cropi.scores.ranking import ranked, top_n


def select_full(ids: Sequence[str]) -> list[str]:
    return list(ids)


def select_random(ids: Sequence[str], ratio: float, seed: int, n: int | None = None) -> list[str]:
    pool = sorted(ids)
    random.Random(f"random:{seed}").shuffle(pool)
    return pool[: n or top_n(len(pool), ratio)]


def select_learnability(pass_rates: Mapping[str, float], ratio: float, n: int | None = None) -> list[str]:
    """Top fraction (or the top ``n``) by p(1 − p): prompts the policy solves about half the time first."""
    return ranked({k: p * (1 - p) for k, p in pass_rates.items()})[: n or top_n(len(pass_rates), ratio)]


def select_pass_rate(pass_rates: Mapping[str, float], ratio: float, seed: int, n: int | None = None) -> list[str]:
    """Uniform among prompts with 0 < p < 1 (never p in {0, 1}); at most the selection size."""
    eligible = sorted(k for k, p in pass_rates.items() if 0 < p < 1)
    random.Random(f"pass_rate:{seed}").shuffle(eligible)
    return eligible[: n or top_n(len(pass_rates), ratio)]
