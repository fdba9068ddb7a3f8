"""What a stage chose, in numbers a person can check: families, behaviour pass rates, overlaps."""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

from cropi.tasks.problem import Problem

PASS_RATE_BINS = ("0", "(0,0.25]", "(0.25,0.5]", "(0.5,0.75]", "(0.75,1)", "1")


def _bin(p: float) -> str:
    if p <= 0:
        return "0"
    if p >= 1:
        return "1"
    for hi, name in ((0.25, "(0,0.25]"), (0.5, "(0.25,0.5]"), (0.75, "(0.5,0.75]")):
        if p <= hi:
            return name
    return "(0.75,1)"


def overlap(a: Sequence[str] | None, b: Sequence[str] | None) -> float | None:
    """|A ∩ B| / |A| (None when either is missing or A is empty)."""
    if not a or b is None:
        return None
    return len(set(a) & set(b)) / len(set(a))


def selection_diagnostics(
    selected: Sequence[str],
    pool: Sequence[Problem],
    pass_rates: Mapping[str, float] | None = None,
    previous: Sequence[str] | None = None,
    learnability: Sequence[str] | None = None,
) -> dict:
    """Family and difficulty histograms of the chosen prompts, their behaviour pass-rate histogram, and the
    overlap with the previous stage's choice and with the learnability choice of the same size."""
    by_id = {p.id: p for p in pool}
    chosen = [by_id[i] for i in selected if i in by_id]
    out = {
        "n_selected": len(selected),
        "families": dict(sorted(Counter(p.family for p in chosen).items())),
        "difficulty": {str(k): v for k, v in sorted(Counter(p.difficulty for p in chosen).items())},
        "overlap_previous": overlap(selected, previous),
        "overlap_learnability": overlap(selected, learnability),
    }
    if pass_rates is not None:
        hist = Counter(_bin(pass_rates[i]) for i in selected if i in pass_rates)
        out["pass_rate_hist"] = {b: hist.get(b, 0) for b in PASS_RATE_BINS}
    return out
