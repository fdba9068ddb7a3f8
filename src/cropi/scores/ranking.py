"""Influence scores and their fusion (docs/method.md §4): the one place where prompts are ranked.

s_v(x) = cos(g̃_x, ḡ_v): the cosine between a training prompt's projected gradient and the mean projected
gradient of validation set v.  Several validation sets are fused by reciprocal rank: with N = ⌊ratio·|pool|⌋,
take each set's top-N list, F(x) = Σ_v 1/rank_v(x) over the lists that contain x, keep the top N by F — ties
broken by the best single rank, then by prompt id, so the selection is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch


def mean_direction(val_projected: torch.Tensor) -> torch.Tensor:
    """ḡ_v: the mean of a validation set's projected gradients [M, k] -> [k] (fp32)."""
    if val_projected.shape[0] == 0:
        raise ValueError("validation set has no usable gradient (every reward group had zero variance)")
    return val_projected.float().mean(0)


def cosine_scores(train_projected: torch.Tensor, direction: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """cos(g̃_x, ḡ_v) for each row of ``train_projected`` [N, k]; a zero row scores 0."""
    x = train_projected.float()
    d = direction.float()
    num = x @ d
    den = x.norm(dim=1) * d.norm()
    return torch.where(den > eps, num / den.clamp_min(eps), torch.zeros_like(num))


def top_n(n_pool: int, ratio: float) -> int:
    return max(1, int(math.floor(ratio * n_pool)))


def selection_size(n_pool: int, ratio: float, size: int = 0) -> int:
    """Prompts one selection keeps: ``size`` when set (at most the pool), else ``top_n(n_pool, ratio)``."""
    return min(size, n_pool) if size > 0 else top_n(n_pool, ratio)


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Ids by descending score, ties by id."""
    return sorted(scores, key=lambda i: (-scores[i], i))


def reciprocal_rank_fusion(scores_by_set: Mapping[str, Mapping[str, float]], n: int) -> list[str]:
    """Fuse per-validation-set scores: the top ``n`` ids by F(x) = Σ_v 1/rank_v(x) over each set's top-n list."""
    fused: dict[str, float] = {}
    best: dict[str, int] = {}
    for scores in scores_by_set.values():
        for rank, pid in enumerate(ranked(scores)[:n], start=1):
            fused[pid] = fused.get(pid, 0.0) + 1.0 / rank
            best[pid] = min(best.get(pid, rank), rank)
    return sorted(fused, key=lambda i: (-fused[i], best[i], i))[:n]


@dataclass
class Ranking:
    """The fused selection of one scoring pass: ``ids`` best first, at most ``n``.  The scores file's
    ``fused_rank`` column and the curriculum's choice are both this object."""

    ids: list[str]
    n: int

    def rank_of(self) -> dict[str, int]:
        """prompt id -> fused rank (1 = best) for the chosen ids."""
        return {p: i + 1 for i, p in enumerate(self.ids)}


def rank(scores_by_set: Mapping[str, Mapping[str, float]], n: int) -> Ranking:
    """Reciprocal-rank fusion of the per-set scores into the top ``n``."""
    return Ranking(reciprocal_rank_fusion(scores_by_set, n) if scores_by_set else [], n)

