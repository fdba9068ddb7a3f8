"""Selector variants: a selector name with ``+flag`` suffixes, e.g. ``cropi+drift+reprobe`` or
``static_influence+candidates2000``, each flag switching on one ``select`` setting for that selector.

Why each variant exists (the settings are conventional defaults, not fitted to results):

- ``drift`` (cropi): POPI's bias grows as the trained policy moves away from the behaviour policy that sampled
  the stored trajectories.  Re-collecting once the pool's median ESS falls below one half (the usual
  resampling rule for importance weights) keeps the scores close to on-policy, paying collection only when the
  drift is measured.
- ``reprobe`` (cropi): a prompt whose stored group had equal rewards has zero gradient forever, so it could
  never be chosen even after the policy changed; re-sampling 200 such prompts per stage
  (``select.reprobe_samples`` responses each) lets
  the ones that became learnable back in.
- ``refresh`` (cropi): re-collects with the current policy at every stage, so the stored rewards that decide
  which groups have a gradient at all are the current policy's, whatever the ESS says.
- ``candidatesN`` (cropi, static_influence): scoring costs one backward pass per pool prompt; scoring (and
  refreshing) only a seeded subset of N pool prompts per stage cuts that cost.  Both selectors draw the same
  subset at stage 0, so they stay comparable.
- ``stagesN`` (cropi): re-selects N times within the same step budget instead of the comparison's stage count,
  to see whether more frequent re-scoring pays.  Fewer than 3 stages would make cropi (nearly) static
  influence, so N >= 3.
"""

from __future__ import annotations

import re

from cropi.errors import ConfigError

VARIANT_SETTINGS = {"drift": {"drift_ess_threshold": 0.5}, "reprobe": {"reprobe_prompts": 200},
                    "refresh": {"refresh_every": 1}}
# Flags with a number: flag name -> (the ``select`` key it sets, the selectors it applies to, the least N).
NUMBERED_FLAGS = {"candidates": ("candidates", ("cropi", "static_influence"), 1), "stages": ("stages", ("cropi",), 3)}


def parse_selector(spec: str) -> tuple[str, dict]:
    """``"cropi+drift+reprobe"`` -> (``"cropi"``, the ``select`` settings it switches on)."""
    base, *flags = spec.split("+")
    settings: dict = {}
    for flag in flags:
        numbered = re.fullmatch(r"([a-z]+)(\d+)", flag)
        if numbered and numbered.group(1) in NUMBERED_FLAGS:
            key, bases, least = NUMBERED_FLAGS[numbered.group(1)]
            if base not in bases or int(numbered.group(2)) < least:
                raise ConfigError(f"selector {spec!r}: {flag!r} applies to {' and '.join(bases)}, with N >= {least}")
            settings[key] = int(numbered.group(2))
        elif flag not in VARIANT_SETTINGS:
            raise ConfigError(f"selector {spec!r}: unknown variant {flag!r} "
                              f"(known: {', '.join(VARIANT_SETTINGS)}, {', '.join(f + 'N' for f in NUMBERED_FLAGS)})")
        elif base != "cropi":
            raise ConfigError(f"selector {spec!r}: {flag!r} applies to cropi only")
        else:
            settings.update(VARIANT_SETTINGS[flag])
    return base, settings
