"""POPI: per-prompt policy gradients of the current policy from trajectories a behaviour policy sampled.

For a prompt x with stored responses o_1..o_G (tokens, rewards r_i, behaviour log-probs log β at the sampling
temperature T), the estimate is the gradient of the trainer's own loss (``cropi.objective.policy_loss`` with the
trainer's ``LossSpec``: the same aggregation and normaliser):

    g_x = ∇_θ L(θ; x),   L = −(1/G) Σ_i (1/T_i) Σ_t ρ_{i,t} A_i,   ρ_{i,t} = exp(log π_θ(o_{i,t}) − log β(o_{i,t}))

with log π_θ from logits / T and A_i = (r_i − mean r)/(std r + 1e-4) held constant (docs/method.md §2).  At θ = β
every ρ = 1 and g_x is the on-policy GRPO gradient.  Off-policy the per-token ratio without a prefix product is
a biased surrogate (the TRPO local approximation), not an unbiased estimate of the on-policy gradient.

Two settings differ from the trainer's, on purpose (``scoring_loss``):
- No PPO clip unless asked for (``select.score.clip_eps``).  The trainer samples fresh responses and takes one
  update per batch, so its ratio is exactly 1 and its clip never acts: its gradient is the unclipped one.
  Clipping β's ratios would zero the gradient of exactly the tokens on which π_θ has moved.
- An overflow guard: a per-token log-ratio above MAX_LOG_RATIO (50, ρ ≈ 5e21) would take ρ, the loss and the
  gradient towards fp32 overflow (e^88.7), so its value is capped there with its gradient kept (a truncated
  importance weight).  The uncapped max |log-ratio| is reported.

ACG variant (``select.score.acg``): sequence weights w_i = exp(mean_t log π_θ − mean_t log β) turn mean and
unbiased std of the rewards into self-normalised weighted ones (``acg_advantages``), equal to GRPO's at θ = β;
the advantages stay under stop-gradient.

Diagnostics, in log space: ESS = (Σ W)² / (G Σ W²) ∈ [1/G, 1] with sequence-level W_i = exp(Σ_t (log π_θ −
log β)), and the largest |per-token log-ratio|.

Two estimators compute the same g_x: ``PopiEstimator`` (one backward pass per prompt) and
``BatchedPopiEstimator`` (per-example gradients of several prompts from one forward and one backward pass).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch

from cropi.objective import (ADVANTAGE_EPS, LossSpec, SharedPromptUnsupported, group_advantages,
                             grouped_response_logprobs, policy_loss, response_logprobs)
from cropi.rollouts.batch import pack, pack_groups
from cropi.rollouts.trajectory_store import PromptGroup

MAX_LOG_RATIO = 50.0  # per-token log-ratio value cap (gradient kept); fp32 exp overflows past ≈ 88.7
_SHARED_UNSUPPORTED: dict[type, str] = {}  # model classes whose cache cannot be shared between responses


def scoring_loss(trainer: LossSpec = LossSpec(), clip_eps: float | None = None) -> LossSpec:
    """The loss POPI differentiates: the trainer's, with scoring's own clip (default none) and the overflow cap.
    ``max_len`` is kept only where it acts (``dr_grpo``), so it never makes two equal losses look different."""
    max_len = trainer.max_len if trainer.aggregation == "dr_grpo" else None
    return dataclasses.replace(trainer, clip_eps=clip_eps, max_len=max_len, max_log_ratio=MAX_LOG_RATIO)


def log_ess(seq_log_w: torch.Tensor) -> torch.Tensor:
    """log ESS = 2 logsumexp(log W) − log G − logsumexp(2 log W)   (ESS ∈ [1/G, 1])."""
    g = seq_log_w.shape[-1]
    return 2 * torch.logsumexp(seq_log_w, -1) - math.log(g) - torch.logsumexp(2 * seq_log_w, -1)


def acg_advantages(rewards: torch.Tensor, seq_mean_log_ratio: torch.Tensor) -> torch.Tensor:
    """Self-normalised weighted advantages (stop-gradient): w_i = exp(mean_t log-ratio_i), normalised to Σw = 1,

        μ_w = Σ w_i r_i,   σ_w² = Σ w_i (r_i − μ_w)² / (1 − Σ w_i²)

    (the reliability-weights correction), so that at equal weights μ_w and σ_w are the sample mean and unbiased
    std of ``group_advantages`` and ACG at θ = β is GRPO.  A group whose weight is all on one response (or G = 1)
    has σ_w = 0, as a single reward has in ``group_advantages``."""
    w = torch.softmax(seq_mean_log_ratio.detach().double(), dim=-1)  # normalised weights, computed stably
    r = rewards.double()
    mu = (w * r).sum(-1, keepdim=True)
    num = (w * (r - mu) ** 2).sum(-1, keepdim=True)
    # 1 − Σw² as the sum of the off-diagonal products w_i w_j: positive terms only, so no cancellation when one
    # weight is close to 1 (num is then as small, and the ratio stays accurate)
    off_diagonal = 1 - torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    den = ((w.unsqueeze(-1) * w.unsqueeze(-2)) * off_diagonal).sum((-2, -1)).unsqueeze(-1)
    var = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
    return ((r - mu) / (var.sqrt() + ADVANTAGE_EPS)).to(rewards.dtype)


@dataclass
class PopiLoss:
    losses: torch.Tensor  # [B], differentiable; row b is L(θ; x_b)
    ess: list[float]
    max_abs_log_ratio: list[float]


def popi_loss(model: torch.nn.Module, groups: Sequence[PromptGroup], pad_id: int, loss: LossSpec = scoring_loss(),
              acg: bool = False, device=None, shared_prompt: bool = False) -> PopiLoss:
    """L(θ; x_b) for each prompt group, with drift diagnostics, from one forward pass over all their responses
    (left-padded to a common width; position ids follow the attention mask, so padding does not change a row).
    ``shared_prompt``: each prompt runs once for its G responses (``objective.grouped_response_logprobs``; the
    same values up to float rounding), where the model's cache allows.  Differentiate ``losses[b]`` for g_x."""
    device = device or next(model.parameters()).device
    sizes = [len(g.rewards) for g in groups]
    temps = {g.temperature for g in groups}
    if len(temps) != 1:
        raise ValueError(f"groups sampled at different temperatures {sorted(temps)} cannot share a forward pass")
    temperature = temps.pop()
    batch = None
    if shared_prompt and _SHARED_UNSUPPORTED.get(type(model)) is None:
        batch = pack_groups([g.prompt_ids for g in groups], [g.response_ids for g in groups],
                            [g.behavior_logprobs for g in groups], pad_id).to(device)
        try:
            lp = grouped_response_logprobs(model, batch, temperature)
        except SharedPromptUnsupported as e:  # remembered per model class: the packed path from now on
            _SHARED_UNSUPPORTED[type(model)] = str(e)
            batch = None
    if batch is None:
        batch = pack([g.prompt_ids for g in groups for _ in g.rewards], [r for g in groups for r in g.response_ids],
                     [b for g in groups for b in g.behavior_logprobs], pad_id).to(device)
        lp = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask, temperature)
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
        losses.append(policy_loss(lp_g, blp_g, adv, mask_g, loss))
        ess.append(float(torch.exp(log_ess(log_ratio.sum(-1).double()))))
        mlr.append(float(log_ratio.abs().max()) if log_ratio.numel() else 0.0)
    return PopiLoss(torch.stack(losses), ess, mlr)


@dataclass
class GradientBatch:
    """g_x of B prompts, stacked: ``grads[name]`` is [B, *shape] (fp32), row b belongs to ``prompt_ids[b]``.  A
    factored estimator keeps the linear weights' gradients in ``factors`` instead (``{name: LinearFactors}``: row
    b's gradient is ``d[b].T @ a[b]``), never formed unless a consumer asks (``whole``).  A sketching estimator
    (``projection.factored.SketchingPopiEstimator``) hands over ``projected`` [B, k] only: the gradients under its
    projector's map, computed inside the backward pass, and nothing else."""

    prompt_ids: list[str]
    grads: dict[str, torch.Tensor]
    ess: list[float]
    max_abs_log_ratio: list[float]
    factors: dict = dataclasses.field(default_factory=dict)
    projected: torch.Tensor | None = None
    projector_spec: dict | None = None  # the map ``projected`` is under

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def whole(self) -> dict[str, torch.Tensor]:
        """Every gradient as [B, *shape], factors multiplied out (for consumers that need the flat gradient)."""
        if self.projected is not None:
            raise ValueError("a sketched gradient batch holds projections only, not gradients")
        if not self.factors:
            return self.grads
        formed = {n: torch.bmm(f.d.transpose(1, 2), f.a) for n, f in self.factors.items()}
        return {**self.grads, **formed}

    def prompt(self, b: int) -> dict[str, torch.Tensor]:
        """Row b's gradient as {parameter name: tensor}."""
        return {n: g[b] for n, g in self.whole().items()}


@dataclass
class Gradients:
    """What an estimator returns: batches of g_x for the usable groups (in order), and the ids it skipped
    because their rewards were all equal (g_x = 0), known before any backward pass."""

    batches: Iterator[GradientBatch]
    skipped: list[str]


class GradientEstimator(Protocol):
    """Per-prompt policy gradients of a model on stored prompt groups."""

    param_names: list[str]

    def gradients(self, groups: Sequence[PromptGroup]) -> Gradients: ...


class PopiEstimator:
    """g_x with one backward pass per prompt (``torch.autograd.grad`` of ``popi_loss``)."""

    batch_size = 1

    def __init__(self, model: torch.nn.Module, pad_id: int, loss: LossSpec = scoring_loss(), acg: bool = False,
                 param_names: Sequence[str] | None = None):
        self.model, self.pad_id, self.loss, self.acg = model, pad_id, loss, acg
        named = dict(model.named_parameters())
        self.param_names = list(param_names) if param_names is not None else [
            n for n, p in named.items() if p.requires_grad]
        self._params = [named[n] for n in self.param_names]

    def gradients(self, groups: Sequence[PromptGroup]) -> Gradients:
        usable = [g for g in groups if not g.zero_variance]
        return Gradients(self._batches(usable), [g.prompt_id for g in groups if g.zero_variance])

    def _batches(self, usable: list[PromptGroup]) -> Iterator[GradientBatch]:
        pending: list[PromptGroup] = []
        for group in usable:
            if pending and (pending[0].temperature != group.temperature or len(pending) >= self.batch_size
                            or not self._fits([*pending, group])):
                yield self._compute(pending)
                pending = []
            pending.append(group)
        if pending:
            yield self._compute(pending)

    def _fits(self, groups: list[PromptGroup]) -> bool:
        """Whether these groups may share a backward pass (always, unless a subclass bounds its memory)."""
        return True

    def _compute(self, batch: list[PromptGroup]) -> GradientBatch:
        out = popi_loss(self.model, batch, self.pad_id, self.loss, self.acg)
        grads = torch.autograd.grad(out.losses[0], self._params, allow_unused=True)
        stacked = {n: (g if g is not None else torch.zeros_like(p)).detach().float().unsqueeze(0)
                   for n, g, p in zip(self.param_names, grads, self._params)}
        return GradientBatch([batch[0].prompt_id], stacked, out.ess, out.max_abs_log_ratio)


class BatchedPopiEstimator(PopiEstimator):
    """g_x of up to ``batch_size`` consecutive prompts from one forward and one backward pass, with per-example
    gradients (``gradients.per_example``); a prompt's gradient does not depend on its batch mates up to float
    rounding."""

    def __init__(self, model: torch.nn.Module, pad_id: int, loss: LossSpec = scoring_loss(), acg: bool = False,
                 param_names: Sequence[str] | None = None, batch_size: int = 8):
        super().__init__(model, pad_id, loss, acg, param_names)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def _compute(self, batch: list[PromptGroup]) -> GradientBatch:
        from cropi.gradients.per_example import per_example_grads

        diag: list[PopiLoss] = []

        def losses():
            diag.append(popi_loss(self.model, batch, self.pad_id, self.loss, self.acg))
            return diag[0].losses

        grads = per_example_grads(self.model, self.param_names, [len(g.rewards) for g in batch], losses)
        return GradientBatch([g.prompt_id for g in batch], grads, diag[0].ess, diag[0].max_abs_log_ratio)


class FactoredPopiEstimator(BatchedPopiEstimator):
    """As ``BatchedPopiEstimator``, with the gradients of weights used only by bias-free linear modules kept
    factored per prompt (``GradientBatch.factors``): exact scores and norms read them without forming them.

    A batch's factors hold every token's input and output-gradient at every such weight, so a batch is closed
    early where they would pass ``memory_gb`` (counted with the padding: prompts and responses padded to the
    batch's longest)."""

    def __init__(self, model: torch.nn.Module, pad_id: int, loss: LossSpec = scoring_loss(), acg: bool = False,
                 param_names: Sequence[str] | None = None, batch_size: int = 8, memory_gb: float | None = None):
        super().__init__(model, pad_id, loss, acg, param_names, batch_size)
        from cropi.gradients.per_example import factor_sizes

        self.memory_gb = memory_gb
        self._width, self._whole = factor_sizes(model, self.param_names)

    def _fits(self, groups: list[PromptGroup]) -> bool:
        if self.memory_gb is None:
            return True
        tokens = max(len(g.prompt_ids) for g in groups) + max(len(g.rewards) for g in groups) * max(
            len(r) for g in groups for r in g.response_ids)
        per_prompt = 4 * (tokens * self._width + self._whole)  # fp32 factors, and the gradients formed whole
        return len(groups) * per_prompt <= self.memory_gb * 2 ** 30

    def _compute(self, batch: list[PromptGroup]) -> GradientBatch:
        from cropi.gradients.per_example import per_example_factors

        diag: list[PopiLoss] = []

        def losses():  # each prompt runs once for its responses: its tokens are counted once, not G times
            diag.append(popi_loss(self.model, batch, self.pad_id, self.loss, self.acg, shared_prompt=True))
            return diag[0].losses

        factors, grads = per_example_factors(self.model, self.param_names, [len(g.rewards) for g in batch], losses)
        return GradientBatch([g.prompt_id for g in batch], grads, diag[0].ess, diag[0].max_abs_log_ratio, factors)


def make_estimator(model: torch.nn.Module, pad_id: int, loss: LossSpec = scoring_loss(), acg: bool = False,
                   param_names: Sequence[str] | None = None, batch_size: int = 1,
                   factored: bool = False, factor_memory_gb: float | None = None) -> GradientEstimator:
    """The per-prompt loop for ``batch_size`` 1, else the batched per-example estimator (``factored``: linear
    weights kept factored)."""
    if factored:
        return FactoredPopiEstimator(model, pad_id, loss, acg, param_names, max(batch_size, 1), factor_memory_gb)
    if batch_size == 1:
        return PopiEstimator(model, pad_id, loss, acg, param_names)
    return BatchedPopiEstimator(model, pad_id, loss, acg, param_names, batch_size)
