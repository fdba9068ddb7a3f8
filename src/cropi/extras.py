"""Optional engines.  Each lives behind an extra (``pip install 'cropi[NAME]'``); the embedded CPU path never
imports them.  ``require`` turns a missing engine into one user-facing line naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from cropi.errors import CropiError


class MissingExtra(CropiError):
    """An optional engine is not installed.  The message names the extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtra`` saying which extra ``purpose`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{purpose} needs the {extra!r} extra ({module} is not importable: {exc}); "
                           f"install it with: pip install 'cropi[{extra}]'") from None
