"""A ``train.selector`` spec: a rule's name with ``+flag`` suffixes, e.g. ``cropi+drift`` or ``cropi+greso``, and
the config a run resolves it to.

Why each flag exists (the settings are conventional defaults, not fitted to results):

- ``drift`` (re-scoring rules): POPI's bias grows as the trained policy moves away from the behaviour policy that
  sampled the stored trajectories.  Re-collecting once the pool's median ESS falls below one half (the usual
  resampling rule for importance weights) keeps the scores close to on-policy, paying collection only when the
  drift is measured.  It samples to score, so ``cropi+drift`` is a variant, not cropi.
- ``reprobe`` (re-scoring rules): a prompt whose stored group had equal rewards has zero gradient forever, so it
  could never be chosen even after the policy changed; re-sampling 200 such prompts per stage
  (``select.reprobe_samples`` responses each) lets the ones that became learnable back in.
- ``refresh`` (re-scoring rules): re-collects with the current policy at every stage, so the stored rewards that
  decide which groups have a gradient at all are the current policy's: on-policy scoring, a variant.
- ``reuse`` (re-scoring rules): the trainer samples a fresh group of every prompt it trains on; scoring those
  prompts from their latest trained group instead of β's rows refreshes exactly the rows that are most out of
  date, for free.
- ``candidatesN`` (rules that score): score (and refresh) only a seeded subset of N pool prompts per stage, since
  scoring costs one backward pass per scored prompt.  Without ``sizeN`` the stage keeps ``select.ratio`` of the
  pool (or ``select.size``), at most every usable candidate.
- ``sizeN`` (rules that score): select N prompts per stage (``select.size``) instead of the ratio of the pool.
- ``stagesN`` (re-scoring rules): re-select N times within the same step budget; N >= 3, since fewer would make
  it (nearly) static influence.
- a batch rule's name (``dapo``, ``greso``, ``online_filter``, ``online_influence``): that rule's batches inside
  the selected prompts.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from cropi.config import RunConfig
from cropi.errors import ConfigError
from cropi.selection.registry import GENERAL_DEFAULTS, RULES, Rule, batch_rules, influence_top, make_selector

VARIANT_SETTINGS = {"drift": {"select.drift_ess_threshold": 0.5}, "reprobe": {"select.reprobe_prompts": 200},
                    "refresh": {"select.refresh_every": 1}, "reuse": {"select.reuse_rollouts": True}}


def _scores(rule: Rule) -> bool:
    return rule.stage is influence_top


# Flags with a number: flag name -> (the ``select`` key it sets, which rules take it, the least N).
NUMBERED_FLAGS = {"candidates": ("candidates", _scores, 1), "size": ("size", _scores, 1),
                  "stages": ("stages", lambda r: r.every_stage, 3)}


def parse_selector(spec: str, cfg: RunConfig | None = None) -> tuple[Rule, dict]:
    """``"cropi+drift"`` -> (the ``cropi`` rule, the dotted settings the spec fixes: the rule's own, then its
    flags').  A rule's settings that depend on the run (``gradalign``'s stages) are computed from ``cfg``; without
    it they are left out."""
    base, *flags = spec.split("+")
    rule = make_selector(base)
    settings: dict[str, Any] = {}
    for key, value in rule.settings.items():
        if callable(value):
            if cfg is None:
                continue
            value = value(cfg)
        settings[key] = value
    for flag in flags:
        numbered = re.fullmatch(r"([a-z]+)(\d+)", flag)
        if numbered and numbered.group(1) in NUMBERED_FLAGS:
            key, applies, least = NUMBERED_FLAGS[numbered.group(1)]
            if not applies(rule) or int(numbered.group(2)) < least:
                takers = [r.name for r in RULES.values() if applies(r)]
                raise ConfigError(f"selector {spec!r}: {flag!r} applies to {', '.join(takers)}, with N >= {least}")
            settings[f"select.{key}"] = int(numbered.group(2))
        elif flag in batch_rules():
            settings["train.filter.method"] = flag
        elif flag not in VARIANT_SETTINGS:
            raise ConfigError(f"selector {spec!r}: unknown flag {flag!r} (known: {', '.join(VARIANT_SETTINGS)}, "
                              f"{', '.join(batch_rules())}, {', '.join(f + 'N' for f in NUMBERED_FLAGS)})")
        elif not rule.every_stage:
            raise ConfigError(f"selector {spec!r}: {flag!r} applies to the rules that re-score every stage "
                              f"({', '.join(r.name for r in RULES.values() if r.every_stage)})")
        else:
            settings.update(VARIANT_SETTINGS[flag])
    return rule, settings


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def apply_settings(cfg, settings: dict) -> None:
    """Set each dotted ``section.key`` of ``settings`` on ``cfg`` in place."""
    for dotted, value in settings.items():
        *path, key = dotted.split(".")
        setattr(_get(cfg, ".".join(path)) if path else cfg, key, value)


def resolve(cfg: RunConfig) -> RunConfig:
    """``cfg`` as it runs, so that the stored config says what ran: the spec's settings applied, every key left
    unset (None) given the rule's default or the general one, the rule's batch rule written into
    ``train.filter.method`` (another rule set there by hand is refused) and that rule's screen skip into
    ``screen_skip_p``.  A rule that chooses once keeps at most ``train.steps`` stages; one that re-selects every
    stage needs a step per stage."""
    rule, settings = parse_selector(cfg.train.selector, cfg)
    out = copy.deepcopy(cfg)
    method = out.train.filter.method
    apply_settings(out, settings)
    if "train.filter.method" in settings and method not in ("none", settings["train.filter.method"]):
        raise ConfigError(f"train.filter.method: {method!r} conflicts with selector {cfg.train.selector!r}")
    for defaults in (rule.defaults, GENERAL_DEFAULTS):
        for key, value in defaults.items():
            if _get(out, key) is None:
                apply_settings(out, {key: value(out) if callable(value) else value})
    if rule.batch is not None:
        if out.train.filter.method not in ("none", rule.name):
            raise ConfigError(f"train.filter.method: {out.train.filter.method!r} conflicts with selector "
                              f"{cfg.train.selector!r}, which builds its batches with {rule.name!r} (a stage "
                              f"selector takes a batch rule: --selector cropi+{out.train.filter.method})")
        out.train.filter.method = rule.name
    method = out.train.filter.method
    if method != "none" and method not in batch_rules():
        raise ConfigError(f"train.filter.method: {method!r} is not a batch rule (choose from none, "
                          f"{', '.join(batch_rules())})")
    skip = RULES[method].screen_skip_p if method != "none" else None
    if skip is not None and out.train.filter.screen_skip_p is None:
        out.train.filter.screen_skip_p = skip
    f = out.train.filter
    if method in ("online_filter", "online_influence") and f.screen_samples >= out.rollout.group_size:
        raise ConfigError(f"train.filter.screen_samples: {f.screen_samples!r}: must be below rollout.group_size "
                          f"({out.rollout.group_size})")
    if out.select.stages > out.train.steps:
        if rule.every_stage:
            raise ConfigError(f"select.stages: {out.select.stages!r}: must be at most train.steps "
                              f"({out.train.steps}) for {cfg.train.selector!r}, which re-selects every stage")
        out.select.stages = out.train.steps
    return out
