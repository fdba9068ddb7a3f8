"""Choosing which parameters' gradients are projected (glob patterns on parameter names)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

import torch


def _patterns(p: str | Iterable[str] | None) -> list[str] | None:
    if p is None:
        return None
    if isinstance(p, str):
        return [p]
    return list(p)


def select_params(names: Iterable[str], include: str | Iterable[str] | None = None,
                  exclude: str | Iterable[str] | None = None) -> list[str]:
    """The names (in their given order) that match any ``include`` glob (all when ``None``) and no
    ``exclude`` glob.  Matching is case-sensitive ``fnmatch`` on the full name, e.g.
    ``exclude=["*embed_tokens*", "lm_head*"]`` or ``include="*lora*"``."""
    inc, exc = _patterns(include), _patterns(exclude) or []
    out = []
    for name in names:
        if inc is not None and not any(fnmatchcase(name, p) for p in inc):
            continue
        if any(fnmatchcase(name, p) for p in exc):
            continue
        out.append(name)
    return out


def param_shapes_of(params: torch.nn.Module | Mapping[str, torch.Tensor],
                    include: str | Iterable[str] | None = None,
                    exclude: str | Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a module's trainable parameters (or of a name -> tensor mapping), filtered
    by :func:`select_params`; the order is the module's parameter order."""
    if isinstance(params, torch.nn.Module):
        items = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    else:
        items = list(params.items())
    keep = set(select_params([n for n, _ in items], include, exclude))
    return {n: tuple(int(s) for s in p.shape) for n, p in items if n in keep}
