"""Test helpers over the POPI estimators: per-prompt gradients as plain records."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from cropi.gradients.popi import make_estimator, popi_loss, scoring_loss


def prompt_gradients(model, groups, pad_id, param_names=None, batch_size=1, **loss):
    """g_x per usable prompt: records with prompt_id, grads, ess, max_abs_log_ratio."""
    acg = loss.pop("acg", False)
    spec = dataclasses.replace(scoring_loss(), **loss)
    est = make_estimator(model, pad_id, spec, acg, param_names, batch_size)
    for gb in est.gradients(groups).batches:
        for b, pid in enumerate(gb.prompt_ids):
            yield SimpleNamespace(prompt_id=pid, grads=gb.prompt(b), ess=gb.ess[b],
                                  max_abs_log_ratio=gb.max_abs_log_ratio[b])


def one_loss(model, group, pad_id, **loss):
    """L(θ; x) of one group with its diagnostics: record with loss, ess, max_abs_log_ratio."""
    acg = loss.pop("acg", False)
    out = popi_loss(model, [group], pad_id, dataclasses.replace(scoring_loss(), **loss), acg)
    return SimpleNamespace(loss=out.losses[0], ess=out.ess[0], max_abs_log_ratio=out.max_abs_log_ratio[0])
