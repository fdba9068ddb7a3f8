"""Rollout backends: what samples the responses of a trajectory store.

A backend turns prompt-token rows, one key per row (seed, prompt id, sample index), and ``SamplingParams`` into
``Generation``s with the contract of ``sampler.generate``: the response ends with the end-of-sequence token when
it stopped, and each behaviour log-prob is log-softmax(logits / T) of the sampled token, without top-p
renormalisation.  ``hf`` is the built-in batched sampler; ``vllm`` (extra ``cropi[vllm]``) is in
``vllm_backend``, imported only when asked for.

``identity()`` is what a store records of the backend besides the weights: the rest of what decides which
responses and log-probs it samples (for vLLM its version, dtype and engine arguments other than memory and batch
sizing), so a resumed collection never mixes two engines' chunks.  ``close()`` frees what the backend holds (an engine's GPU memory); ``collect``
calls it when it built the backend itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from cropi.errors import CropiError
from cropi.policy import Policy
from cropi.rollouts.sampler import Generation, SamplingParams, generate

BACKENDS = ("hf", "vllm")


class RolloutBackend(Protocol):
    name: str  # recorded in the store's meta.json

    def identity(self) -> dict:
        """``{"name": ..., ...}``: what the store's meta records and a resumed collection must match."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], keys: Sequence[tuple], params: SamplingParams,
                 weights: str | None = None) -> list[Generation]:
        """One response per prompt row, row i drawn from key ``keys[i]``, in the rows' order.  ``weights`` is the
        fingerprint of the policy's current weights (``collect`` passes the one it records; None: the backend
        takes it itself), so a backend holding a copy of the weights reloads them after training."""
        ...

    def close(self) -> None:
        """Free what the backend holds; a later ``generate`` starts it again."""
        ...


@dataclass
class HFBackend:
    """The built-in sampler on the policy's own model (``sampler.generate``)."""

    policy: Policy
    batch_size: int = 512
    name: str = "hf"

    def identity(self) -> dict:
        # what hf stores recorded before identities were (their meta holds only "backend": "hf")
        return {"name": self.name}

    def generate(self, prompts, keys, params, weights=None):
        return generate(self.policy, prompts, params, keys=keys, batch_size=self.batch_size)  # samples the live model

    def close(self) -> None:
        pass


def make_backend(name: str, policy: Policy, batch_size: int = 512) -> RolloutBackend:
    """The backend called ``name`` sampling from ``policy``'s current weights."""
    if name == "hf":
        return HFBackend(policy, batch_size)
    if name == "vllm":
        from cropi.rollouts.vllm_backend import vllm_backend

        return vllm_backend(policy)
    raise CropiError(f"rollout backend {name!r}: expected one of {', '.join(BACKENDS)}")
