"""Pure-Python definition of every projector entry (slow; for tests and as the written specification).

``dense_matrix(projector)`` builds the flat ``k x d`` matrix of ``P S`` (columns in the projector's
parameter order, then row-major coordinate order), so ``dense_matrix(p) @ flat(x)`` must equal
``p.project(x)`` up to float rounding; ``ref_project`` computes the same product column by column
(sparse for SJLT).  Only for small ``d`` (and ``d * k`` for the dense kinds).
"""

from __future__ import annotations

import math

from .hashing import (STREAM_GAUSSIAN, STREAM_KEEP, STREAM_KEEP_LO, STREAM_RADEMACHER, STREAM_SJLT, ref_hash64,
                      tensor_salt)
from .sparsify import keep_threshold


def ref_keep(seed: int, name: str, i: int, q: float) -> bool:
    """Whether coordinate ``i`` of tensor ``name`` is kept at keep probability ``q``."""
    t = keep_threshold(q)
    if t >= 1 << 32:
        return True
    hi = (ref_hash64(tensor_salt(seed, name, STREAM_KEEP), i >> 2) >> (16 * (i & 3))) & 0xFFFF
    lo = (ref_hash64(tensor_salt(seed, name, STREAM_KEEP_LO), i >> 2) >> (16 * (i & 3))) & 0xFFFF
    return ((hi << 16 | lo) ^ (1 << 31)) < t


def ref_sjlt_column(seed: int, name: str, i: int, k: int, s: int = 1) -> list[tuple[int, int]]:
    """The ``s`` (row, sign) pairs of column ``i`` of the SJLT (entries ``sign / sqrt(s)``)."""
    m = k // s
    pow2 = m & (m - 1) == 0
    bits = 16 if pow2 and 2 * m <= 1 << 15 else 32
    per = 64 // bits
    out = []
    for j in range(s):
        salt = tensor_salt(seed, name, STREAM_SJLT + j)
        lane = (ref_hash64(salt, i // per) >> (bits * (i % per))) & ((1 << bits) - 1)
        if pow2:
            b2 = lane % (2 * m)
            row, neg = b2 >> 1, b2 & 1
        else:
            neg = lane >> 31
            row = ((lane & 0x7FFFFFFF) * m) >> 31
        out.append((j * m + row, -1 if neg else 1))
    return out


def ref_gaussian(seed: int, name: str, i: int, j: int, k: int) -> float:
    """Entry (row j, column i) of the Gaussian matrix before the ``1/sqrt(k)`` scale, in float64."""
    words = (k + 1) // 2
    w = ref_hash64(tensor_salt(seed, name, STREAM_GAUSSIAN), i * words + (j >> 1))
    u = ((w >> 40) + 1) / 2 ** 24
    theta = 2.0 * math.pi * ((w >> 8) & 0xFFFFFF) / 2 ** 24
    r = math.sqrt(-2.0 * math.log(u))
    return r * (math.cos(theta) if j % 2 == 0 else math.sin(theta))


def ref_rademacher(seed: int, name: str, i: int, j: int, k: int) -> int:
    """Entry (row j, column i) of the Rademacher matrix before the ``1/sqrt(k)`` scale."""
    words = (k + 63) // 64
    w = ref_hash64(tensor_salt(seed, name, STREAM_RADEMACHER), i * words + (j >> 6))
    return -1 if (w >> (j & 63)) & 1 else 1


def column(projector, name: str, i: int) -> list[float]:
    """Column ``i`` of tensor ``name`` of the projector's flat matrix ``P S`` (float64 list of length k)."""
    k, seed = projector.k, projector.seed
    q = projector.keep_probs[name]
    col = [0.0] * k
    if not ref_keep(seed, name, i, q):
        return col
    scale = 1.0 / math.sqrt(q)
    if projector.kind == "sjlt":
        for row, sign in ref_sjlt_column(seed, name, i, k, projector.s):
            col[row] += sign * scale / math.sqrt(projector.s)
    elif projector.kind == "gaussian":
        col = [ref_gaussian(seed, name, i, j, k) * scale / math.sqrt(k) for j in range(k)]
    elif projector.kind == "rademacher":
        col = [ref_rademacher(seed, name, i, j, k) * scale / math.sqrt(k) for j in range(k)]
    else:
        raise ValueError(f"unknown kind {projector.kind!r}")
    return col


def dense_matrix(projector):
    """The flat ``k x d`` float64 matrix (a torch tensor) of the projector, built entry by entry."""
    import torch

    cols = [column(projector, name, i) for name in projector.names for i in range(projector.numel[name])]
    return torch.tensor(cols, dtype=torch.float64).T.contiguous()


def ref_project(projector, grads) -> list[float]:
    """``P S x`` in float64 Python arithmetic, column by column over the flat coordinates."""
    k, seed = projector.k, projector.seed
    out = [0.0] * k
    for name in projector.names:
        g = grads.get(name)
        if g is None:
            continue
        q = projector.keep_probs[name]
        for i, v in enumerate(g.reshape(-1).double().tolist()):
            if not ref_keep(seed, name, i, q):
                continue
            if projector.kind == "sjlt":
                for row, sign in ref_sjlt_column(seed, name, i, k, projector.s):
                    out[row] += sign * v / math.sqrt(q * projector.s)
            else:
                for j, c in enumerate(column(projector, name, i)):
                    out[j] += c * v
    return out
