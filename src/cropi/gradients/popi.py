"""POPI: per-prompt policy gradients of the current policy from trajectories a behaviour policy sampled.

For a prompt x with stored responses o_1..o_G (tokens, rewards r_i, behaviour log-probs log β at the sampling
temperature T), the estimate is the gradient of the trainer's own loss (``cropi.objective.policy_loss``):

    g_x = ∇_θ L(θ; x),   L = −(1/G) Σ_i (1/T_i) Σ_t ρ_{i,t} A_i,   ρ_{i,t} = exp(log π_θ(o_{i,t}) − log β(o_{i,t}))

with log π_θ from logits / T and A_i = (r_i − mean r)/(std r + 1e-4) held constant (METHOD.md §2).  At θ = β
every ρ = 1 and g_x is the on-policy GRPO gradient.  Off-policy the per-token ratio without a prefix product is
a biased surrogate (the TRPO local approximation), not an unbiased estimate of the on-policy gradient.

ACG variant: sequence weights w_i = exp(mean_t log π_θ − mean_t log β) turn mean and std of the rewards into
self-normalised weighted ones; the advantages stay under stop-gradient.

Overflow guard: a per-token log-ratio above MAX_LOG_RATIO (50, i.e. ρ ≈ 5e21) would take ρ, the loss and the
gradient towards fp32 overflow (e^88.7), so its value is capped there with its gradient kept (a truncated
importance weight, ``policy_loss(max_log_ratio=...)``).  Tokens that far off-policy carry no usable signal; the
uncapped max |log-ratio| below reports that it happened.

Diagnostics, in log space: ESS = (Σ W)² / (G Σ W²) ∈ [1/G, 1] with sequence-level W_i = exp(Σ_t (log π_θ −
log β)), and the largest |per-token log-ratio|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from cropi.objective import ADVANTAGE_EPS, group_advantages, policy_loss, response_logprobs
from cropi.rollouts.batch import pack

MAX_LOG_RATIO = 50.0  # per-token log-ratio value cap (gradient kept); fp32 exp overflows past ≈ 88.7


@dataclass
class PromptGroup:
    """One prompt's stored responses (rows of the trajectory store with the same prompt id)."""

    prompt_id: str
    prompt_ids: list[int]
    response_ids: list[list[int]]
    behavior_logprobs: list[list[float]]
    rewards: list[float]
    temperature: float

    @property
    def zero_variance(self) -> bool:
        return max(self.rewards) == min(self.rewards)


def groups_from_rows(rows: Iterable[dict]) -> list[PromptGroup]:
    """Group store rows (``read_store(...).to_pylist()``) by prompt id, in first-seen order."""
    groups: dict[str, PromptGroup] = {}
    for r in rows:
        g = groups.get(r["prompt_id"])
        if g is None:
            g = groups[r["prompt_id"]] = PromptGroup(r["prompt_id"], list(r["prompt_ids"]), [], [], [],
                                                     float(r["temperature"]))
        g.response_ids.append(list(r["response_ids"]))
        g.behavior_logprobs.append(list(r["behavior_logprobs"]))
        g.rewards.append(float(r["reward"]))
    return list(groups.values())


def log_ess(seq_log_w: torch.Tensor) -> torch.Tensor:
    """log ESS = 2 logsumexp(log W) − log G − logsumexp(2 log W)   (ESS ∈ [1/G, 1])."""
    g = seq_log_w.shape[-1]
    return 2 * torch.logsumexp(seq_log_w, -1) - math.log(g) - torch.logsumexp(2 * seq_log_w, -1)


def acg_advantages(rewards: torch.Tensor, seq_mean_log_ratio: torch.Tensor) -> torch.Tensor:
    """Self-normalised weighted advantages (stop-gradient): w_i = exp(mean_t log-ratio_i)."""
    w = torch.softmax(seq_mean_log_ratio.detach(), dim=-1)  # normalised weights, computed stably
    mu = (w * rewards).sum(-1, keepdim=True)
    sd = torch.sqrt((w * (rewards - mu) ** 2).sum(-1, keepdim=True).clamp_min(0))
    return (rewards - mu) / (sd + ADVANTAGE_EPS)


@dataclass
class PopiLoss:
    loss: torch.Tensor  # scalar, differentiable
    ess: float
    max_abs_log_ratio: float


@dataclass
class PopiLosses:
    losses: torch.Tensor  # [B], differentiable; row b is L(θ; x_b)
    ess: list[float]
    max_abs_log_ratio: list[float]


def popi_losses(model: torch.nn.Module, groups: Sequence[PromptGroup], pad_id: int, device=None,
                clip_eps: float | None = None, acg: bool = False,
                max_log_ratio: float | None = MAX_LOG_RATIO) -> PopiLosses:
    """L(θ; x_b) for several prompt groups from one forward pass over all their responses (left-padded to a
    common width; position ids follow the attention mask, so padding does not change any row)."""
    device = device or next(model.parameters()).device
    sizes = [len(g.rewards) for g in groups]
    batch = pack([g.prompt_ids for g in groups for _ in g.rewards], [r for g in groups for r in g.response_ids],
                 [b for g in groups for b in g.behavior_logprobs], pad_id).to(device)
    temps = {g.temperature for g in groups}
    if len(temps) != 1:
        raise ValueError(f"groups sampled at different temperatures {sorted(temps)} cannot share a forward pass")
    lp = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask, temps.pop())
    losses, ess, mlr = [], [], []
    start = 0
    for g, n in zip(groups, sizes):
        rows = slice(start, start + n)
        start += n
        lp_g, blp_g, mask_g = lp[rows], batch.behavior_logprobs[rows], batch.response_mask[rows]
        rewards = torch.tensor(g.rewards, dtype=torch.float32, device=device)
        log_ratio = ((lp_g - blp_g) * mask_g).detach()
        lengths = mask_g.sum(-1).clamp_min(1)
        adv = acg_advantages(rewards, log_ratio.sum(-1) / lengths) if acg else group_advantages(rewards)
        losses.append(policy_loss(lp_g, blp_g, adv, mask_g, clip_eps, "grpo", max_log_ratio=max_log_ratio))
        ess.append(float(torch.exp(log_ess(log_ratio.sum(-1).double()))))
        mlr.append(float(log_ratio.abs().max()) if log_ratio.numel() else 0.0)
    return PopiLosses(torch.stack(losses), ess, mlr)


def popi_loss(model: torch.nn.Module, group: PromptGroup, pad_id: int, device=None, clip_eps: float | None = None,
              acg: bool = False, max_log_ratio: float | None = MAX_LOG_RATIO) -> PopiLoss:
    """L(θ; x) for one prompt group, with drift diagnostics.  Differentiate it for g_x."""
    out = popi_losses(model, [group], pad_id, device, clip_eps, acg, max_log_ratio)
    return PopiLoss(out.losses[0], out.ess[0], out.max_abs_log_ratio[0])


@dataclass
class PromptGradient:
    prompt_id: str
    grads: dict[str, torch.Tensor]  # parameter name -> gradient (fp32)
    ess: float
    max_abs_log_ratio: float


@dataclass
class GradientBatch:
    """g_x of B prompts, stacked: ``grads[name]`` is [B, *shape] (fp32), row b belongs to ``prompt_ids[b]``."""

    prompt_ids: list[str]
    grads: dict[str, torch.Tensor]
    ess: list[float]
    max_abs_log_ratio: list[float]

    def __len__(self) -> int:
        return len(self.prompt_ids)


def gradient_batches(
    model: torch.nn.Module,
    groups: Sequence[PromptGroup],
    pad_id: int,
    param_names: Sequence[str] | None = None,
    clip_eps: float | None = None,
    acg: bool = False,
    skipped: list[str] | None = None,
    batch_size: int = 1,
) -> Iterator[GradientBatch]:
    """Yield g_x for up to ``batch_size`` consecutive usable prompts at a time.

    ``batch_size`` 1: one backward pass per prompt (``torch.autograd.grad`` of ``popi_loss``).  Larger: one
    forward and one backward pass per batch with per-example gradients (``gradients.per_example``); a prompt's
    gradient does not depend on its batch mates up to float rounding.  Zero-variance groups are skipped
    (their g_x = 0) and their ids appended to ``skipped``."""
    from cropi.gradients.per_example import per_example_grads

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    named = dict(model.named_parameters())
    names = list(param_names) if param_names is not None else [n for n, p in named.items() if p.requires_grad]
    params = [named[n] for n in names]
    pending: list[PromptGroup] = []

    def flush() -> GradientBatch:
        batch = list(pending)
        pending.clear()
        if batch_size == 1:
            out = popi_loss(model, batch[0], pad_id, clip_eps=clip_eps, acg=acg)
            grads = torch.autograd.grad(out.loss, params, allow_unused=True)
            stacked = {n: (g if g is not None else torch.zeros_like(p)).detach().float().unsqueeze(0)
                       for n, g, p in zip(names, grads, params)}
            return GradientBatch([batch[0].prompt_id], stacked, [out.ess], [out.max_abs_log_ratio])
        diag: list[PopiLosses] = []

        def losses():
            diag.append(popi_losses(model, batch, pad_id, clip_eps=clip_eps, acg=acg))
            return diag[0].losses

        grads = per_example_grads(model, names, [len(g.rewards) for g in batch], losses)
        return GradientBatch([g.prompt_id for g in batch], grads, diag[0].ess, diag[0].max_abs_log_ratio)

    for group in groups:
        if group.zero_variance:
            if skipped is not None:
                skipped.append(group.prompt_id)
            continue
        if pending and pending[0].temperature != group.temperature:
            yield flush()
        pending.append(group)
        if len(pending) >= batch_size:
            yield flush()
    if pending:
        yield flush()


def prompt_gradients(
    model: torch.nn.Module,
    groups: Sequence[PromptGroup],
    pad_id: int,
    param_names: Sequence[str] | None = None,
    clip_eps: float | None = None,
    acg: bool = False,
    skipped: list[str] | None = None,
    batch_size: int = 1,
) -> Iterator[PromptGradient]:
    """Yield g_x per prompt (see ``gradient_batches``).  Zero-variance groups are skipped (their g_x = 0) and
    their ids appended to ``skipped``."""
    for gb in gradient_batches(model, groups, pad_id, param_names, clip_eps, acg, skipped, batch_size):
        for b, pid in enumerate(gb.prompt_ids):
            yield PromptGradient(pid, {n: g[b] for n, g in gb.grads.items()}, gb.ess[b], gb.max_abs_log_ratio[b])
