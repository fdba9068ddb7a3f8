"""Selectors: which pool prompts a GRPO stage trains on (METHOD.md §5-6).

One small interface, seven implementations.  Every selector returns at most ``selection_size(len(pool), ratio,
size)`` prompt ids (``full`` returns all), so every run trains with the same step size and budget; only the prompts differ.

    full              every pool prompt
    random            a seeded random ``ratio`` of the pool, fixed for the run
    learnability      top ``ratio`` by p(1 − p) of the behaviour pass rate, fixed
    pass_rate         uniform among prompts with 0 < p < 1, fixed
    static_influence  top ``ratio`` by POPI influence at θ = β (one scoring pass), fixed
    cropi_curriculum  re-scored with the current policy at every stage (same stored trajectories): the paper's
                      curriculum
    cropi             the default: the whole pool, each step's batch chosen by influence among the prompts an
                      online screen found learnable (batch rule ``influence_filter``, training/batches.py)

A selector declares whether it needs behaviour rollouts (their collection is charged to its wall-clock), whether
it chooses again at every stage, and the batch rule its steps use (``none`` for plain GRPO on its prompts); the curriculum (``cropi.training.curriculum``) supplies pass rates
and influence rankings lazily through a ``SelectionContext``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from cropi.selection.baselines import select_full, select_learnability, select_pass_rate, select_random
from cropi.scores.ranking import selection_size
from cropi.tasks.problem import Problem


@dataclass
class SelectionContext:
    """What a selector may look at.  ``pass_rates`` and ``influence`` are computed only when called."""

    pool: Sequence[Problem]
    ratio: float
    seed: int
    stage: int
    pass_rates: Callable[[], Mapping[str, float]]  # behaviour pass rate per prompt id
    influence: Callable[[], list[str]]  # prompt ids ranked by fused influence for the current policy, best first
    fixed_size: int = 0  # ``select.size``: prompts per selection, whatever the pool size (0 = ratio)

    @property
    def size(self) -> int:
        return selection_size(len(self.pool), self.ratio, self.fixed_size)


class Selector(Protocol):
    name: str
    needs_rollouts: bool  # uses the behaviour store (its collection time counts for this selector)
    every_stage: bool  # chooses again at every stage (otherwise the stage-0 choice is kept)
    batch_rule: str  # train.filter.method its steps use ("none": the config's)

    def select(self, ctx: SelectionContext) -> list[str]: ...


@dataclass(frozen=True)
class _Simple:
    name: str
    needs_rollouts: bool
    every_stage: bool
    fn: Callable[[SelectionContext], list[str]]
    batch_rule: str = "none"

    def select(self, ctx: SelectionContext) -> list[str]:
        return self.fn(ctx)


def _influence_top(ctx: SelectionContext) -> list[str]:
    return ctx.influence()[: ctx.size]


SELECTORS: dict[str, Selector] = {
    s.name: s
    for s in (
        _Simple("full", False, False, lambda c: select_full([p.id for p in c.pool])),
        _Simple("random", False, False, lambda c: select_random([p.id for p in c.pool], c.ratio, c.seed, c.size)),
        _Simple("learnability", True, False, lambda c: select_learnability(c.pass_rates(), c.ratio, c.size)),
        _Simple("pass_rate", True, False, lambda c: select_pass_rate(c.pass_rates(), c.ratio, c.seed, c.size)),
        _Simple("static_influence", True, False, _influence_top),
        _Simple("cropi_curriculum", True, True, _influence_top),
        _Simple("cropi", False, False, lambda c: select_full([p.id for p in c.pool]), batch_rule="influence_filter"),
    )
}


def make_selector(name: str) -> Selector:
    from cropi.errors import ConfigError

    if name not in SELECTORS:
        raise ConfigError(f"train.selector: {name!r} is not a selector (choose from {', '.join(SELECTORS)})")
    return SELECTORS[name]


__all__ = ["SELECTORS", "SelectionContext", "Selector", "make_selector"]
