"""The sparsifier: one fixed, unbiased coordinate-sampling map per projector, and its calibration.

Coordinate ``i`` of tensor ``p`` is kept with probability ``q_p`` and multiplied by ``1 / sqrt(q_p)``;
all other coordinates are dropped.  The keep decision is a pure function of (seed, parameter name, i):

    hi   = 16-bit lane (i mod 4) of hash64(tensor_salt(seed, name, STREAM_KEEP), i // 4)
    lo   = 16-bit lane (i mod 4) of hash64(tensor_salt(seed, name, STREAM_KEEP_LO), i // 4)
    keep = ((hi * 2**16 + lo) XOR 2**31) < t_p,          t_p = round(q_p * 2**32)

so the realised probability is exactly ``t_p / 2**32``, and that value (not the requested ``q_p``)
is used for the rescale.  One hash word decides four coordinates; ``lo`` is only computed for the
rare coordinates whose ``hi`` ties the threshold, so sampling costs about a quarter hash per
coordinate.

Why ``1 / sqrt(q)`` and not ``1 / q``: the projector must preserve inner products.  With
``S = diag(keep_i / sqrt(q_i))`` we get ``E[S^T S] = I``, hence ``E[<PSx, PSy>] = <x, y>`` for any
projection with ``E[P^T P] = I``.  The ``1 / q`` rescale makes the *vector* unbiased
(``E[Sx] = x``) but inflates every inner product by ``1 / q`` (tensor by tensor, so cosines get
distorted too).  ``S`` is one fixed linear map (it depends on the seed, never on the vector), so
``P S`` stays linear: the projection of a mean is the mean of the projections.  The price is the
extra variance ``sum_i x_i**2 y_i**2 (1/q_i - 1)``, which is large when a few coordinates hold most
of the mass (heavy tails) -- hence per-tensor probabilities instead of one uniform fraction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

SMALL_NUMEL = 16384
"""Tensors with fewer elements than this (LayerNorm weights, biases, ...) are always kept whole."""
MIN_KEPT = 64
"""Every tensor keeps at least this many coordinates in expectation (``q_p >= MIN_KEPT / numel``)."""

_TWO32 = 1 << 32


def keep_threshold(q: float) -> int:
    """The 32-bit threshold ``t`` realising keep probability ``q``: ``round(q * 2**32)`` in ``[1, 2**32]``."""
    if not (q > 0.0 and q <= 1.0):
        raise ValueError(f"keep probability must be in (0, 1], got {q!r}")
    return min(_TWO32, max(1, int(round(q * _TWO32))))


def _numel(shape) -> int:
    return int(math.prod(int(s) for s in shape))


def resolve_keep(param_shapes: Mapping[str, tuple], keep: float | Mapping[str, float] = 1.0, *,
                 small_numel: int = SMALL_NUMEL, min_kept: int = MIN_KEPT) -> dict[str, float]:
    """Per-tensor keep probabilities from a uniform fraction or a per-tensor mapping.

    ``q_p = 1`` for tensors with ``numel < small_numel``; otherwise ``q_p = max(q_requested,
    min(1, min_kept / numel))``.  A mapping must name every tensor of ``param_shapes``.
    """
    out: dict[str, float] = {}
    for name, shape in param_shapes.items():
        n = _numel(shape)
        if isinstance(keep, Mapping):
            if name not in keep:
                raise ValueError(f"keep probabilities do not name parameter {name!r}")
            q = float(keep[name])
        else:
            q = float(keep)
        keep_threshold(q)  # validates the range
        if n < small_numel:
            q = 1.0
        elif n > 0:
            q = max(q, min(1.0, min_kept / n))
        out[name] = q
    return out


def calibrate_keep(calibration: Iterable[Mapping[str, torch.Tensor]], param_shapes: Mapping[str, tuple],
                   budget: float, *, batched: bool = False, small_numel: int = SMALL_NUMEL,
                   min_kept: int = MIN_KEPT) -> dict[str, float]:
    """Per-tensor keep probabilities that spend an overall budget where the gradient mass is.

    ``calibration`` yields gradient dicts (``batched=True``: each tensor is ``[B, *shape]``).  With
    ``rho_p`` = mean squared entry of tensor ``p`` over the calibration set (its share of the squared
    norm per coordinate), the rule is

        q_p = 1                                   if numel_p < small_numel
        q_p = clip(c * rho_p, q_min_p, 1)         otherwise, q_min_p = min(1, min_kept / numel_p)

    with ``c`` found by bisection so that ``sum_p q_p numel_p = budget * d`` (d = total numel; the
    forced tensors count towards the budget; if the budget cannot be met the floors or ones win).
    ``q_p`` proportional to ``rho_p`` minimises ``sum_p numel_p rho_p**2 / q_p``, the extra variance of
    the sparsified squared-norm estimate when the entries of a tensor have similar magnitudes, under
    that budget (Lagrange: ``numel_p rho_p**2 / q_p**2 = lambda numel_p``).
    """
    if not (0.0 < budget <= 1.0):
        raise ValueError(f"budget must be in (0, 1], got {budget!r}")
    names = list(param_shapes)
    numel = {n: _numel(param_shapes[n]) for n in names}
    energy = {n: 0.0 for n in names}
    count = 0
    for grads in calibration:
        unknown = set(grads) - set(names)
        if unknown:
            raise ValueError(f"calibration gradients name unknown parameters: {sorted(unknown)[:5]}")
        b = None
        for n, g in grads.items():
            g = g.detach()
            if batched:
                b = g.shape[0]
            energy[n] += float(g.double().pow(2).sum())
        count += (b if batched else 1) or 0
    if count == 0:
        raise ValueError("calibration set is empty")
    d = sum(numel.values())
    target = budget * d
    forced = [n for n in names if numel[n] < small_numel]
    free = [n for n in names if numel[n] >= small_numel]
    rho = {n: energy[n] / (count * max(1, numel[n])) for n in free}
    floor = {n: min(1.0, min_kept / numel[n]) for n in free}
    rest = target - sum(numel[n] for n in forced)

    def spent(c: float) -> float:
        return sum(numel[n] * min(1.0, max(floor[n], c * rho[n])) for n in free)

    q = {n: 1.0 for n in forced}
    if not free:
        return q
    if spent(0.0) >= rest:
        q.update(floor)
        return q
    positive = [rho[n] for n in free if rho[n] > 0]
    if not positive or spent(1.0 / min(positive)) <= rest:
        # even q = 1 wherever there is mass does not spend the budget
        q.update({n: (1.0 if rho[n] > 0 else floor[n]) for n in free})
        return q
    lo, hi = 0.0, 1.0 / min(positive)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if spent(mid) < rest:
            lo = mid
        else:
            hi = mid
    q.update({n: min(1.0, max(floor[n], hi * rho[n])) for n in free})
    return q
