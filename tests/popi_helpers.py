"""Test helpers over the POPI estimators: per-prompt gradients as plain records."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

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


def formed_group_gradient(model, group, temperature: float = 1.0, behaviour: bool = True) -> dict[str, torch.Tensor]:
    """A group's GRPO gradient written out, the slow reference: each response alone through the model, per-token
    ratio exp(log π − log β) times the group-normalised advantage (unbiased std + 1e-4), token mean per response,
    mean over the group; ``{name: gradient}``.  ``behaviour=False``: β is the current model itself (ratio 1, the
    on-policy gradient), for responses stored without behaviour log-probs."""
    model.zero_grad(set_to_none=True)
    rewards = torch.tensor(group.rewards, dtype=torch.float64)
    adv = (rewards - rewards.mean()) / (rewards.std(unbiased=True) + 1e-4)
    loss = torch.zeros(())
    for gen, a in zip(group.gens, adv):
        ids = torch.tensor([gen.prompt_ids + gen.response_ids])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float() / temperature, -1)
        tok = torch.stack([logp[len(gen.prompt_ids) + t - 1, x] for t, x in enumerate(gen.response_ids)])
        old = torch.tensor(gen.behavior_logprobs) if behaviour else tok.detach()
        loss = loss - (torch.exp(tok - old) * float(a)).mean() / len(group.gens)
    loss.backward()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out
