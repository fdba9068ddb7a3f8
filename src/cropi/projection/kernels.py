"""Fused CPU kernel for the SJLT: hash and scatter in one pass (optional numba backend).

The torch path of ``SJLTProjector`` computes a block's ``hash64`` words with about a dozen separate
elementwise passes and then scatters with ``bincount``; most of its time is spent writing and re-reading
those int64 temporaries.  This kernel computes the same splitmix64 word in registers and adds the four (or
two) coordinates it covers straight into the accumulator, so the gradient is read once and nothing else
of size d is touched (single-threaded; ``lab/results/projection.md`` has its speed).  The random map is bit-for-bit the one of ``cropi.projection.hashing``
(the tests check both backends against the pure-Python reference); only the fp32 summation order differs
from the torch path (sums per slot in coordinate order here, per-block partial sums there).

numba is optional (``pip install cropi[fast]``).  Without it, or with ``CROPI_PROJECTION_BACKEND=torch``,
the torch path runs; CUDA tensors always take the torch path (its elementwise ops are cheap there).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import ConfigError
from .hashing import GOLDEN, MIX1, MIX2

BACKEND_ENV = "CROPI_PROJECTION_BACKEND"  # "auto" (default), "numba" or "torch"

_KERNELS: dict | None = None
_UNAVAILABLE: str | None = None


def _build() -> dict:
    from numba import njit, uint64

    golden, mix1, mix2 = uint64(GOLDEN), uint64(MIX1), uint64(MIX2)
    s30, s27, s31 = uint64(30), uint64(27), uint64(31)

    @njit(cache=True, nogil=True)
    def _word(salt, counter):
        z = salt + counter * golden  # wraps modulo 2**64, like the torch int64 path
        z = (z ^ (z >> s30)) * mix1
        z = (z ^ (z >> s27)) * mix2
        return z ^ (z >> s31)

    @njit(cache=True, nogil=True)
    def sjlt_accumulate(x, salt, word0, bits, mask, acc):
        """``acc[lane(i) & mask] += x[i]`` for the coordinates of ``x``; coordinate ``i`` reads the
        ``bits``-wide lane ``i mod (64/bits)`` of ``hash64(salt, word0 + i // (64/bits))``."""
        n = x.shape[0]
        # the lanes are unrolled by hand: a generic `for t in range(64 // bits)` inner loop measured 1.5x slower
        if bits == 16:
            full = n >> 2
            for j in range(full):
                z = _word(salt, word0 + uint64(j))
                b = 4 * j
                acc[z & mask] += x[b]
                acc[(z >> uint64(16)) & mask] += x[b + 1]
                acc[(z >> uint64(32)) & mask] += x[b + 2]
                acc[(z >> uint64(48)) & mask] += x[b + 3]
            rest, per = n - 4 * full, 4
        else:
            full = n >> 1
            for j in range(full):
                z = _word(salt, word0 + uint64(j))
                b = 2 * j
                acc[z & mask] += x[b]
                acc[(z >> uint64(32)) & mask] += x[b + 1]
            rest, per = n - 2 * full, 2
        if rest:
            z = _word(salt, word0 + uint64(full))
            for t in range(rest):
                acc[(z >> uint64(bits * t)) & mask] += x[per * full + t]

    # compile now (or load numba's on-disk cache), so a numba that cannot compile falls back here, not mid-run
    sjlt_accumulate(np.zeros(5, np.float32), uint64(1), uint64(0), 16, uint64(3), np.zeros(4, np.float32))
    return {"sjlt_accumulate": sjlt_accumulate}


def numba_kernels() -> dict | None:
    """The compiled kernels, or None when numba is missing or switched off (``CROPI_PROJECTION_BACKEND``)."""
    global _KERNELS, _UNAVAILABLE
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "numba", "torch"):
        raise ConfigError(f"{BACKEND_ENV}={choice!r}: expected auto, numba or torch")
    if choice == "torch":
        return None
    if _KERNELS is None and _UNAVAILABLE is None:
        try:
            _KERNELS = _build()
        except ImportError as exc:
            _UNAVAILABLE = f"numba is not installed ({exc}); `pip install cropi[fast]` for the fused CPU kernel"
        except Exception as exc:  # numba present but unable to compile here: the torch path still works
            _UNAVAILABLE = f"numba could not compile the kernel ({type(exc).__name__}: {exc})"
            warnings.warn(f"cropi.projection: {_UNAVAILABLE}; using the torch path", RuntimeWarning, stacklevel=2)
    if _KERNELS is None and choice == "numba":
        raise RuntimeError(f"{BACKEND_ENV}=numba but {_UNAVAILABLE}")
    return _KERNELS


def backend_name() -> str:
    """``"numba"`` when the fused CPU kernel is in use, else ``"torch"``."""
    return "numba" if numba_kernels() is not None else "torch"


def sjlt_accumulate(x: np.ndarray, salt: int, word0: int, bits: int, mask: int, acc: np.ndarray) -> None:
    """Add one contiguous fp32 run of coordinates into ``acc`` (fp32, the fused ``2 row + neg`` slots)."""
    kernels = numba_kernels()
    assert kernels is not None
    kernels["sjlt_accumulate"](x, np.uint64(salt), np.uint64(word0), bits, np.uint64(mask), acc)
