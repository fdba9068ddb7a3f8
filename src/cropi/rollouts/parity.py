"""Do a store's behaviour log-probs match the policy's own?  Stored log β against teacher-forced log π at the
store's temperature, over the same stored responses, whatever backend sampled them.

Two measures:
- per token, |log π(o_t | x, o_<t) − log β(o_t | x, o_<t)|: mean and max over every stored response token;
- per prompt group of G responses, the normalised effective sample size of the sequence-level importance
  weights w_i = exp(Σ_t log π(o_it) − Σ_t log β(o_it)):  ESS = (Σ_i w_i)² / (G Σ_i w_i²), in [1/G, 1], and 1
  exactly when all G weights are equal (in particular when β = π on the sampled sequences).  Reported as the
  mean and the minimum over groups.

When β is the policy (same weights, same temperature), both say how far the engine's numerics are from
cropi's forward pass: the importance ratios that POPI scoring and the trainer's clip see on "on-policy" data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from cropi.objective import response_logprobs
from cropi.policy import Policy
from cropi.rollouts.batch import pack
from cropi.rollouts.trajectory_store import iter_prompt_groups, store_meta


@torch.inference_mode()
def teacher_forced_logprobs(policy: Policy, prompt_ids: Sequence[Sequence[int]],
                            response_ids: Sequence[Sequence[int]], temperature: float,
                            batch_size: int = 64) -> list[list[float]]:
    """log π(o_t | x, o_<t) at temperature T of every response token, through ``objective.response_logprobs``
    (the scorer's and the trainer's forward pass)."""
    out: list[list[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        ps, rs = prompt_ids[start:start + batch_size], response_ids[start:start + batch_size]
        b = pack(ps, rs, None, policy.pad_token_id).to(policy.device)
        lp = response_logprobs(policy.model, b.input_ids, b.attention_mask, b.response_mask, temperature)
        lp = lp.float().cpu()
        width = lp.shape[1]
        out.extend(lp[i, width - len(r):].tolist() if len(r) else [] for i, r in enumerate(rs))
    return out


def token_deltas(behaviour: Sequence[Sequence[float]], teacher: Sequence[Sequence[float]]) -> dict:
    """Mean and max |log π − log β| over all tokens of responses given as per-response log-prob lists."""
    diffs = []
    for b, t in zip(behaviour, teacher, strict=True):
        if len(b) != len(t):
            raise ValueError(f"a response has {len(b)} behaviour log-probs and {len(t)} teacher-forced ones")
        diffs.extend(abs(x - y) for x, y in zip(b, t))
    return {"tokens": len(diffs), "mean_abs_delta": sum(diffs) / max(1, len(diffs)),
            "max_abs_delta": max(diffs, default=0.0)}


def normalised_ess(log_weights: Sequence[float]) -> float:
    """(Σ w)² / (n Σ w²) of weights given by their logs, computed stably (shifted by the largest)."""
    if not log_weights:
        raise ValueError("no weights")
    top = max(log_weights)
    w = [math.exp(x - top) for x in log_weights]
    return sum(w) ** 2 / (len(w) * sum(x * x for x in w))


def store_parity(policy: Policy, store: str | Path, batch_size: int = 64) -> dict:
    """Stored behaviour log-probs of ``store`` against ``policy``'s teacher-forced ones at the store's temperature:
    token |Δ| (mean, max) and the per-group sequence ESS (mean, min); see the module docstring."""
    meta = store_meta(store)
    behaviour, teacher, ess = [], [], []
    for _, g in iter_prompt_groups(store):
        t = teacher_forced_logprobs(policy, [g.prompt_ids] * len(g.response_ids), g.response_ids, g.temperature,
                                    batch_size)
        behaviour.extend(g.behavior_logprobs)
        teacher.extend(t)
        ess.append(normalised_ess([sum(a) - sum(b) for a, b in zip(t, g.behavior_logprobs)]))
    return {"backend": meta.get("backend", "hf"), "temperature": meta["temperature"], "prompts": len(ess),
            "responses": len(behaviour), **token_deltas(behaviour, teacher),
            "mean_ess": sum(ess) / max(1, len(ess)), "min_ess": min(ess, default=float("nan"))}
