"""Influence of a few dozen prompt groups held in memory (a batch rule's screen): the same estimator and the same
ranking as the engine (``scores.engine``, ``scores.ranking``), without the store machinery that only adds files
there."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch

from cropi.errors import CropiError
from cropi.gradients.popi import GradientEstimator
from cropi.rollouts.trajectory_store import PromptGroup
from cropi.scores.ranking import Ranking, cosine_scores, rank

log = logging.getLogger("cropi")


def flat_gradients(estimator: GradientEstimator, groups: Sequence[PromptGroup]) -> tuple[list[str], torch.Tensor | None]:
    """The usable groups' gradients, each flattened over ``estimator.param_names`` into one row: (prompt ids,
    [N, d] tensor, or None when no group is usable).  For a few dozen groups held in memory (a batch rule's
    screen), where the store machinery above would only add files."""
    ids, rows = [], []
    for gb in estimator.gradients(groups).batches:
        if gb.projected is not None:  # a sketching estimator: rows in its projector's space
            ids += gb.prompt_ids
            rows += list(gb.projected)
            continue
        whole = gb.whole()
        for b, pid in enumerate(gb.prompt_ids):
            ids.append(pid)
            rows.append(torch.cat([whole[n][b].reshape(-1) for n in estimator.param_names]))
    return ids, (torch.stack(rows) if rows else None)


def group_means(estimator: GradientEstimator, groups_by_set: Mapping[str, Sequence[PromptGroup]]) -> dict[str, torch.Tensor]:
    """ḡ_v of each validation set from its groups held in memory.  A set with no usable group (every reward group
    equal) is left out with one warning, since the fusion then silently targets the other sets; with none left
    it is an error, since a ranking would then be no ranking at all."""
    means = {}
    for name, groups in groups_by_set.items():
        _, rows = flat_gradients(estimator, groups)
        if rows is None:
            log.warning("validation set %r has no prompt with mixed rewards: left out of the influence fusion", name)
            continue
        means[name] = rows.mean(0)
    if not means:
        raise CropiError(f"no validation set ({', '.join(groups_by_set)}) has a prompt with mixed rewards, so "
                         "there is no direction to score against; sample more responses or use easier validation prompts")
    return means


def rank_groups(estimator: GradientEstimator, groups: Sequence[PromptGroup], means: Mapping[str, torch.Tensor],
                n: int) -> Ranking:
    """The usable ``groups`` ranked by cosine to each validation mean, fused by reciprocal rank into the top
    ``n`` (``scores.ranking``: the one place prompts are ranked)."""
    ids, rows = flat_gradients(estimator, groups)
    if rows is None:
        return Ranking([], n)
    return rank({v: dict(zip(ids, cosine_scores(rows, m).tolist())) for v, m in means.items()}, n)
