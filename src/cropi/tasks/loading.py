"""Turn a ``DataConfig`` into pool, validation and test sets: the embedded suite or the user's own files."""

from __future__ import annotations

from pathlib import Path

from cropi.errors import ConfigError
from cropi.tasks.suite import Suite
from cropi.tasks.synthetic import build_suite


def _named(spec: str) -> tuple[str, str]:
    """``name=path`` or ``path`` (name = file stem)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name.strip(), path.strip()
    return Path(spec).stem, spec


def _extractor(fmt: str):
    if fmt == "plain":
        return None
    from cropi.tasks.math_data import extract_boxed, extract_gsm8k_answer

    if fmt == "gsm8k":
        return extract_gsm8k_answer
    if fmt == "boxed":
        return extract_boxed
    raise ConfigError(f"data.answer_format: unknown {fmt!r} (plain, gsm8k or boxed)")


SPLIT_OPTIONS = {"pool": "--pool FILE", "validation": "--val NAME=PATH", "test": "--test NAME=PATH"}


def load_data(cfg, need: tuple[str, ...] = ("pool", "validation", "test")) -> Suite:
    """The embedded suite, or the user's files for the splits in ``need``.

    Without any file, every split is the embedded suite's.  Once one split comes from a file, every split
    in ``need`` must: a user's pool is never steered by, or evaluated on, the synthetic sets without being
    asked (``ConfigError`` naming the missing options).  Validation and test files may be given as
    ``name=path``; a test split is *targeted* when a validation file has the same name.  Problems from
    files are graded with math-verify."""
    given = {"pool": cfg.pool_file is not None, "validation": bool(cfg.validation_files),
             "test": bool(cfg.test_files)}
    if not any(given.values()):
        return build_suite(cfg.suite)
    missing = [s for s in need if not given[s]]
    if missing:
        have = ", ".join(SPLIT_OPTIONS[s].split()[0] for s in given if given[s])
        raise ConfigError(f"{have} given, but no {' / '.join(SPLIT_OPTIONS[s] for s in missing)}: cropi would "
                          f"fall back to the embedded synthetic suite's {' and '.join(missing)} set(s); give "
                          f"{'them' if len(missing) > 1 else 'it'} too (or give no data files to run the embedded suite)")
    from cropi.tasks.readers import read_records

    base = build_suite(cfg.suite) if (cfg.pool_file is None or not cfg.validation_files or not cfg.test_files) else None
    extract = _extractor(cfg.answer_format)
    fields = dict(cfg.fields)

    def read(path: str, family: str | None = None):
        # published files (GSM8K, MATH) have no id column: such rows get "<file stem>-<0-based index, 5 digits>", the
        # same on every run and machine
        kw = {"fields": fields, "required": ("prompt", "answer")}
        if extract is not None:
            kw["answer_extractor"] = extract
        problems = read_records(path, **kw)
        if family is not None:
            from dataclasses import replace

            problems = [replace(p, family=family) for p in problems]
        return problems

    pool = read(cfg.pool_file) if cfg.pool_file else base.pool
    if cfg.validation_files:
        validation = {name: read(path, name) for name, path in map(_named, cfg.validation_files)}
    else:
        validation = base.validation
    if cfg.test_files:
        test = {name: read(path, name) for name, path in map(_named, cfg.test_files)}
    else:
        test = base.test
    targeted = [f for f in test if f in validation]
    untargeted = [f for f in test if f not in validation]
    return Suite(pool=pool, validation=validation, test=test, targeted=targeted, untargeted=untargeted)
