"""The shared GRPO/POPI objective against direct, obviously-correct formulas."""

import math

import pytest
import torch

from cropi.objective import LossSpec, group_advantages, kl_penalty, policy_loss, token_logprobs


def test_advantages_match_formula_and_zero_variance_groups_are_zero():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0, 0, 0, 0]])
    a = group_advantages(r)
    row = [1.0, 0.0, 0.0, 1.0, 1.0]
    mu = sum(row) / 5
    sd = math.sqrt(sum((x - mu) ** 2 for x in row) / 4)
    assert torch.allclose(a[0], torch.tensor([(x - mu) / (sd + 1e-4) for x in row]))
    assert torch.all(a[1:] == 0)


def test_loss_at_ratio_one_is_minus_mean_of_sequence_means():
    torch.manual_seed(0)
    g, length = 4, 6
    lp = torch.randn(g, length)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float)
    adv = torch.tensor([0.5, -1.0, 2.0, 0.1])
    loss = policy_loss(lp, lp.clone(), adv, mask, LossSpec(clip_eps=0.2))
    # every ρ = 1, so each sequence contributes −A_i
    assert torch.isclose(loss, -adv.mean())
    lens = mask.sum(-1)
    dr = policy_loss(lp, lp.clone(), adv, mask, LossSpec("dr_grpo", max_len=length))
    assert torch.isclose(dr, -(adv * lens / length).mean())


def test_loss_gradient_matches_reinforce_form_at_theta_equal_beta():
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (3, 5))
    mask = torch.ones(3, 5)
    adv = torch.tensor([1.0, -0.5, 0.25])
    lp = token_logprobs(logits, tokens)
    policy_loss(lp, lp.detach(), adv, mask).backward()
    g1 = logits.grad.clone()
    logits.grad = None
    lp = token_logprobs(logits, tokens)
    (-(adv[:, None] * lp).sum(-1) / 5).mean().backward()
    assert torch.allclose(g1, logits.grad, atol=1e-6)


def test_clip_limits_ratio_in_the_direction_of_the_advantage():
    lp = torch.tensor([[math.log(2.0)], [math.log(0.5)]])
    blp = torch.zeros(2, 1)
    mask = torch.ones(2, 1)
    # A > 0, ratio 2 -> clipped to 1.2; A < 0, ratio 0.5 -> clipped to 0.8
    assert torch.isclose(policy_loss(lp[:1], blp[:1], torch.tensor([1.0]), mask[:1], LossSpec(clip_eps=0.2)), torch.tensor(-1.2))
    assert torch.isclose(policy_loss(lp[1:], blp[1:], torch.tensor([-1.0]), mask[1:], LossSpec(clip_eps=0.2)), torch.tensor(0.8))
    with pytest.raises(ValueError):
        policy_loss(lp, blp, torch.ones(2), mask, LossSpec("nope"))


def test_token_logprobs_apply_temperature_and_kl_is_nonnegative():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    tok = torch.tensor([[0]])
    t = 0.5
    ref = math.log(math.exp(4.0) / (math.exp(4.0) + 1 + math.exp(-2.0)))
    assert abs(float(token_logprobs(logits, tok, t)) - ref) < 1e-6
    lp, ref_lp = torch.randn(4, 5), torch.randn(4, 5)
    assert float(kl_penalty(lp, ref_lp, torch.ones(4, 5))) >= 0
    assert float(kl_penalty(lp, lp, torch.ones(4, 5))) == 0
