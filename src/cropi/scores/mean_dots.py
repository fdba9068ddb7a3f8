"""Exact mode's "projector": the map g ↦ (⟨g, ḡ_v⟩)_v onto each validation set's whole mean gradient, stored like
any projection so that exact scores resume and shard the same way (``scores.engine``)."""

from __future__ import annotations

import math
from typing import Mapping

import torch

from cropi.gradients.popi import GradientBatch
from cropi.projection.factored import exact_dots


class MeanDots:
    """The exact-mode map g ↦ (⟨g, ḡ_v⟩)_v over the validation means (a Projector with k = number of sets)."""

    def __init__(self, means: Mapping[str, dict[str, torch.Tensor]], identity: dict):
        self.sets = list(means)
        self.means = means
        self.k = len(self.sets)
        self.norms = {v: math.sqrt(sum(float(t.double().pow(2).sum()) for t in m.values())) for v, m in means.items()}
        # the means are a function of their validation stores, the loss (in the store identity) and the policy;
        # their float values are not part of the identity, so shards made at other thread counts still merge
        self._spec = {"kind": "validation-means", "k": self.k, "sets": identity}

    def spec(self) -> dict:
        return self._spec

    def project_batch(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        B = next(iter(grads.values())).shape[0]
        out = torch.zeros(self.k, B, dtype=torch.float64)
        for j, v in enumerate(self.sets):
            for name, m in self.means[v].items():  # fp32 dot per tensor (memory-bound), summed in fp64
                if name in grads:  # a missing gradient counts as zero, as in the hashed projectors
                    out[j] += torch.mv(grads[name].reshape(B, -1), m.reshape(-1)).double().cpu()
        return out.T.contiguous().float()

    def project(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.project_batch({n: g.unsqueeze(0) for n, g in grads.items()})[0]

    def project_factored_batch(self, gb: GradientBatch) -> torch.Tensor:
        """The same inner products, the factored weights' as Σ_t δ_tᵀ Ḡ_v a_t (never formed)."""
        out = (self.project_batch(gb.grads).double().T if gb.grads
               else torch.zeros(self.k, len(gb), dtype=torch.float64))
        for j, v in enumerate(self.sets):
            for name, f in gb.factors.items():
                m = self.means[v].get(name)
                if m is not None:
                    out[j] += exact_dots(f, m).double().cpu()
        return out.T.contiguous().float()
