"""Projections and exact inner products of per-example gradients kept factored (``gradients.per_example``).

For a linear weight W (out × in), example b's gradient is G_b = Σ_t δ_t a_tᵀ over its tokens (inputs a_t, gradients
at the output δ_t).  With two independent CountSketch maps P (k_out × out) and Q (k_in × in), one ±1 per column,

    P G_b Qᵀ = Σ_t (P δ_t)(Q a_t)ᵀ        (k_out × k_in),

which costs tokens × (out + in) instead of the out × in of forming G_b, and E ⟨P G Qᵀ, P H Qᵀ⟩ = ⟨G, H⟩ because
E[PᵀP] = I and E[QᵀQ] = I independently: inner products, and so cosines, are preserved in expectation, as by a
projection of the flat gradient (the factored projection of LoGra and bergson, here with sparse maps).

Exact inner products need no projection either: ⟨G_b, M⟩ = Σ_t δ_tᵀ M a_t for any out × in matrix M (a validation
mean), and ‖G_b‖² = Σ_{t,s} (δ_t·δ_s)(a_t·a_s) (the "ghost norm"), whichever of that and forming G_b is cheaper.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from cropi.projection.hashing import hash_range, lsr, tensor_salt

STREAM_FACTOR_OUT = 64  # the row map P of a weight
STREAM_FACTOR_IN = 65  # the column map Q


def _countsketch(seed: int, name: str, stream: int, n: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket in [0, k) and sign ±1 of each of ``n`` coordinates, from one hash per coordinate: the low bit is the
    sign, the bits above it (mod k) the bucket."""
    h = hash_range(tensor_salt(seed, name, stream), 0, n, device)
    sign = 1.0 - 2.0 * (h & 1).to(torch.float32)
    bucket = torch.remainder(lsr(h, 1), k)
    return bucket, sign


class FactoredSJLT:
    """``P G Qᵀ`` per linear weight, flattened and concatenated in the order of ``shapes`` (``k`` numbers in all)."""

    kind = "factored-sjlt"

    def __init__(self, shapes: Mapping[str, Sequence[int]], k_out: int, k_in: int, seed: int = 0,
                 device: torch.device | str = "cpu"):
        self.names = list(shapes)
        self.shapes = {n: tuple(int(x) for x in shapes[n]) for n in self.names}
        self.k_out, self.k_in, self.seed = k_out, k_in, seed
        self.k = len(self.names) * k_out * k_in
        self._maps = {}
        for n in self.names:
            out, inp = self.shapes[n]
            self._maps[n] = (_countsketch(seed, n, STREAM_FACTOR_OUT, out, k_out, device),
                             _countsketch(seed, n, STREAM_FACTOR_IN, inp, k_in, device))

    def spec(self) -> dict:
        return {"kind": self.kind, "k_out": self.k_out, "k_in": self.k_in, "seed": self.seed,
                "shapes": {n: list(s) for n, s in self.shapes.items()}}

    @staticmethod
    def _sketch(x: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, k: int) -> torch.Tensor:
        """[T, n] -> [T, k]: each column, signed, added into its bucket."""
        out = torch.zeros(x.shape[0], k, dtype=torch.float32, device=x.device)
        return out.index_add_(1, bucket, x.float() * sign)

    def project_weight(self, name: str, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``P (dᵀ a) Qᵀ`` of one example's factors (``a`` [T, in], ``d`` [T, out]), flattened."""
        (pb, ps), (qb, qs) = self._maps[name]
        return (self._sketch(d, pb, ps, self.k_out).T @ self._sketch(a, qb, qs, self.k_in)).reshape(-1)

    def project_batch(self, factors: Mapping) -> torch.Tensor:
        """[B, k] from ``{name: LinearFactors}`` (every name of ``shapes``)."""
        B = len(next(iter(factors.values())).a)
        return torch.stack([torch.cat([self.project_weight(n, factors[n].a[b], factors[n].d[b]) for n in self.names])
                            for b in range(B)])

    def dense(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """P and Q of one weight as dense matrices (for checks and small models)."""
        (pb, ps), (qb, qs) = self._maps[name]
        out, inp = self.shapes[name]
        P = torch.zeros(self.k_out, out)
        P[pb, torch.arange(out)] = ps
        Q = torch.zeros(self.k_in, inp)
        Q[qb, torch.arange(inp)] = qs
        return P, Q


def exact_dot(a: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """⟨dᵀ a, M⟩ = Σ_t δ_tᵀ M a_t for one example (``m``: out × in), without forming dᵀ a."""
    return ((a.float() @ m.float().T) * d.float()).sum()


def squared_norm(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """‖dᵀ a‖²: by the ghost norm Σ_{t,s} (δ_t·δ_s)(a_t·a_s) when T² (in + out) is below in × out, else formed."""
    T, inp = a.shape
    out = d.shape[1]
    if T * T * (inp + out) < T * inp * out:
        return ((d.float() @ d.float().T) * (a.float() @ a.float().T)).sum()
    return (d.float().T @ a.float()).pow(2).sum()
