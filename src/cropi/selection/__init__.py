"""What GRPO trains on: one registry of rules (``registry``), each a stage selector, a per-batch rule, or both,
and the ``train.selector`` spec grammar that resolves a run's config (``variants``).

Flow inside the package: ``baselines`` (stage functions without gradients) and the per-batch rules (``batch``
and one module per rule) -> ``registry`` -> ``variants``; ``export`` writes a selection for other trainers and
``diagnostics`` describes one.
"""

from cropi.selection.registry import (RULES, Rule, SelectionContext, Selector, batch_rules, make_batch_builder,
                                      make_selector, rules_help)
from cropi.selection.variants import apply_settings, parse_selector, resolve

SELECTORS = RULES

__all__ = ["RULES", "SELECTORS", "Rule", "SelectionContext", "Selector", "apply_settings", "batch_rules",
           "make_batch_builder", "make_selector", "parse_selector", "resolve", "rules_help"]
