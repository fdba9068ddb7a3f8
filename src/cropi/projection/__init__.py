"""Random projection of per-prompt gradients to k dims, preserving inner products (sparse JL).

Public API::

    make_projector(kind, k, seed, param_shapes, keep=1.0, block_size=DEFAULT_BLOCK, *, s=1,
                   small_numel=SMALL_NUMEL, min_kept=MIN_KEPT) -> Projector
    Projector.k; Projector.project(grads) -> Tensor[k]; Projector.project_batch(grads) -> Tensor[B, k]
    select_params(names, include=None, exclude=None) -> list[str]
    param_shapes_of(module_or_tensors, include=None, exclude=None) -> dict[str, tuple]
    calibrate_keep(calibration, param_shapes, budget, *, batched=False, ...) -> dict[str, float]
    resolve_keep(param_shapes, keep, ...) -> dict[str, float]

``naive.naive_sjlt`` is a benchmark baseline; ``reference`` defines every entry in pure Python.
"""

from .hashing import hash64, hash_range, ref_hash64, tensor_salt
from .params import param_shapes_of, select_params
from .projectors import (DEFAULT_BLOCK, KINDS, GaussianProjector, HashProjector, Projector,
                         RademacherProjector, SJLTProjector, make_projector)
from .sparsify import MIN_KEPT, SMALL_NUMEL, calibrate_keep, resolve_keep

__all__ = [
    "DEFAULT_BLOCK", "KINDS", "MIN_KEPT", "SMALL_NUMEL",
    "Projector", "HashProjector", "SJLTProjector", "GaussianProjector", "RademacherProjector",
    "make_projector", "select_params", "param_shapes_of", "calibrate_keep", "resolve_keep",
    "hash64", "hash_range", "ref_hash64", "tensor_salt",
]
