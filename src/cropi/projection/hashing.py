"""Counter-based 64-bit hashing with torch int64 ops, and its pure-Python reference.

Every random quantity of a projector is ``hash64(salt, counter)``: the splitmix64 output function
(Steele, Lea & Flood 2014; finalizer constants of Stafford's "variant 13")

    z = salt + counter * 0x9E3779B97F4A7C15            (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9           (mod 2**64, logical shifts)
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z =  z ^ (z >> 31)

where ``salt = tensor_salt(seed, parameter name, stream)`` is computed once per tensor in Python.
torch has no uint64, so the torch version works on int64 bit patterns: multiplication wraps modulo
2**64 (two's complement), and the logical right shift is an arithmetic shift followed by a mask of
the low ``64 - s`` bits.  The result is the same bit pattern on CPU and CUDA, and equal to the
Python reference (``ref_hash64``) bit for bit; ``tests/test_projection.py`` checks this for
counters beyond 2**31 and 2**40.
"""

from __future__ import annotations

import hashlib

import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB

# Streams: independent random functions drawn from one (seed, name).
STREAM_KEEP = 1  # high 16 bits of the keep lane
STREAM_KEEP_LO = 4  # low 16 bits (only looked at on a tie of the high bits)
STREAM_GAUSSIAN = 2
STREAM_RADEMACHER = 3
STREAM_SJLT = 16  # + j for the j-th of s nonzeros per column


def to_signed(u: int) -> int:
    """The int64 value with the bit pattern of the unsigned 64-bit ``u``."""
    u &= MASK64
    return u - (1 << 64) if u >> 63 else u


def to_unsigned(v: int) -> int:
    return v & MASK64


# ----------------------------------------------------------------------------- pure Python reference
def ref_mix64(z: int) -> int:
    """splitmix64 finalizer on a Python int (reference)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def ref_hash64(salt: int, counter: int) -> int:
    """``mix64(salt + counter * GOLDEN)`` as an unsigned 64-bit Python int (reference)."""
    return ref_mix64((salt + counter * GOLDEN) & MASK64)


def name_hash64(name: str) -> int:
    """A stable 64-bit hash of a parameter name (BLAKE2b of its UTF-8 bytes)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"cropi.proj.name").digest()
    return int.from_bytes(digest, "little")


def tensor_salt(seed: int, name: str, stream: int) -> int:
    """The 64-bit salt of one (seed, parameter name, stream); unsigned Python int."""
    s = ref_mix64((seed & MASK64) * GOLDEN + stream)
    return ref_mix64(s ^ name_hash64(name) ^ (stream * MIX2))


# ----------------------------------------------------------------------------- torch
_LOW = {s: (1 << (64 - s)) - 1 for s in (8, 30, 27, 31, 40)}
_MIX1_S = to_signed(MIX1)
_MIX2_S = to_signed(MIX2)
_GOLDEN_S = to_signed(GOLDEN)


def lsr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns by a constant ``0 < s < 64``."""
    return torch.bitwise_right_shift(z, s).bitwise_and_((1 << (64 - s)) - 1)


def _xorshift_(z: torch.Tensor, s: int, tmp: torch.Tensor) -> None:
    torch.bitwise_right_shift(z, s, out=tmp)
    tmp.bitwise_and_(_LOW[s])
    z.bitwise_xor_(tmp)


def mix64_(z: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """In-place splitmix64 finalizer on an int64 tensor (``tmp``: optional scratch of the same shape)."""
    if tmp is None:
        tmp = torch.empty_like(z)
    _xorshift_(z, 30, tmp)
    z.mul_(_MIX1_S)
    _xorshift_(z, 27, tmp)
    z.mul_(_MIX2_S)
    _xorshift_(z, 31, tmp)
    return z


def hash64(salt: int, counters: torch.Tensor) -> torch.Tensor:
    """``hash64(salt, c)`` for every int64 counter in ``counters`` (any shape); int64 bit patterns."""
    if counters.dtype != torch.int64:
        raise TypeError("counters must be int64")
    z = counters.mul(_GOLDEN_S).add_(to_signed(salt))
    return mix64_(z)


class CounterCache:
    """Per-device cache of ``arange(n) * GOLDEN`` (int64, wrapped), so hashing a contiguous counter range
    ``[c0, c0 + n)`` is one add plus the finalizer.  Its size is bounded by the largest block (never d)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int | None], torch.Tensor] = {}

    def golden_steps(self, n: int, device: torch.device) -> torch.Tensor:
        key = (device.type, device.index)
        t = self._cache.get(key)
        if t is None or t.numel() < n:
            size = max(n, 1024)
            t = torch.arange(size, dtype=torch.int64, device=device).mul_(_GOLDEN_S)
            self._cache[key] = t
        return t[:n]

    def hash_range(self, salt: int, c0: int, n: int, device: torch.device,
                   out: torch.Tensor | None = None, tmp: torch.Tensor | None = None) -> torch.Tensor:
        """``hash64(salt, c)`` for ``c`` in ``[c0, c0 + n)``; ``c0`` may exceed 2**31 (Python int)."""
        base = to_signed(salt + c0 * GOLDEN)
        steps = self.golden_steps(n, device)
        if out is None:
            z = steps.add(base)
        else:
            z = torch.add(steps, base, out=out[:n])
        return mix64_(z, None if tmp is None else tmp[:n])


_COUNTERS = CounterCache()


def hash_range(salt: int, c0: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``hash64(salt, c)`` for the counters ``c0, c0 + 1, ..., c0 + n - 1``."""
    return _COUNTERS.hash_range(salt, c0, n, torch.device(device))
