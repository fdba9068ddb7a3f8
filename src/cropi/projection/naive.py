"""BENCHMARK BASELINE ONLY: a textbook SJLT that materialises its tables.

``naive_sjlt(d, k, seed)`` draws an int64 row table and a float32 sign table of length ``d`` with
torch's CPU generator (12 bytes per coordinate: ~1.6 GB at d = 1.35e8) and projects a flat vector with
one ``index_add_``.  It is the reference point for the streaming ``SJLTProjector`` in the projection
benchmark; it is not used by the pipeline and its random map differs from the hashed one.
"""

from __future__ import annotations

import torch


class NaiveSJLT:
    """``P x = sum_i sign_i x_i e_{row_i}`` with stored ``row`` (int64 [d]) and ``sign`` (fp32 [d])."""

    def __init__(self, d: int, k: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.d, self.k = d, k
        self.row = torch.randint(0, k, (d,), generator=gen, dtype=torch.int64)
        self.sign = torch.randint(0, 2, (d,), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``P x`` for a flat vector ``x`` of length d: fp32 [k]."""
        if x.shape != (self.d,):
            raise ValueError(f"expected a flat vector of length {self.d}, got shape {tuple(x.shape)}")
        out = torch.zeros(self.k, dtype=torch.float32, device=x.device)
        return out.index_add_(0, self.row.to(x.device), x.float() * self.sign.to(x.device))


def naive_sjlt(d: int, k: int, seed: int) -> NaiveSJLT:
    """The materialised SJLT baseline (benchmark only)."""
    return NaiveSJLT(d, k, seed)
