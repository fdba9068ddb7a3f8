"""Selector variants: a selector name with ``+flag`` suffixes, e.g. ``cropi_curriculum+drift+reprobe`` or
``static_influence+candidates2000``, each flag switching on one ``select`` setting for that selector.

Why each variant exists (the settings are conventional defaults, not fitted to results):

- ``drift`` (cropi_curriculum): POPI's bias grows as the trained policy moves away from the behaviour policy
  that sampled the stored trajectories.  Re-collecting once the pool's median ESS falls below one half (the
  usual resampling rule for importance weights) keeps the scores close to on-policy, paying collection only
  when the drift is measured.
- ``reprobe`` (cropi_curriculum): a prompt whose stored group had equal rewards has zero gradient forever, so it
  could never be chosen even after the policy changed; re-sampling 200 such prompts per stage
  (``select.reprobe_samples`` responses each) lets the ones that became learnable back in.
- ``refresh`` (cropi_curriculum): re-collects with the current policy at every stage, so the stored rewards that
  decide which groups have a gradient at all are the current policy's, whatever the ESS says.
- ``reuse`` (cropi_curriculum): the trainer samples a fresh group of every prompt it trains on; scoring those
  prompts from their latest trained group instead of β's rows refreshes exactly the rows that are most out of
  date, for free.  A prompt the policy has since learned (equal rewards) then drops out of the selection.
- ``candidatesN`` (cropi_curriculum, static_influence): scoring costs one backward pass per pool prompt; scoring
  (and refreshing) only a seeded subset of N pool prompts per stage cuts that cost.  Both selectors draw the
  same subset at stage 0, so they stay comparable.
- ``sizeN`` (cropi_curriculum, static_influence): selects N prompts per stage (``select.size``) instead of the
  ratio of the pool, e.g. about what a stage trains on.
- ``stagesN`` (cropi_curriculum): re-selects N times within the same step budget instead of the comparison's
  stage count, to see whether more frequent re-scoring pays.  Fewer than 3 stages would make it (nearly)
  static influence, so N >= 3.
- ``dapo``, ``greso``, ``online_filter``, ``influence_filter`` (any selector): that batch rule inside the
  selected prompts.

The peers (selector names of their own, each a base selector with settings; ``cropi.training.batches`` says what
each re-implements and simplifies):

- ``dapo``, ``greso``, ``online_filter``: the full pool, with that batch rule (``train.filter.method``).
- ``gradalign`` (GradAlign, arXiv 2602.21492): cropi_curriculum re-scoring from fresh on-policy rollouts every
  round — ``refresh`` on a candidate subset — with GradAlign's round shape scaled to 32 prompts per step: 10 steps per
  round, 1,280 fresh candidates, the top 1/20 of them (64) kept, so a round covers its subset five times, as in
  GradAlign's example (5,120 candidates, 256 kept, 10 steps of 128).  Simplified: the candidates are a seeded
  random subset per round rather than consecutive chunks of one shuffle, and several validation sets are fused
  by reciprocal rank where GradAlign has one.
"""

from __future__ import annotations

import re
from typing import Any

from cropi.errors import ConfigError

VARIANT_SETTINGS = {"drift": {"select.drift_ess_threshold": 0.5}, "reprobe": {"select.reprobe_prompts": 200},
                    "refresh": {"select.refresh_every": 1}, "reuse": {"select.reuse_rollouts": True}}
BATCH_RULES = ("dapo", "greso", "online_filter", "influence_filter")  # flags any selector takes
GRADALIGN_CANDIDATES, GRADALIGN_KEEP, GRADALIGN_ROUND_STEPS = 1280, 1 / 20, 10
# selector name -> (base selector, settings); a callable value is computed from the comparison's config
PEERS: dict[str, tuple[str, dict[str, Any]]] = {
    **{rule: ("full", {"train.filter.method": rule}) for rule in ("dapo", "greso", "online_filter")},
    "gradalign": ("cropi_curriculum", {
        "select.refresh_every": 1,
        "select.candidates": GRADALIGN_CANDIDATES,
        "select.size": round(GRADALIGN_CANDIDATES * GRADALIGN_KEEP),
        "select.stages": lambda cfg: max(3, cfg.train.steps // GRADALIGN_ROUND_STEPS),
    }),
}


# Flags with a number: flag name -> (the ``select`` key it sets, the selectors it applies to, the least N).
NUMBERED_FLAGS = {"candidates": ("candidates", ("cropi_curriculum", "static_influence"), 1),
                  "stages": ("stages", ("cropi_curriculum",), 3),
                  "size": ("size", ("cropi_curriculum", "static_influence"), 1)}


def parse_selector(spec: str, cfg=None) -> tuple[str, dict]:
    """``"cropi_curriculum+drift+reprobe"`` -> (``"cropi_curriculum"``, the dotted settings it switches on).  A peer's settings that
    depend on the run (``gradalign``'s) are computed from ``cfg``; without it they are left out."""
    base, *flags = spec.split("+")
    settings: dict = {}
    if base in PEERS:
        base, peer = PEERS[base]
        for key, value in peer.items():
            if callable(value):
                if cfg is None:
                    continue
                value = value(cfg)
            settings[key] = value
    for flag in flags:
        numbered = re.fullmatch(r"([a-z]+)(\d+)", flag)
        if numbered and numbered.group(1) in NUMBERED_FLAGS:
            key, bases, least = NUMBERED_FLAGS[numbered.group(1)]
            if base not in bases or int(numbered.group(2)) < least:
                raise ConfigError(f"selector {spec!r}: {flag!r} applies to {' and '.join(bases)}, with N >= {least}")
            settings[f"select.{key}"] = int(numbered.group(2))
        elif flag in BATCH_RULES:
            settings["train.filter.method"] = flag
        elif flag not in VARIANT_SETTINGS:
            raise ConfigError(f"selector {spec!r}: unknown variant {flag!r} (known: {', '.join(VARIANT_SETTINGS)}, "
                              f"{', '.join(BATCH_RULES)}, {', '.join(f + 'N' for f in NUMBERED_FLAGS)})")
        elif base != "cropi_curriculum":
            raise ConfigError(f"selector {spec!r}: {flag!r} applies to cropi_curriculum only")
        else:
            settings.update(VARIANT_SETTINGS[flag])
    return base, settings


def apply_settings(cfg, settings: dict) -> None:
    """Set each dotted ``section.key`` of ``settings`` on ``cfg`` in place."""
    for dotted, value in settings.items():
        *path, key = dotted.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        setattr(node, key, value)
