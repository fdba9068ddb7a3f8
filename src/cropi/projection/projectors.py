"""Random projections of per-prompt gradients, streamed parameter by parameter.

A projector ``P`` maps a gradient (a dict parameter name -> tensor; the flat vector ``x`` is the
concatenation of the flattened tensors in the projector's parameter order) to ``P x`` in ``R^k``.
All three kinds satisfy ``E[P^T P] = I`` over the seed, so ``<Px, Py>`` is an unbiased estimate of
``<x, y>`` and, by the Johnson-Lindenstrauss property, ``|<Px, Py> - <x, y>| = O(||x|| ||y|| / sqrt(k))``
(variance ``(||x||^2 ||y||^2 + <x, y>^2) / k`` for Gaussian entries, at most that for the others):

* ``gaussian``:   entries N(0, 1) / sqrt(k)  (Box-Muller on two hashed 24-bit uniforms);
* ``rademacher``: entries +-1 / sqrt(k)      (one hashed bit per entry);
* ``sjlt``:       sparse JL / CountSketch: column ``i`` has ``s`` nonzeros +-1/sqrt(s), one in each of
                  the ``s`` contiguous groups of ``k/s`` rows, at a hashed row with a hashed sign.

An optional sparsifier ``S`` (``cropi.projection.sparsify``) is applied first: coordinate ``i`` of
tensor ``p`` is kept with probability ``q_p`` and scaled by ``1/sqrt(q_p)`` (so ``E[S^T S] = I`` and
inner products stay unbiased); the projector is the fixed linear map ``P S``.

Nothing of size d or d x k is stored: every entry is a pure function of (seed, parameter name,
coordinate index[, row]) through ``hash64`` (``cropi.projection.hashing``) and is regenerated block
by block.  ``cropi.projection.reference`` spells out every entry in pure Python.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import ConfigError
from .hashing import (GOLDEN, STREAM_GAUSSIAN, STREAM_KEEP, STREAM_KEEP_LO, STREAM_RADEMACHER, STREAM_SJLT,
                      CounterCache, hash64, lsr, mix64_, tensor_salt, to_signed)
from .kernels import numba_kernels
from .sparsify import MIN_KEPT, SMALL_NUMEL, keep_threshold, resolve_keep

KINDS = ("gaussian", "rademacher", "sjlt")
DEFAULT_BLOCK = 1 << 18
"""Coordinates hashed per step (one tensor at a time); the random map does not depend on it, the
output only through the fp32 summation order (partial sums per block)."""
ROW_CHUNK_ENTRIES = 1 << 16
"""Dense kinds: generated matrix entries per step (rows of k entries)."""

if sys.byteorder != "little":  # lanes are read through dtype views of the hash words
    raise ImportError("cropi.projection needs a little-endian host")
_TWO32 = 1 << 32


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """``mask.nonzero()`` (1-D, int64) for a sparse bool mask: first over 8-byte words, then inside the
    few nonzero words (about 2x faster than a plain ``nonzero`` on CPU)."""
    n = mask.numel()
    if n % 8 or mask.storage_offset() % 8 or not mask.is_contiguous():
        return mask.nonzero().view(-1)
    words = mask.view(torch.int64).nonzero().view(-1)
    inner = mask.view(-1, 8)[words].nonzero()
    return words[inner[:, 0]].mul_(8).add_(inner[:, 1])


@runtime_checkable
class Projector(Protocol):
    """Compresses a gradient dict to ``k`` fp32 numbers, linearly."""

    k: int

    def project(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``P x`` for one gradient (tensors of the parameter shapes): fp32 ``[k]``."""
        ...

    def project_batch(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``P x_b`` for B gradients stacked on dim 0 (``[B, *shape]``): fp32 ``[B, k]``, row ``b`` equal
        to ``project`` of example ``b``."""
        ...

    def spec(self) -> dict:
        """What identifies the map (kind, k, seed, parameters, ...): stores projected by another map are refused."""
        ...


class HashProjector:
    """Shared streaming machinery: validation, the keep sampler, per-block iteration, fp32 accumulation.

    Missing parameters in ``grads`` count as zero gradients; unknown names or wrong shapes raise
    ``ValueError``.  The accumulation order is fixed by the projector (parameter order, then coordinate
    order), so outputs are bitwise deterministic on CPU for a given thread count, and
    ``project_batch`` equals ``B`` calls of ``project`` bit for bit.
    """

    kind: str = ""

    def __init__(self, k: int, seed: int, param_shapes: Mapping[str, Sequence[int]],
                 keep: float | Mapping[str, float] = 1.0, block_size: int = DEFAULT_BLOCK, *,
                 small_numel: int = SMALL_NUMEL, min_kept: int = MIN_KEPT):
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"projection dimension k must be a positive int, got {k!r}")
        if not isinstance(seed, int):
            raise ConfigError(f"projection seed must be an int, got {seed!r}")
        if not isinstance(block_size, int) or block_size < 64 or block_size % 64:
            raise ConfigError(f"block_size must be a positive multiple of 64, got {block_size!r}")
        if not param_shapes:
            raise ConfigError("no parameters to project (param_shapes is empty)")
        self.k = k
        self.seed = seed
        self.block_size = block_size
        self.param_shapes = {str(n): tuple(int(s) for s in shape) for n, shape in param_shapes.items()}
        self.names = list(self.param_shapes)
        self.numel = {n: math.prod(sh) for n, sh in self.param_shapes.items()}
        self.dim = sum(self.numel.values())
        try:
            q = resolve_keep(self.param_shapes, keep, small_numel=small_numel, min_kept=min_kept)
            self._thresholds = {n: keep_threshold(q[n]) for n in self.names}
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.keep_probs = {n: t / _TWO32 for n, t in self._thresholds.items()}
        """Realised keep probability of each tensor (1.0: kept whole)."""
        self._keep_salts = {n: tensor_salt(seed, n, STREAM_KEEP) for n in self.names}
        self._keep_lo_salts = {n: tensor_salt(seed, n, STREAM_KEEP_LO) for n in self.names}
        self._counters = CounterCache()

    # ------------------------------------------------------------------ public
    def spec(self) -> dict:
        """A JSON-able description that, with the parameter order, determines the map."""
        return {"kind": self.kind, "k": self.k, "seed": self.seed, "dim": self.dim, "hash": "splitmix64",
                "params": [[n, list(self.param_shapes[n]), self.keep_probs[n]] for n in self.names],
                **self._extra_spec()}

    def project(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``P S x`` for one gradient dict: fp32 ``[k]``."""
        for n, g in grads.items():
            if n in self.param_shapes and tuple(g.shape) != self.param_shapes[n]:
                raise ValueError(f"gradient of {n!r} has shape {tuple(g.shape)}, expected {self.param_shapes[n]}")
        return self.project_batch({n: g.unsqueeze(0) for n, g in grads.items()})[0]

    def project_batch(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``P S x_b`` for B gradients stacked on dim 0: fp32 ``[B, k]``."""
        B, device = self._check(grads)
        if B == 0:
            return torch.zeros(0, self.k, dtype=torch.float32, device=device)
        acc = torch.zeros(B, self._acc_width(), dtype=torch.float32, device=device)
        state = self._start(device)
        for name in self.names:
            g = grads.get(name)
            if g is None:
                continue
            n = self.numel[name]
            x = g.detach().reshape(B, n)
            t = self._thresholds[name]
            rescale = None if t >= _TWO32 else math.sqrt(_TWO32 / t)  # 1/sqrt(q): E[S^T S] = I
            for st in range(0, n, self.block_size):
                xb = x[:, st:st + self.block_size]
                if xb.dtype != torch.float32:
                    xb = xb.float()
                if rescale is None:
                    self._add_range(acc, state, name, st, xb)
                    continue
                rel = self._kept(name, st, xb.shape[1], t, device)
                if rel.numel() == 0:
                    continue
                vals = xb.index_select(1, rel).mul_(rescale)
                self._add_at(acc, state, name, rel.add_(st), vals)
        return self._finish(acc)

    # ------------------------------------------------------------------ internals
    def _check(self, grads: Mapping[str, torch.Tensor]) -> tuple[int, torch.device]:
        B = device = None
        for n, g in grads.items():
            if n not in self.param_shapes:
                raise ValueError(f"gradient names parameter {n!r}, which this projector does not cover")
            shape = self.param_shapes[n]
            if g.dim() != len(shape) + 1 or tuple(g.shape[1:]) != shape:
                raise ValueError(f"batched gradient of {n!r} has shape {tuple(g.shape)}, expected (B, *{shape})")
            if B is None:
                B, device = int(g.shape[0]), g.device
            elif g.shape[0] != B:
                raise ValueError(f"batch sizes differ: {n!r} has {g.shape[0]}, others {B}")
            elif g.device != device:
                raise ValueError(f"gradients on different devices: {device} and {g.device}")
        if B is None:
            raise ValueError("no gradient tensors to project")
        return B, device

    def _kept(self, name: str, st: int, n: int, t: int, device: torch.device) -> torch.Tensor:
        """Relative indices (int64) of the kept coordinates among ``[st, st + n)`` of tensor ``name``
        (the rule of ``cropi.projection.sparsify``, in signed int16: ``hi XOR 2**15 = hi_signed + 2**15``)."""
        w = self._counters.hash_range(self._keep_salts[name], st >> 2, (n + 3) >> 2, device)
        hi = w.view(torch.int16)[:n]
        tie = (t >> 16) - (1 << 15)
        cand = _nonzero(hi <= tie)
        if cand.numel():
            on_tie = hi[cand] == tie
            if bool(on_tie.any()):
                gi = cand[on_tie] + st
                lo = torch.bitwise_right_shift(hash64(self._keep_lo_salts[name], gi >> 2), (gi & 3) * 16)
                drop = torch.zeros_like(on_tie)
                drop[on_tie] = lo.bitwise_and_(0xFFFF) >= (t & 0xFFFF)
                cand = cand[~drop]
        return cand

    def _start(self, device: torch.device) -> dict:
        return {}

    def _extra_spec(self) -> dict:
        return {}

    def _acc_width(self) -> int:
        raise NotImplementedError

    def _add_range(self, acc, state, name, st, xb) -> None:
        raise NotImplementedError

    def _add_at(self, acc, state, name, gi, vals) -> None:
        raise NotImplementedError

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(k={self.k}, seed={self.seed}, params={len(self.names)}, "
                f"dim={self.dim})")


# ====================================================================== SJLT
class SJLTProjector(HashProjector):
    """Sparse JL (CountSketch for s = 1): ``(P x)_r = sum_{i: h(i) = r} sign(i) x_i / sqrt(s)``.

    For the j-th of the s nonzeros of column i, with ``m = k / s`` rows per group, the lane ``L`` of
    coordinate ``i`` is the ``bits``-wide lane ``i mod (64/bits)`` of
    ``hash64(tensor_salt(seed, name, STREAM_SJLT + j), i // (64/bits))``, and

    * ``m`` a power of two: ``bits = 16`` if ``2m <= 2**15`` else 32; ``b2 = L mod 2m``;
      sign = ``-1`` iff ``b2`` is odd; row = ``j m + b2 // 2``  (four coordinates per hash word);
    * otherwise: ``bits = 32``; sign = ``-1`` iff bit 31 of ``L`` is set;
      row = ``j m + ((L mod 2**31) * m) >> 31``  (slower; prefer a power-of-two ``k / s``).

    Signs are fair coins independent of the rows, so ``E[<Px, Py>] = <x, y>`` exactly.  Row and sign are
    fused into one accumulator slot ``2 row + (sign < 0)``; the sketch is the even minus the odd slots.
    """

    kind = "sjlt"

    def __init__(self, k: int, seed: int, param_shapes, keep=1.0, block_size: int = DEFAULT_BLOCK, *,
                 s: int = 1, **kw):
        super().__init__(k, seed, param_shapes, keep, block_size, **kw)
        if not isinstance(s, int) or s < 1 or k % s:
            raise ConfigError(f"sjlt needs an int s >= 1 dividing k={k}, got s={s!r}")
        self.s = s
        self.m = m = k // s
        if m > 1 << 30:
            raise ConfigError(f"sjlt supports at most 2**30 rows per group, got k/s={m}")
        self.pow2 = m & (m - 1) == 0
        self.bits = 16 if self.pow2 and 2 * m <= 1 << 15 else 32
        self.per_word = 64 // self.bits
        self._salts = {n: [tensor_salt(seed, n, STREAM_SJLT + j) for j in range(s)] for n in self.names}
        lane = 2 * m - 1
        self._lane_mask64 = to_signed(sum(lane << (self.bits * t) for t in range(self.per_word)))
        self._view = torch.int16 if self.bits == 16 else torch.int32

    def _extra_spec(self) -> dict:
        return {"s": self.s}

    def _acc_width(self) -> int:
        return 2 * self.k

    def _start(self, device: torch.device) -> dict:
        # the fused CPU kernel, looked up once per call of project_batch (not once per block)
        kernels = numba_kernels() if self.pow2 and device.type == "cpu" else None
        if kernels is not None:
            return {"kernel": kernels["sjlt_accumulate"]}
        words = self.block_size // self.per_word
        return {"kernel": None, "buf": torch.empty(words, dtype=torch.int64, device=device),
                "tmp": torch.empty(words, dtype=torch.int64, device=device)}

    def _b2_range(self, salt: int, st: int, n: int, state: dict, device) -> torch.Tensor:
        """Fused accumulator slot ``2 row + neg`` (within the group) of coordinates ``[st, st + n)``."""
        per = self.per_word
        w = self._counters.hash_range(salt, st // per, -(-n // per), device, state["buf"], state["tmp"])
        if self.pow2:
            return w.bitwise_and_(self._lane_mask64).view(self._view)[:n]
        lanes = w.view(torch.int32)[:n]
        neg = lanes < 0
        row = torch.bitwise_and(lanes, 0x7FFFFFFF).long().mul_(self.m).bitwise_right_shift_(31)
        return row.mul_(2).add_(neg)

    def _b2_at(self, salt: int, gi: torch.Tensor) -> torch.Tensor:
        per, bits = self.per_word, self.bits
        w = hash64(salt, gi // per)
        lane = torch.bitwise_right_shift(w, (gi % per) * bits).bitwise_and_((1 << bits) - 1)
        if self.pow2:
            return lane.bitwise_and_(2 * self.m - 1)
        neg = lane >> 31
        row = lane.bitwise_and_(0x7FFFFFFF).mul_(self.m).bitwise_right_shift_(31)
        return row.mul_(2).add_(neg)

    def _scatter(self, acc_j: torch.Tensor, b2: torch.Tensor, vals: torch.Tensor) -> None:
        width = acc_j.shape[1]
        if vals.device.type == "cpu" and vals.shape[0] == 1:
            # bincount sums in fp32 in coordinate order, exactly like index_add_ below
            acc_j[0] += torch.bincount(b2, weights=vals[0].contiguous(), minlength=width)
        else:
            block = torch.zeros(vals.shape[0], width, dtype=torch.float32, device=vals.device)
            acc_j += block.index_add_(1, b2.long(), vals)

    def _add_range(self, acc, state, name, st, xb) -> None:
        w = 2 * self.m
        kernel = state["kernel"]
        if kernel is not None:
            # fused hash + scatter (cropi.projection.kernels): the same map, no int64 temporaries
            word0, mask = np.uint64(st // self.per_word), np.uint64(w - 1)
            for b in range(xb.shape[0]):
                row = xb[b].contiguous().numpy()
                for j, salt in enumerate(self._salts[name]):
                    kernel(row, np.uint64(salt), word0, self.bits, mask, acc[b, j * w:(j + 1) * w].numpy())
            return
        for j, salt in enumerate(self._salts[name]):
            b2 = self._b2_range(salt, st, xb.shape[1], state, xb.device)
            self._scatter(acc[:, j * w:(j + 1) * w], b2, xb)

    def _add_at(self, acc, state, name, gi, vals) -> None:
        w = 2 * self.m
        for j, salt in enumerate(self._salts[name]):
            self._scatter(acc[:, j * w:(j + 1) * w], self._b2_at(salt, gi), vals)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        out = acc[:, 0::2] - acc[:, 1::2]
        if self.s > 1:
            out.mul_(1.0 / math.sqrt(self.s))
        return out


# ====================================================================== dense kinds
class _DenseProjector(HashProjector):
    """Dense ``k x d`` matrix with i.i.d. entries ``a_ri / sqrt(k)``, ``E[a] = 0``, ``E[a^2] = 1``,
    generated for the (kept) columns of one block at a time and applied with matrix-vector products.

    Column ``i`` of tensor ``name`` is ``W`` consecutive 64-bit words
    ``hash64(tensor_salt(seed, name, stream), i * W + t)``, ``t < W``, decoded by ``_decode``."""

    stream = 0
    per_word = 1

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.words = -(-self.k // self.per_word)
        self._salts = {n: tensor_salt(self.seed, n, self.stream) for n in self.names}
        self._rows = max(1, ROW_CHUNK_ENTRIES // self.k)

    def _acc_width(self) -> int:
        return self.k

    def _words_range(self, salt: int, i0: int, r: int, device) -> torch.Tensor:
        return self._counters.hash_range(salt, i0 * self.words, r * self.words, device).view(r, self.words)

    def _words_at(self, salt: int, gi: torch.Tensor) -> torch.Tensor:
        base = gi.mul(to_signed(self.words * GOLDEN)).add_(to_signed(salt))
        z = base[:, None] + self._counters.golden_steps(self.words, gi.device)[None, :]
        return mix64_(z)

    def _decode(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply(self, acc: torch.Tensor, vals: torch.Tensor, mat: torch.Tensor) -> None:
        # one matrix-vector product per example (never one GEMM), so batched == single bit for bit
        for b in range(vals.shape[0]):
            acc[b] += vals[b] @ mat

    def _add_range(self, acc, state, name, st, xb) -> None:
        salt = self._salts[name]
        for r0 in range(0, xb.shape[1], self._rows):
            r = min(self._rows, xb.shape[1] - r0)
            mat = self._decode(self._words_range(salt, st + r0, r, xb.device))
            self._apply(acc, xb[:, r0:r0 + r], mat)

    def _add_at(self, acc, state, name, gi, vals) -> None:
        salt = self._salts[name]
        for r0 in range(0, gi.numel(), self._rows):
            mat = self._decode(self._words_at(salt, gi[r0:r0 + self._rows]))
            self._apply(acc, vals[:, r0:r0 + self._rows], mat)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        return acc.mul_(1.0 / math.sqrt(self.k))


class GaussianProjector(_DenseProjector):
    """Entries N(0,1)/sqrt(k) by Box-Muller: word ``w`` of column ``i`` gives rows ``2t`` and ``2t+1``:
    ``a = w >> 40``, ``b = (w >> 8) mod 2**24``, ``u = (a + 1) / 2**24``, ``theta = 2 pi b / 2**24``,
    ``z = sqrt(-2 ln u) * (cos theta, sin theta)`` (computed in fp32; across devices the bits and
    indices agree exactly and the values up to the last ulp of log/cos/sin)."""

    kind = "gaussian"
    stream = STREAM_GAUSSIAN
    per_word = 2

    def _decode(self, w: torch.Tensor) -> torch.Tensor:
        r = w.shape[0]
        u = lsr(w, 40).add_(1).float().mul_(2.0 ** -24)
        theta = lsr(w, 8).bitwise_and_(0xFFFFFF).float().mul_(2.0 * math.pi / 2 ** 24)
        rad = u.log_().mul_(-2.0).sqrt_()
        z = torch.stack((torch.cos(theta).mul_(rad), torch.sin(theta).mul_(rad)), dim=-1)
        return z.view(r, 2 * self.words)[:, :self.k]


class RademacherProjector(_DenseProjector):
    """Entries +-1/sqrt(k): row ``j`` of column ``i`` is ``-1`` iff bit ``j mod 64`` of word ``j // 64``
    is set."""

    kind = "rademacher"
    stream = STREAM_RADEMACHER
    per_word = 64

    def _decode(self, w: torch.Tensor) -> torch.Tensor:
        r = w.shape[0]
        shifts = torch.arange(8, dtype=torch.uint8, device=w.device)
        bits = torch.bitwise_right_shift(w.view(torch.uint8).view(r, -1, 1), shifts).bitwise_and_(1)
        return bits.view(r, -1)[:, :self.k].float().mul_(-2.0).add_(1.0)


# ====================================================================== factory
def make_projector(kind: str, k: int, seed: int, param_shapes: Mapping[str, Sequence[int]],
                   keep: float | Mapping[str, float] = 1.0, block_size: int = DEFAULT_BLOCK, *,
                   s: int = 1, small_numel: int = SMALL_NUMEL, min_kept: int = MIN_KEPT) -> HashProjector:
    """A projector of gradients with the given parameter shapes (in this order) to ``k`` dims.

    ``kind``: ``"gaussian"``, ``"rademacher"`` or ``"sjlt"`` (``s`` nonzeros per column, ``s | k``).
    ``keep``: a uniform keep fraction or per-tensor keep probabilities (see
    :func:`cropi.projection.sparsify.calibrate_keep`); tensors smaller than ``small_numel`` are kept
    whole and no tensor keeps fewer than ``min_kept`` coordinates in expectation.
    """
    kw = dict(small_numel=small_numel, min_kept=min_kept)
    if kind == "sjlt":
        return SJLTProjector(k, seed, param_shapes, keep, block_size, s=s, **kw)
    if s != 1:
        raise ConfigError(f"s (nonzeros per column) applies to kind 'sjlt' only, got s={s} for {kind!r}")
    if kind == "gaussian":
        return GaussianProjector(k, seed, param_shapes, keep, block_size, **kw)
    if kind == "rademacher":
        return RademacherProjector(k, seed, param_shapes, keep, block_size, **kw)
    raise ConfigError(f"unknown projector kind {kind!r}; expected one of {', '.join(KINDS)}")
