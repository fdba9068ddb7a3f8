"""The GRPO / POPI objective: the one loss that the trainer optimises and the influence estimator
differentiates, so scoring and training can never disagree about it.

Notation (docs/method.md §2): a prompt x with G stored responses o_i of T_i tokens and rewards r_i; β the policy
that sampled them (its per-token log-probs stored at the sampling temperature); π_θ the current policy.

    A_i     = (r_i − mean r) / (std r + 1e-4)                          (unbiased std; constants)
    ρ_{i,t} = exp(log π_θ(o_{i,t}) − log β(o_{i,t}))                   (per token, no prefix product)
    L(θ; x) = −(1/G) Σ_i (1/T_i) Σ_t ρ_{i,t} A_i                       (aggregation "grpo")

With clipping (ε), the per-token term is min(ρ A, clip(ρ, 1−ε, 1+ε) A) as in PPO.  ``max_log_ratio`` (off by
default; POPI scoring sets it) caps the value of a per-token log-ratio, keeping its gradient, so that ρ stays
inside fp32 (exp overflows past log-ratio ≈ 88.7): ρ̃ = min(ρ, e^c) with ∇ρ̃ = ρ̃ ∇ log π_θ.  Aggregation "dr_grpo"
replaces 1/T_i by 1/T_max (a constant), removing the length bias of the per-sequence mean.  Over a batch of
prompts with equal G, L is the mean of the per-prompt losses.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

ADVANTAGE_EPS = 1e-4


@dataclass(frozen=True)
class LossSpec:
    """The settings that decide the value of ``policy_loss``: the trainer builds it from its config with
    ``loss_spec`` and the influence estimator receives the same object, so both use one loss."""

    aggregation: str = "grpo"  # grpo (per-sequence token mean) | dr_grpo (constant normaliser max_len)
    clip_eps: float | None = None  # PPO clip ε; None = unclipped surrogate
    max_len: int | None = None  # dr_grpo's normaliser: the longest response the sampler may write
    max_log_ratio: float | None = None  # cap on a per-token log-ratio's value (gradient kept); None = no cap


def loss_spec(train, rollout) -> LossSpec:
    """The trainer's loss settings from a run's ``train`` and ``rollout`` config sections.  The influence
    estimator starts from the same object and replaces only what scoring sets itself (``gradients.popi``)."""
    return LossSpec(train.aggregation, train.clip_eps, rollout.max_new_tokens)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = (r_i − mean r) / (std r + 1e-4) along the last dim (one group per row); unbiased std.

    A group whose rewards are all equal gets A = 0 (and so a zero gradient)."""
    rewards = rewards.to(torch.float32)
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, unbiased=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-softmax(logits / T) of ``tokens``: [B, L, V] x [B, L] -> [B, L] (fp32)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def response_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Teacher-forced log π_θ(o_t | x, o_<t) at temperature T for every position of ``input_ids``.

    ``input_ids`` is [B, L] (prompt + response, left-padded); the result at position j is the log-prob of
    token j given tokens < j (0 where ``response_mask`` is 0).  Position ids follow the attention mask so that
    left padding does not shift positions (batch-invariant)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    lp = token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature)
    lp = torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)
    return lp * response_mask


class SharedPromptUnsupported(Exception):
    """The model's KV cache is not one ``grouped_response_logprobs`` knows how to share between responses."""


@functools.lru_cache(maxsize=None)
def forward_parameters(model_cls: type) -> frozenset[str]:
    """The argument names of a model class's ``forward`` (read once per class)."""
    return frozenset(inspect.signature(model_cls.forward).parameters)


def cache_argument(model: torch.nn.Module) -> str:
    """The name of the KV cache in ``model``'s forward and output: ``cache`` in transformers >= 5,
    ``past_key_values`` before."""
    return "cache" if "cache" in forward_parameters(type(model)) else "past_key_values"


def repeat_cache(cache, counts: torch.Tensor):
    """Each prompt's cached keys and values repeated for its responses (autograd sums their gradients back);
    the sampler uses it too, to run a group's prompt once for its G responses."""
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56
        if not all(type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None
                   for layer in layers):
            raise SharedPromptUnsupported(f"cache layers {sorted({type(x).__name__ for x in layers})}")
        for layer in layers:
            layer.keys = layer.keys.repeat_interleave(counts, 0)
            layer.values = layer.values.repeat_interleave(counts, 0)
        return cache
    if type(cache).__name__ == "DynamicCache" and hasattr(cache, "key_cache"):  # older transformers
        cache.key_cache = [k.repeat_interleave(counts, 0) for k in cache.key_cache]
        cache.value_cache = [v.repeat_interleave(counts, 0) for v in cache.value_cache]
        return cache
    raise SharedPromptUnsupported(f"cache {type(cache).__name__}")


def grouped_response_logprobs(model: torch.nn.Module, batch, temperature: float) -> torch.Tensor:
    """``response_logprobs`` of a ``rollouts.batch.GroupedBatch``, running each prompt once for all its responses.

    The B prompts go through the model once (their KV cache kept, with gradients), the cache is repeated for each
    prompt's responses, and the N responses run on top of it.  A group of G responses to a P-token prompt then
    costs P + G·R token positions instead of G·(P + R); the log-probs equal the packed ones up to float rounding.
    Returns [N, Lr]: the log-prob of response token j at column j, 0 on padding.  Raises
    ``SharedPromptUnsupported`` for a model whose cache is not a plain dynamic one (sliding windows, ...)."""
    pm = batch.prompt_mask
    extra = {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(type(model)) else {}
    out = model(input_ids=batch.prompt_ids, attention_mask=pm, position_ids=(pm.cumsum(-1) - 1).clamp_min(0),
                use_cache=True, **extra)
    cache_key = cache_argument(model)
    cache = getattr(out, cache_key, None)
    if cache is None:
        raise SharedPromptUnsupported("the model returned no cache")
    counts = batch.counts
    cache = repeat_cache(cache, counts)
    rmask = batch.response_mask.to(pm.dtype)
    attention = torch.cat([pm.repeat_interleave(counts, 0), rmask], 1)
    width = rmask.shape[1]
    positions = pm.sum(-1).repeat_interleave(counts)[:, None] + torch.arange(width, device=pm.device)[None]
    logits = model(input_ids=batch.response_ids, attention_mask=attention, position_ids=positions,
                   use_cache=True, **{cache_key: cache}).logits
    # response token 0 is predicted by the prompt's last position, token j by response position j - 1
    logits = torch.cat([out.logits[:, -1:].repeat_interleave(counts, 0), logits[:, :-1]], 1)
    return token_logprobs(logits, batch.response_ids, temperature) * batch.response_mask


def policy_loss(
    logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    spec: LossSpec = LossSpec(),
) -> torch.Tensor:
    """L = −mean_i (1/T_i) Σ_t surrogate_{i,t}, surrogate = ρ A (or the PPO-clipped form), as ``spec`` says.

    Shapes: ``logprobs``/``behavior_logprobs``/``mask`` [N, L] over N sequences (all groups of a batch,
    flattened), ``advantages`` [N].  ``mask`` is 1 on response tokens.  Returns a scalar."""
    mask = mask.to(logprobs.dtype)
    log_ratio = (logprobs - behavior_logprobs) * mask
    if spec.max_log_ratio is not None:  # cap the value, keep the gradient (truncated importance weight)
        c = spec.max_log_ratio
        log_ratio = torch.where(log_ratio > c, c + (log_ratio - log_ratio.detach()), log_ratio)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)
    surrogate = ratio * adv
    if spec.clip_eps is not None and spec.clip_eps > 0:
        surrogate = torch.minimum(surrogate, torch.clamp(ratio, 1 - spec.clip_eps, 1 + spec.clip_eps) * adv)
    per_token = -surrogate * mask
    if spec.aggregation == "grpo":
        per_seq = per_token.sum(-1) / mask.sum(-1).clamp_min(1)
    elif spec.aggregation == "dr_grpo":
        per_seq = per_token.sum(-1) / float(spec.max_len or mask.shape[-1])
    else:
        raise ValueError(f"unknown aggregation {spec.aggregation!r} (grpo or dr_grpo)")
    return per_seq.mean()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence-mean k3 estimator of KL(π_θ‖π_ref): exp(ref − lp) − (ref − lp) − 1 (≥ 0, unbiased)."""
    d = (ref_logprobs - logprobs) * mask
    k3 = (torch.exp(d) - d - 1) * mask
    return (k3.sum(-1) / mask.sum(-1).clamp_min(1)).mean()
