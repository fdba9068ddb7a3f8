"""Every rule for what GRPO trains on, declared once: its stage part (which pool prompts a curriculum stage may
train on), its per-batch part (how a step builds its batch among them), its config, its help and its citation.

    cropi             the paper's method (docs/method.md §5): at every stage, score candidates of the pool with the
                      current policy from ONE stored behaviour (β) store, off-policy (POPI), and train on the top
    full, random, learnability, pass_rate, static_influence
                      the paper's baselines (docs/method.md §6), fixed for the run
    dapo, greso, online_filter
                      the peers' batch rules over the whole pool (docs/method.md §9)
    online_influence  cropi's ranking inside the online filter's screen: it samples in order to score
    cropi_harvest     cropi's influence read from the trainer's own backward, choosing among GRESO's batches
    gradalign         GradAlign: cropi's ranking from fresh on-policy rollouts every round

A new rule is one module (a stage function or a ``BatchBuilder``) plus one ``Rule(...)`` below.  Every rule
trains with the same step size and budget; only the prompts differ.  ``cropi.selection.variants`` turns a
``train.selector`` spec (``cropi+greso``, ``cropi+candidates2000``) into the settings a run resolves to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from cropi.config import RunConfig
from cropi.errors import ConfigError
from cropi.scores.ranking import selection_size
from cropi.selection.baselines import select_full, select_learnability, select_pass_rate, select_random
from cropi.selection.batch import BatchBuilder, PlainBatches
from cropi.selection.dapo import DynamicSampling
from cropi.selection.greso import Greso
from cropi.selection.harvest import HarvestedInfluence
from cropi.selection.online_filter import SpeedScreening
from cropi.selection.online_influence import InfluenceScreening
from cropi.tasks.problem import Problem


@dataclass
class SelectionContext:
    """What a stage selector may look at.  ``pass_rates`` and ``influence`` are computed only when called."""

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
    needs_rollouts: bool
    every_stage: bool
    batch_rule: str

    def select(self, ctx: SelectionContext) -> list[str]: ...


StageFn = Callable[[SelectionContext], list[str]]
BatchFactory = Callable[[RunConfig, Mapping[str, Sequence[Problem]]], BatchBuilder]


def whole_pool(ctx: SelectionContext) -> list[str]:
    return select_full([p.id for p in ctx.pool])


def influence_top(ctx: SelectionContext) -> list[str]:
    return ctx.influence()[: ctx.size]


@dataclass(frozen=True)
class Rule:
    name: str
    help: str  # one line: what the rule trains on (``cropi train --help``)
    cite: str  # where it comes from
    stage: StageFn = whole_pool
    batch: BatchFactory | None = None  # None: the batches of ``train.filter.method`` (plain GRPO by default)
    needs_rollouts: bool = False  # reads the behaviour store (its collection is charged to the rule's seconds)
    every_stage: bool = False  # chooses again at every stage (otherwise the stage-0 choice is kept)
    settings: Mapping[str, Any] = field(default_factory=dict)  # config values the rule fixes (a callable: of the config)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # values of its config keys the user left unset
    screen_skip_p: float | None = None  # a screening batch rule's train.filter.screen_skip_p when unset

    @property
    def batch_rule(self) -> str:
        """The ``train.filter.method`` its steps use ("none": the config's)."""
        return self.name if self.batch is not None else "none"

    def select(self, ctx: SelectionContext) -> list[str]:
        return self.stage(ctx)


def _stage_steps(steps: int, least: int = 1) -> Callable[[RunConfig], int]:
    return lambda cfg: max(least, cfg.train.steps // steps)


# The embedded pool is 12,800 prompts; 1,280 candidates are its 10%.  GradAlign's round shape is scaled to 32
# prompts a step: 10-step rounds, 1,280 fresh candidates, the top 1/20 kept (its example: 5,120, 256, 128 a step).
GRADALIGN_CANDIDATES, GRADALIGN_KEEP = 1280, 64

RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("cropi", "the paper's: stored samples re-scored off-policy each stage", "CROPI, Zhu et al., arXiv 2510.26491",
         influence_top, needs_rollouts=True, every_stage=True,
         # the best off-policy configuration on validation (docs/results.md): 10-step stages as the authors',
         # a 10% candidate subset instead of the whole pool (scoring cost), the top 80 (beat 320)
         defaults={"select.candidates": 1280, "select.size": 80, "select.stages": _stage_steps(10)}),
    Rule("full", "every pool prompt: plain GRPO", "GRPO, Shao et al., arXiv 2402.03300"),
    Rule("random", "a seeded random select.ratio of the pool, fixed", "CROPI's baselines, arXiv 2510.26491",
         lambda c: select_random([p.id for p in c.pool], c.ratio, c.seed, c.size)),
    Rule("learnability", "top select.ratio by p(1 - p) of the behaviour pass rate",
         "CROPI's baselines, arXiv 2510.26491", lambda c: select_learnability(c.pass_rates(), c.ratio, c.size),
         needs_rollouts=True),
    Rule("pass_rate", "uniform among prompts with 0 < behaviour pass rate < 1",
         "CROPI's baselines, arXiv 2510.26491", lambda c: select_pass_rate(c.pass_rates(), c.ratio, c.seed, c.size),
         needs_rollouts=True),
    Rule("static_influence", "top select.ratio by influence at the behaviour policy",
         "CROPI's baselines, arXiv 2510.26491", influence_top, needs_rollouts=True),
    Rule("dapo", "DAPO dynamic sampling: drop equal-reward groups, refill", "DAPO, arXiv 2503.14476",
         batch=lambda cfg, val: DynamicSampling(cfg)),
    Rule("greso", "GRESO: dynamic sampling, skipping recently all-equal prompts",
         "GRESO, arXiv 2506.02177", batch=lambda cfg, val: Greso(cfg)),
    Rule("online_filter", "SPEED-RL: screen with 4 responses, finish the mixed ones",
         "SPEED-RL, arXiv 2506.09016; online difficulty filtering, arXiv 2504.03380",
         batch=lambda cfg, val: SpeedScreening(cfg), screen_skip_p=1.0),
    Rule("online_influence", "screened prompts ranked by influence (samples to score)", "cropi's ranking inside SPEED-RL's screen",
         batch=lambda cfg, val: InfluenceScreening(cfg, val), screen_skip_p=0.5),
    Rule("cropi_harvest", "cropi, influence read from the trainer's own backward", "CROPI, arXiv 2510.26491, harvested inside the GRPO step; GRESO, arXiv 2506.02177",
         batch=lambda cfg, val: HarvestedInfluence(cfg, val)),
    Rule("gradalign", "GradAlign: every 10 steps, fresh on-policy influence, top 64", "GradAlign, arXiv 2602.21492", influence_top, needs_rollouts=True, every_stage=True,
         settings={"select.refresh_every": 1, "select.candidates": GRADALIGN_CANDIDATES,
                   "select.size": GRADALIGN_KEEP, "select.stages": _stage_steps(10, least=3)}),
)}

# Where neither the user nor the rule set them.
GENERAL_DEFAULTS = {"select.candidates": 0, "select.size": 0, "select.stages": 4}


def make_selector(name: str) -> Rule:
    """The rule named ``name`` (a bare name; ``cropi.selection.variants.parse_selector`` reads a spec)."""
    if name not in RULES:
        raise ConfigError(f"train.selector: {name!r} is not a rule (choose from {', '.join(RULES)})")
    return RULES[name]


def batch_rules() -> list[str]:
    """The names ``train.filter.method`` takes besides ``none``."""
    return [r.name for r in RULES.values() if r.batch is not None]


def make_batch_builder(cfg: RunConfig, validation: Mapping[str, Sequence[Problem]] | None = None) -> BatchBuilder:
    """The batch builder of ``cfg.train.filter.method`` (``online_influence`` and ``cropi_harvest`` need the
    validation sets)."""
    method = cfg.train.filter.method
    if method == "none":
        return PlainBatches(cfg)
    if method not in batch_rules():
        raise ConfigError(f"train.filter.method: {method!r} is not a batch rule (choose from none, "
                          f"{', '.join(batch_rules())})")
    if method in ("online_influence", "cropi_harvest") and not validation:
        raise ConfigError(f"train.filter.method={method} needs validation sets (the embedded suite's, or --val)")
    return RULES[method].batch(cfg, validation or {})


def rules_help() -> str:
    """One line per rule, for ``--help``."""
    width = max(map(len, RULES))
    return "\n".join(f"{r.name:<{width}}  {r.help}" for r in RULES.values())
