"""POPI per-prompt gradients against independently written references."""

import math

import torch

from cropi.gradients.popi import PromptGroup, groups_from_rows, log_ess, popi_loss, prompt_gradients
from cropi.rollouts.sampler import SamplingParams, generate


def _group(policy, prompt="12+34=", g=4, seed=0, temperature=1.0, rewards=None):
    ids = policy.encode_prompt(prompt)
    gens = generate(policy, [ids] * g, SamplingParams(temperature=temperature, max_new_tokens=5),
                    keys=[(seed, prompt, s) for s in range(g)])
    rewards = rewards or [float(s % 2) for s in range(g)]
    return PromptGroup(prompt, ids, [x.response_ids for x in gens], [x.behavior_logprobs for x in gens], rewards,
                       temperature)


def _reinforce_grad(model, group):
    """−(1/G) Σ_i A_i (1/T_i) Σ_t ∇ log π(o_it), written from scratch (one sequence at a time, no padding)."""
    r = torch.tensor(group.rewards)
    mu, sd = r.mean(), r.std(unbiased=True)
    adv = (r - mu) / (sd + 1e-4)
    model.zero_grad()
    total = 0.0
    for a, resp in zip(adv, group.response_ids):
        seq = torch.tensor([group.prompt_ids + resp])
        logits = model(input_ids=seq).logits[0, len(group.prompt_ids) - 1 : -1] / group.temperature
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(resp)[:, None]).sum()
        total = total - a * lp / len(resp) / len(group.rewards)
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_on_policy_equals_reinforce_form(micro_policy):
    for t in (1.0, 0.7):
        group = _group(micro_policy, temperature=t)
        ref = _reinforce_grad(micro_policy.model, group)
        got = next(prompt_gradients(micro_policy.model, [group], micro_policy.pad_token_id)).grads
        num = sum(((got[n] - ref[n]) ** 2).sum() for n in ref)
        den = sum((ref[n] ** 2).sum() for n in ref)
        assert math.sqrt(num / den) < 1e-5


def test_off_policy_uses_token_ratios_and_ess_drops(micro_policy):
    group = _group(micro_policy)
    at_beta = popi_loss(micro_policy.model, group, micro_policy.pad_token_id)
    assert abs(at_beta.ess - 1.0) < 1e-5 and at_beta.max_abs_log_ratio < 1e-4
    with torch.no_grad():
        for p in micro_policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    drift = popi_loss(micro_policy.model, group, micro_policy.pad_token_id)
    assert 1 / 4 - 1e-6 <= drift.ess < 1.0 and drift.max_abs_log_ratio > 1e-3


def test_gradient_does_not_depend_on_padding(micro_policy):
    group = _group(micro_policy, g=4)
    # the same group packed with 7 extra columns of left padding must give the same gradient
    a = next(prompt_gradients(micro_policy.model, [group], micro_policy.pad_token_id)).grads
    from cropi.rollouts import batch as batch_mod

    orig = batch_mod.pack

    def padded_pack(p, r, b, pad):  # add 7 columns of left padding
        out = orig(p, r, b, pad)
        n = out.input_ids.shape[0]
        pad_cols = lambda t, v: torch.cat([torch.full((n, 7), v, dtype=t.dtype), t], 1)
        return batch_mod.PackedBatch(pad_cols(out.input_ids, pad), pad_cols(out.attention_mask, 0),
                                     pad_cols(out.response_mask, 0), pad_cols(out.behavior_logprobs, 0))

    import cropi.gradients.popi as popi_mod

    popi_mod.pack = padded_pack
    try:
        b = next(prompt_gradients(micro_policy.model, [group], micro_policy.pad_token_id)).grads
    finally:
        popi_mod.pack = orig
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-4)


def test_zero_variance_groups_are_skipped_and_extremes_stay_finite(micro_policy):
    flat = _group(micro_policy, rewards=[1.0, 1.0, 1.0, 1.0])
    mixed = _group(micro_policy, prompt="9+9=")
    mixed.behavior_logprobs = [[-80.0] * len(x) for x in mixed.behavior_logprobs]  # ratios ~ e^80
    skipped = []
    out = list(prompt_gradients(micro_policy.model, [flat, mixed], micro_policy.pad_token_id, skipped=skipped))
    assert skipped == [flat.prompt_id] and [o.prompt_id for o in out] == [mixed.prompt_id]
    assert all(torch.isfinite(g).all() for g in out[0].grads.values())
    acg = popi_loss(micro_policy.model, mixed, micro_policy.pad_token_id, acg=True)
    assert torch.isfinite(acg.loss)


def test_log_ess_bounds_and_groups_from_rows():
    assert abs(float(log_ess(torch.zeros(8, dtype=torch.float64)))) < 1e-9
    assert abs(float(log_ess(torch.tensor([0.0] + [-1e4] * 7, dtype=torch.float64))) - math.log(1 / 8)) < 1e-9
    rows = [{"prompt_id": "a", "prompt_ids": [1], "response_ids": [2], "behavior_logprobs": [-1.0], "reward": r,
             "temperature": 1.0} for r in (0.0, 1.0)]
    (g,) = groups_from_rows(rows)
    assert g.rewards == [0.0, 1.0] and not g.zero_variance
