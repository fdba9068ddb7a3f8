"""Plain data (parsed YAML, ``key=value`` strings) to typed dataclasses and back: each value is coerced to its
field's annotation, and a bad value or unknown key fails with its dotted key (``InvalidValue``).  ``cropi.config``
declares the run configuration with it."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from cropi.errors import ConfigError


class InvalidValue(ConfigError):
    """A bad value or unknown key at ``key`` (dotted); the loader prefixes the file line it came from."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"{key}: {problem}")


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(x) for x in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the annotated type ``tp``."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InvalidValue(where, f"expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is type(None) or tp is type(None):
        return None
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value else []
        if not isinstance(value, (list, tuple)):
            raise InvalidValue(where, f"expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and len(value) != len(args):
            raise InvalidValue(where, f"expected {len(args)} values, got {value!r}")
        elem = args[0] if args else Any
        out = [coerce(elem, v, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise InvalidValue(where, f"expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (Any, Any)
        return {k: coerce(vt, v, where) for k, v in value.items()}
    args = get_args(tp)
    if args:  # Optional / Union: None or the first non-None type that accepts the value
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, where)
            except InvalidValue as e:
                errors.append(e)
        raise errors[0] if errors else InvalidValue(where, f"bad value {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise InvalidValue(where, f"expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(float(value)) if tp is int else float(value)
        except (TypeError, ValueError):
            raise InvalidValue(where, f"expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise InvalidValue(where, f"expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise InvalidValue(f"{where}.{unknown[0]}" if where else str(unknown[0]),
                           f"unknown key (known: {', '.join(names)})")
    kwargs = {k: coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)
