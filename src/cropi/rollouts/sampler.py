"""Batched sampling with per-token behaviour log-probs.

Two choices make stored trajectories usable for off-policy influence later:
- the stored log-prob of a sampled token is log-softmax(logits / T) at the sampling temperature, *without*
  top-p renormalisation (otherwise importance ratios become 0 or inf where two policies' nuclei differ); stored
  trajectories are therefore sampled with top_p = 1 (the config and ``collect`` refuse others), since draws from
  a nucleus are not draws from the softmax those log-probs describe;
- every row draws its randomness from its own key (seed, prompt id, sample index) through inverse-CDF
  sampling with a per-row stream of uniforms, so a response does not depend on which other rows shared its
  batch: a resumed or sharded collection equals a single uninterrupted one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cropi.objective import SharedPromptUnsupported, cache_argument, forward_parameters, repeat_cache
from cropi.policy import Policy
from cropi.rollouts.batch import left_pad


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    greedy: bool = False


@dataclass
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]  # includes the end-of-sequence token when the response stopped
    behavior_logprobs: list[float]  # log-softmax(logits / T) of each response token
    finish_reason: str  # "stop" or "length"


def key_seed(*key: object) -> int:
    """A stable 63-bit seed from a key tuple (independent of Python's hash randomisation)."""
    h = hashlib.blake2b("\x1f".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def row_uniforms(keys: Sequence[tuple], n: int) -> torch.Tensor:
    """[len(keys), n] uniforms in [0, 1), one independent stream per key."""
    out = torch.empty(len(keys), n, dtype=torch.float64)
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(key_seed(*key))
        out[i] = torch.rand(n, generator=g, dtype=torch.float64)
    return out


def _pick_tokens(logits: torch.Tensor, u: torch.Tensor | None, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one token per row; return (tokens, their log-softmax(logits / T))."""
    scaled = logits.float() / max(params.temperature, 1e-6)
    logp = torch.log_softmax(scaled, dim=-1)
    if params.greedy or u is None:
        tokens = logp.argmax(dim=-1)
    else:
        probs = logp.exp().double()
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < params.top_p
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            probs = torch.where(keep, probs, torch.zeros_like(probs))
            probs = probs / probs.sum(-1, keepdim=True)
        cdf = probs.cumsum(-1)
        cdf = cdf / cdf[:, -1:].clamp_min(1e-300)
        tokens = torch.searchsorted(cdf.contiguous(), u.to(cdf.device).unsqueeze(-1).contiguous(), right=True).squeeze(-1)
        tokens = tokens.clamp_max(logits.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _cache_kwargs(model, out) -> dict:
    key = cache_argument(model)
    return {key: getattr(out, key)}


_SHARED_UNSUPPORTED: dict[type, str] = {}  # model classes whose cache cannot be repeated per row


def _repeat_runs(prompts: Sequence[Sequence[int]]) -> tuple[list[Sequence[int]], list[int]]:
    """The prompts with consecutive repeats merged, and how many rows each stands for (a group's G rows)."""
    unique: list[Sequence[int]] = []
    counts: list[int] = []
    for p in prompts:
        if unique and list(p) == list(unique[-1]):
            counts[-1] += 1
        else:
            unique.append(p)
            counts.append(1)
    return unique, counts


def _prefill(policy: Policy, prompts: Sequence[Sequence[int]], share: bool = True):
    """Run the prompts through the model: (the next-token logits [N, V], the output holding the cache, the
    attention mask, the position ids).  A prompt repeated on consecutive rows (a group's G responses) runs once
    and its cache is repeated, as the GRPO loss does in training: with few-shot prompts the prompt dominates
    the cost of a short response."""
    model, dev = policy.model, policy.device
    unique, counts = _repeat_runs(prompts)
    share = share and len(unique) < len(prompts) and type(model) not in _SHARED_UNSUPPORTED
    ids, mask = left_pad(unique if share else prompts, policy.pad_token_id, dev)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in forward_parameters(type(model)) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **extra)
    if not share:
        return out.logits[:, -1, :], out, mask, position_ids
    reps = torch.tensor(counts, device=dev)
    try:
        repeat_cache(getattr(out, cache_argument(model), None), reps)
    except SharedPromptUnsupported as e:  # remembered per model class: every row prefilled from now on
        _SHARED_UNSUPPORTED[type(model)] = str(e)
        return _prefill(policy, prompts, share=False)
    return (out.logits[:, -1, :].repeat_interleave(reps, 0), out, mask.repeat_interleave(reps, 0),
            position_ids.repeat_interleave(reps, 0))


@torch.inference_mode()
def _generate_batch(policy: Policy, prompts: Sequence[Sequence[int]], keys, params: SamplingParams) -> list[Generation]:
    model, dev = policy.model, policy.device
    eos = torch.tensor(policy.eos_token_ids, device=dev)
    uniforms = None if params.greedy else row_uniforms(keys, params.max_new_tokens)
    logits, out, mask, position_ids = _prefill(policy, prompts)
    n = len(prompts)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    tokens_out, logps_out = [], []
    next_pos = position_ids[:, -1:] + 1
    for t in range(params.max_new_tokens):
        tok, lp = _pick_tokens(logits, None if uniforms is None else uniforms[:, t], params)
        tok = torch.where(done, torch.full_like(tok, policy.pad_token_id), tok)
        tokens_out.append(tok)
        logps_out.append(lp)
        done = done | torch.isin(tok, eos)
        if bool(done.all()) or t == params.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], dim=1)
        out = model(
            input_ids=tok.unsqueeze(-1),
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **_cache_kwargs(model, out),
        )
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    toks = torch.stack(tokens_out, 1).cpu().tolist()
    lps = torch.stack(logps_out, 1).float().cpu().tolist()
    eos_set = set(policy.eos_token_ids)
    gens = []
    for i in range(n):
        resp, lp, reason = [], [], "length"
        for tk, l in zip(toks[i], lps[i]):
            resp.append(tk)
            lp.append(l)
            if tk in eos_set:
                reason = "stop"
                break
        gens.append(Generation(list(prompts[i]), resp, lp, reason))
    return gens


def generate(
    policy: Policy,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    keys: Sequence[tuple] | None = None,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Generate one response per prompt row (repeat a prompt G times for a group).

    ``keys`` (one per row) seed sampling; ignored when ``params.greedy``.  Rows are processed in the given
    order in chunks of ``batch_size``."""
    if not params.greedy and (keys is None or len(keys) != len(prompts)):
        raise ValueError("sampling needs one key per prompt row")
    gens: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        chunk_keys = None if params.greedy else keys[start : start + batch_size]
        gens.extend(_generate_batch(policy, chunk, chunk_keys, params))
        if on_batch:
            on_batch(len(chunk))
    return gens
