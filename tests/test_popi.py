"""POPI per-prompt gradients against independently written references."""

import math

import pytest
import torch

from cropi.gradients.popi import log_ess, make_estimator
from cropi.rollouts.trajectory_store import PromptGroup, prompt_groups
from tests.popi_helpers import one_loss, prompt_gradients
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


def _popi_reference_grad(model, group, acg=False):
    """∇ of L = −(1/G) Σ_i (1/T_i) Σ_t ρ_it A_i with ρ_it = π_θ(o_it) / β(o_it), written out token by token (one
    sequence at a time, no padding, no batching); A_i GRPO's (unbiased std), or with ``acg`` the weighted mean
    and reliability-weighted std under w_i = exp(mean_t log ρ_it), held constant."""
    g = len(group.rewards)
    token_lps = []
    for resp in group.response_ids:
        seq = torch.tensor([group.prompt_ids + resp])
        logits = model(input_ids=seq).logits[0] / group.temperature
        lps = []
        for t, tok in enumerate(resp):  # token t of the response is predicted at position len(prompt) + t − 1
            lps.append(torch.log_softmax(logits[len(group.prompt_ids) + t - 1], -1)[tok])
        token_lps.append(lps)
    if acg:
        means = [sum(float(lp.detach()) - b for lp, b in zip(lps, blp)) / len(lps)
                 for lps, blp in zip(token_lps, group.behavior_logprobs)]
        adv = _acg_reference(group.rewards, means)
    else:
        mu = sum(group.rewards) / g
        sd = math.sqrt(sum((r - mu) ** 2 for r in group.rewards) / (g - 1))
        adv = [(r - mu) / (sd + 1e-4) for r in group.rewards]
    loss = 0.0
    for lps, blp, a in zip(token_lps, group.behavior_logprobs, adv):
        per_seq = 0.0
        for lp, b in zip(lps, blp):
            per_seq = per_seq + torch.exp(lp - b) * a
        loss = loss - per_seq / len(lps) / g
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _rel_err(got, ref):
    return math.sqrt(sum(float(((got[n] - ref[n]) ** 2).sum()) for n in ref)
                     / sum(float((ref[n] ** 2).sum()) for n in ref))


@pytest.mark.parametrize("acg", [False, True])
def test_off_policy_gradient_uses_per_token_ratios_and_ess_drops(micro_policy, acg):
    group = _group(micro_policy, temperature=0.7, rewards=[1.0, 0.0, 0.0, 1.0])
    at_beta = one_loss(micro_policy.model, group, micro_policy.pad_token_id)
    assert abs(at_beta.ess - 1.0) < 1e-5 and at_beta.max_abs_log_ratio < 1e-4
    torch.manual_seed(5)
    with torch.no_grad():  # θ ≠ β
        for p in micro_policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    drift = one_loss(micro_policy.model, group, micro_policy.pad_token_id)
    assert 1 / 4 - 1e-6 <= drift.ess < 1.0 and drift.max_abs_log_ratio > 1e-3
    model, pad = micro_policy.model, micro_policy.pad_token_id
    ref = _popi_reference_grad(model, group, acg)
    got = next(prompt_gradients(model, [group], pad, acg=acg)).grads
    assert _rel_err(got, ref) < 1e-5
    # one token's behaviour log-prob moved: only that token's ratio changes (by e^-0.7), and the gradient follows
    assert len(group.response_ids[1]) >= 2
    group.behavior_logprobs[1][1] += 0.7
    ref_moved = _popi_reference_grad(model, group, acg)
    got_moved = next(prompt_gradients(model, [group], pad, acg=acg)).grads
    assert _rel_err(got_moved, ref_moved) < 1e-5
    assert _rel_err(ref_moved, ref) > 1e-3  # the comparison can tell the two apart
    diff_got = {n: got_moved[n] - got[n] for n in ref}
    diff_ref = {n: ref_moved[n] - ref[n] for n in ref}
    assert _rel_err(diff_got, diff_ref) < 1e-3


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


def test_zero_variance_groups_are_skipped(micro_policy):
    flat = _group(micro_policy, rewards=[1.0, 1.0, 1.0, 1.0])
    mixed = _group(micro_policy, prompt="9+9=")
    out = make_estimator(micro_policy.model, micro_policy.pad_token_id).gradients([flat, mixed])
    assert out.skipped == [flat.prompt_id] and [gb.prompt_ids for gb in out.batches] == [[mixed.prompt_id]]


@pytest.mark.parametrize("low", [-80.0, -100.0, -1e4])
def test_extreme_log_ratios_stay_finite(micro_policy, low):
    """(e) Behaviour log-probs of `low` and 0 mixed within and across responses, and a policy pushed far away
    (weights × 30, so its own log-probs reach the hundreds): per-token log-ratios of both signs far past fp32's
    exp range.  Loss, gradient, ESS and max |log-ratio| stay finite for every option; ESS ∈ [1/G, 1]."""
    g = 4
    group = _group(micro_policy, prompt="9+9=", g=g)
    group.behavior_logprobs = [[low if (i + t) % 2 == 0 else 0.0 for t in range(len(x))]
                               for i, x in enumerate(group.response_ids)]
    params = [p for _, p in micro_policy.model.named_parameters()]
    with torch.no_grad():
        for p in params:
            p.mul_(30.0)
    for kw in ({}, {"acg": True}, {"clip_eps": 0.2}):
        out = one_loss(micro_policy.model, group, micro_policy.pad_token_id, **kw)
        grads = torch.autograd.grad(out.loss, params, allow_unused=True)
        assert torch.isfinite(out.loss), kw
        assert all(gr is None or torch.isfinite(gr).all() for gr in grads), kw
        assert any(gr is not None and gr.abs().sum() > 0 for gr in grads), kw
        assert 1 / g - 1e-9 <= out.ess <= 1 + 1e-9, (kw, out.ess)
        assert math.isfinite(out.max_abs_log_ratio) and out.max_abs_log_ratio > 60, kw  # past the cap
    (pg,) = prompt_gradients(micro_policy.model, [group], micro_policy.pad_token_id)
    assert all(torch.isfinite(v).all() for v in pg.grads.values()) and 1 / g - 1e-9 <= pg.ess <= 1 + 1e-9


def test_log_ratio_cap_only_acts_past_the_cap(micro_policy):
    """The overflow guard changes nothing for moderate drift, and past the cap gives ρ̃ = e^c with ∇ρ̃ = ρ̃ ∇ log π."""
    group = _group(micro_policy)
    with torch.no_grad():
        for p in micro_policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    params = list(micro_policy.model.parameters())
    a = torch.autograd.grad(one_loss(micro_policy.model, group, micro_policy.pad_token_id).loss, params)
    b = torch.autograd.grad(one_loss(micro_policy.model, group, micro_policy.pad_token_id,
                                      max_log_ratio=None).loss, params)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    from cropi.objective import LossSpec, policy_loss

    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    blp = torch.tensor([[-200.0, -2.5]])
    loss = policy_loss(lp, blp, torch.tensor([2.0]), torch.ones(1, 2), LossSpec(max_log_ratio=50.0))
    (grad,) = torch.autograd.grad(loss, lp)
    rho = torch.tensor([math.exp(50.0), math.exp(0.5)])
    assert torch.isclose(loss, -(2.0 * rho).sum() / 2, rtol=1e-5)
    assert torch.allclose(grad[0], -2.0 * rho / 2, rtol=1e-5)


def _acg_reference(rewards, seq_mean_log_ratio):
    """Weighted mean and reliability-weighted std written out one response at a time (unnormalised weights)."""
    w = [math.exp(x) for x in seq_mean_log_ratio]
    sw, sw2 = sum(w), sum(x * x for x in w)
    mu = sum(wi * ri for wi, ri in zip(w, rewards)) / sw
    var = sum(wi * (ri - mu) ** 2 for wi, ri in zip(w, rewards)) / (sw - sw2 / sw)
    return [(ri - mu) / (math.sqrt(var) + 1e-4) for ri in rewards]


def test_acg_advantages_at_equal_weights_are_grpos():
    from cropi.gradients.popi import acg_advantages
    from cropi.objective import group_advantages

    gen = torch.Generator().manual_seed(3)
    for g in (2, 4, 8, 16):
        for _ in range(5):
            rewards = torch.randint(0, 2, (g,), generator=gen).float()
            rewards[0], rewards[1] = 0.0, 1.0  # mixed
            for level in (0.0, -3.7, 12.0):  # equal weights, whatever their common value
                got = acg_advantages(rewards, torch.full((g,), level))
                assert torch.allclose(got, group_advantages(rewards), rtol=1e-6, atol=1e-6), (g, level)


def test_acg_advantages_match_an_explicit_weighted_reference():
    from cropi.gradients.popi import acg_advantages

    gen = torch.Generator().manual_seed(4)
    for g in (2, 3, 8, 32):
        for _ in range(10):
            rewards = torch.rand(g, generator=gen).round(decimals=1)
            lr = 2.0 * torch.randn(g, generator=gen)
            ref = torch.tensor(_acg_reference(rewards.double().tolist(), lr.double().tolist()), dtype=torch.float64)
            got = acg_advantages(rewards, lr).double()
            assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (g, got, ref)


def test_log_ess_bounds_and_prompt_groups():
    assert abs(float(log_ess(torch.zeros(8, dtype=torch.float64)))) < 1e-9
    assert abs(float(log_ess(torch.tensor([0.0] + [-1e4] * 7, dtype=torch.float64))) - math.log(1 / 8)) < 1e-9
    rows = [{"prompt_id": "a", "prompt_ids": [1], "response_ids": [2], "behavior_logprobs": [-1.0], "reward": r,
             "temperature": 1.0} for r in (0.0, 1.0)]
    (g,) = prompt_groups(rows)
    assert g.rewards == [0.0, 1.0] and not g.zero_variance


# --- (d) convergence and bias on toys, through the real code path --------------------------------------------

import types

import numpy as np

ADV_EPS = 1e-4


class _Bandit(torch.nn.Module):
    """One-token policy: the same logits θ at every position (prompt [0], one response token)."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.as_tensor(theta, dtype=torch.float32).clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return types.SimpleNamespace(logits=self.theta.expand(*input_ids.shape, -1))


def _bandit_groups(gen, beta, rewards, g, k, temperature, tag):
    log_beta = torch.log(beta)
    out = []
    for j in range(k):
        a = torch.multinomial(beta, g, replacement=True, generator=gen).tolist()
        out.append(PromptGroup(f"{tag}-{j}", [0], [[x] for x in a], [[float(log_beta[x])] for x in a],
                               [float(rewards[x]) for x in a], temperature))
    return out


def _mean_gradient(model, groups):
    """Average g_x over groups; skipped (zero-variance) groups count as g_x = 0."""
    grads = [pg.grads for pg in prompt_gradients(model, groups, pad_id=0)]
    name = next(iter(dict(model.named_parameters())))
    return sum((gr[name] for gr in grads), torch.zeros_like(dict(model.named_parameters())[name])) / len(groups)


def test_bandit_popi_converges_to_grad_over_behaviour_std():
    """(d1) One-token toy at T = 0.7, samples from β ≠ π_θ: the POPI estimate → −∇_θ E_{π_θ}[r] / (σ_β + 1e-4)
    (σ_β the population std of r under β; the objective's unbiased sample std converges to it), with error
    shrinking like 1/√n, and not to the on-policy normalisation −∇J / (σ_π + 1e-4)."""
    torch.manual_seed(0)
    temp = 0.7
    theta = torch.tensor([0.5, -0.2, 0.4, 0.1, -0.3])
    phi = torch.tensor([-0.5, 0.3, -0.6, 0.4, 0.1])  # behaviour logits
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    beta = torch.softmax(phi / temp, -1)
    p_beta = float((beta * rewards).sum())
    p_pi = float((torch.softmax(theta / temp, -1) * rewards).sum())
    sd_beta, sd_pi = math.sqrt(p_beta * (1 - p_beta)), math.sqrt(p_pi * (1 - p_pi))
    th = theta.clone().requires_grad_(True)
    (grad_j,) = torch.autograd.grad((torch.softmax(th / temp, -1) * rewards).sum(), th)
    target = -grad_j / (sd_beta + ADV_EPS)
    on_policy_norm = -grad_j / (sd_pi + ADV_EPS)
    assert float((target - on_policy_norm).norm() / target.norm()) > 0.2  # the two limits are distinguishable

    model = _Bandit(theta)
    gen = torch.Generator().manual_seed(1234)
    k = 4
    ns, errs, est = [], [], None
    for g, reps in ((16, 12), (64, 6), (256, 3), (1024, 3), (4096, 3)):  # RMS error over `reps` replicates
        sq = []
        for rep in range(reps):
            est = _mean_gradient(model, _bandit_groups(gen, beta, rewards, g, k, temp, f"{g}-{rep}"))
            sq.append(float((est - target).norm() / target.norm()) ** 2)
        ns.append(k * g)
        errs.append(math.sqrt(sum(sq) / reps))
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    scaled = [e * math.sqrt(n) for e, n in zip(errs, ns)]  # ≈ per-sample relative SD (≈ 3.5 here)
    assert max(scaled) < 10.0, scaled  # error ≲ C / √n at every n
    assert errs[0] / errs[-1] > 4 and -1.0 < slope < -0.25, (slope, errs)  # and it does shrink, at about that rate
    assert errs[-1] < 0.08, errs
    assert float((est - on_policy_norm).norm() / on_policy_norm.norm()) > 0.15


def _bias_module():
    from lab.bench import popi_bias

    return popi_bias


def test_multi_token_bias_is_zero_on_policy_and_grows_with_kl():
    """(d2) Tabular 3-token toy, exact enumeration: the POPI limit (expectation over β of the per-token-ratio
    loss) equals the exact on-policy gradient at θ = β and drifts from it monotonically as KL(β‖π_θ) grows."""
    bench = _bias_module()
    rows = bench.bias_table(seed=0, steps=(0.0, 0.25, 0.5, 1.0, 2.0))
    kl = [r["kl"] for r in rows]
    bias = [r["rel_bias"] for r in rows]
    assert kl[0] < 1e-9 and bias[0] < 1e-5 and abs(rows[0]["cosine"] - 1) < 1e-6
    assert all(a < b for a, b in zip(kl, kl[1:])) and all(a < b for a, b in zip(bias, bias[1:])), (kl, bias)
    assert bias[1] > 0.05  # biased off-policy, already at small KL
    ess = [r["population_ess"] for r in rows]
    assert abs(ess[0] - 1) < 1e-9 and all(a > b for a, b in zip(ess, ess[1:]))  # the diagnostic sees the drift


def test_multi_token_monte_carlo_matches_exact_popi_limit():
    """The enumerated limit in (d2) is what ``prompt_gradients`` converges to on samples from β."""
    bench = _bias_module()
    phi, delta, rewards = bench.toy_problem(0)
    theta = phi + 0.5 * delta
    exact = bench.exact_point(phi, theta, rewards)
    responses = bench.all_responses()
    blp = bench.token_logprobs_exact(phi.double(), responses)
    beta = blp.sum(-1).exp()
    gen = torch.Generator().manual_seed(7)
    groups = []
    for j in range(16):
        idx = torch.multinomial(beta.float(), 512, replacement=True, generator=gen).tolist()
        groups.append(PromptGroup(f"mc-{j}", [0], [responses[i] for i in idx], [blp[i].float().tolist() for i in idx],
                                  [float(rewards[i]) for i in idx], bench.T))
    est = _mean_gradient(bench.PrefixTable(theta), groups).double()
    err_limit = float((est - exact["g_popi"]).norm() / exact["g_popi"].norm())
    err_on = float((est - exact["g_on"]).norm() / exact["g_on"].norm())
    assert err_limit < 0.1 and err_on > 3 * err_limit, (err_limit, err_on)
