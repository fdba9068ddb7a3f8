"""Read and write ``Problem`` records from JSONL/JSON, Parquet and (optionally) Hugging Face datasets.

Every problem with the input is reported as a ``DataError`` naming the file, the 1-based line (JSONL) or
row (Parquet, datasets) and what is wrong, so a user can jump straight to the bad record.  Reading never
writes anything.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from cropi.errors import ConfigError, DataError
from cropi.io import atomic_path
from cropi.tasks.problem import Problem

PROBLEM_FIELDS = ("id", "prompt", "answer", "family", "source", "difficulty", "metadata")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
HF_PREFIX = "hf://"

# A field maps to one source column, or to several tried in order (the first one present wins).
FieldSpec = str | Sequence[str]


def read_records(
    path: str | os.PathLike,
    fields: Mapping[str, FieldSpec] | None = None,
    *,
    required: Sequence[str] = ("id", "prompt", "answer"),
    answer_extractor: Callable[[str], str | None] | None = None,
    family: str | None = None,
    id_prefix: str | None = None,
) -> list[Problem]:
    """Load problems from ``path`` (``.jsonl``/``.json``, ``.parquet``, a saved ``datasets`` folder or
    ``hf://name:split``).

    ``fields`` maps a Problem field to the source column(s) holding it, e.g. ``{"prompt": "question"}``;
    unmapped fields are looked up under their own name.  ``prompt`` and ``answer`` are always needed;
    other fields in ``required`` must be present too.  Without an ``id`` (allowed only when ``"id"`` is
    not required) the id is ``<id_prefix or file stem>-<0-based index, zero-padded to 5 digits>``.  ``family`` defaults to the
    ``family`` argument, else the file stem; ``source`` defaults to the path.  ``answer_extractor`` turns
    the raw answer (e.g. a worked solution) into the gold answer; the raw text is then kept in
    ``metadata["solution"]``.  Source columns not mapped to a field are kept in ``metadata``.
    """
    spec = str(path)
    mapping = _column_mapping(fields)
    bad_required = [f for f in required if f not in PROBLEM_FIELDS]
    if bad_required:
        raise ConfigError(f"unknown required field(s) {bad_required}; known: {list(PROBLEM_FIELDS)}")

    if spec.startswith(HF_PREFIX):
        rows, stem = _hf_rows(spec), spec[len(HF_PREFIX) :].replace("/", "_").replace(":", "-")
    else:
        p = Path(spec)
        stem = p.stem
        if p.is_dir():
            rows = _hf_rows(spec)
        elif not p.exists():
            raise DataError(spec, None, "file not found")
        elif p.suffix.lower() in JSON_SUFFIXES:
            rows = _json_rows(p)
        elif p.suffix.lower() in PARQUET_SUFFIXES:
            rows = _parquet_rows(p)
        else:
            raise DataError(spec, None, f"unsupported format {p.suffix!r} (expected .jsonl, .json or .parquet)")

    ctx = _RowContext(
        path=spec,
        mapping=mapping,
        required=frozenset(required) | {"prompt", "answer"},
        extractor=answer_extractor,
        family=family or stem,
        id_prefix=id_prefix or stem,
    )
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for index, (line, row) in enumerate(rows):
        problem = ctx.to_problem(row, line, index)
        if problem.id in first_line:
            raise DataError(spec, line, f"duplicate id {problem.id!r} (first seen on line {first_line[problem.id]})")
        first_line[problem.id] = line
        problems.append(problem)
    if not problems:
        raise DataError(spec, None, "empty file: no records")
    return problems


def write_records(path: str | os.PathLike, problems: Iterable[Problem]) -> None:
    """Write problems as JSON lines (``.jsonl``/``.json``) or Parquet, atomically.

    Parquet stores ``metadata`` as a JSON string column (per-row metadata keys differ, which a struct
    column cannot hold); ``read_records`` decodes it back.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    dicts = [pr.to_dict() for pr in problems]
    if suffix in JSON_SUFFIXES:
        with atomic_path(p) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                for d in dicts:
                    fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    elif suffix in PARQUET_SUFFIXES:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = {f: [d[f] for d in dicts] for f in PROBLEM_FIELDS}
        columns["metadata"] = [json.dumps(d["metadata"], ensure_ascii=False) for d in dicts]
        schema = pa.schema(
            [(f, pa.int64() if f == "difficulty" else pa.string()) for f in PROBLEM_FIELDS]
        )
        table = pa.table(columns, schema=schema)
        with atomic_path(p) as tmp:
            pq.write_table(table, tmp)
    else:
        raise ConfigError(f"{p}: cannot write {suffix!r}; use .jsonl, .json or .parquet")


# ---------------------------------------------------------------------------------------------------
# Row sources: each yields (1-based line or row number, dict).


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    data = path.read_bytes()
    if not data.strip():
        raise DataError(str(path), None, "empty file: no records")
    if data.lstrip().startswith(b"["):
        yield from _json_array_rows(path, data)
        return
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(str(path), lineno, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        if lineno == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(str(path), lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(str(path), lineno, f"expected a JSON object, got {_type_name(obj)}")
        yield lineno, obj


def _json_array_rows(path: Path, data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    """A ``.json`` file holding one top-level array of objects; line numbers point at each element."""
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(str(path), data[: e.start].count(b"\n") + 1, "not valid UTF-8") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # e.g. JSONL whose lines are arrays: say how the file was read
            raise DataError(str(path), e.lineno, "more JSON after the array that began the file; a file that starts "
                            "with '[' is read as one array of records, JSONL needs one JSON object per line") from None
        raise DataError(str(path), e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    # Re-walk the text to learn where each element starts (json.loads does not say).
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    for obj in items:
        start = pos
        while text[start] in " \t\r\n,":
            start += 1
        line += text.count("\n", pos, start)
        _, end = decoder.raw_decode(text, start)
        if not isinstance(obj, dict):
            raise DataError(str(path), line, f"expected a JSON object, got {_type_name(obj)}")
        yield line, obj
        line += text.count("\n", start, end)
        pos = end


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(str(path), None, f"not a readable Parquet file ({e})") from None
    if table.num_rows == 0:
        raise DataError(str(path), None, "empty file: no records")
    for i, row in enumerate(table.to_pylist()):
        yield i + 1, row


def _hf_rows(spec: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of ``hf://name[:config]:split`` (via ``load_dataset``: from the local cache when the hub cannot be
    reached) or a ``save_to_disk`` folder."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            spec, None, "reading Hugging Face datasets needs the optional dependency: pip install 'cropi[datasets]'"
        ) from None
    try:
        if spec.startswith(HF_PREFIX):
            name, *rest = spec[len(HF_PREFIX) :].split(":")
            if len(rest) > 2:
                raise DataError(spec, None, "expected hf://NAME[:CONFIG]:SPLIT")
            config, split = (rest if len(rest) == 2 else [None, *rest]) if rest else (None, "train")
            ds = datasets.load_dataset(name, config, split=split)
        else:
            ds = datasets.load_from_disk(spec)
            if isinstance(ds, datasets.DatasetDict):
                if len(ds) != 1:
                    raise DataError(spec, None, f"folder holds several splits {sorted(ds)}; save one split")
                ds = next(iter(ds.values()))
    except DataError:
        raise
    except Exception as e:  # datasets raises many unrelated types for a bad name or folder
        raise DataError(spec, None, f"cannot load dataset ({type(e).__name__}: {e})") from None
    for i, row in enumerate(ds):
        yield i + 1, dict(row)


# ---------------------------------------------------------------------------------------------------
# Row -> Problem


def _column_mapping(fields: Mapping[str, FieldSpec] | None) -> dict[str, tuple[str, ...]]:
    mapping = {f: (f,) for f in PROBLEM_FIELDS}
    for key, cols in (fields or {}).items():
        if key not in PROBLEM_FIELDS:
            raise ConfigError(f"unknown Problem field {key!r} in fields; known: {list(PROBLEM_FIELDS)}")
        cols_t = (cols,) if isinstance(cols, str) else tuple(cols)
        if not cols_t or not all(isinstance(c, str) for c in cols_t):
            raise ConfigError(f"fields[{key!r}] must be a column name or a list of column names")
        mapping[key] = cols_t
    return mapping


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a float", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class _RowContext:
    """Per-file settings for converting rows, so the error wording lives in one place."""

    path: str
    mapping: dict[str, tuple[str, ...]]
    required: frozenset[str]
    extractor: Callable[[str], str | None] | None
    family: str
    id_prefix: str

    def _get(self, row: dict, field: str, line: int) -> tuple[str | None, Any]:
        """(column used, value) for ``field``; (None, None) when absent or null and not required."""
        cols = self.mapping[field]
        for col in cols:
            if col in row and row[col] is not None:
                return col, row[col]
        if field in self.required:
            names = " or ".join(repr(c) for c in cols)
            null = any(c in row for c in cols)
            raise DataError(self.path, line, f"{'null' if null else 'missing'} field {field!r} (column {names})")
        return None, None

    def _fail(self, line: int, field: str, col: str, what: str) -> DataError:
        where = f"field {field!r}" if col == field else f"field {field!r} (column {col!r})"
        return DataError(self.path, line, f"{where} {what}")

    def to_problem(self, row: dict[str, Any], line: int, index: int) -> Problem:
        used: set[str] = set()

        col, value = self._get(row, "id", line)
        if col is None:
            pid = f"{self.id_prefix}-{index:05d}"
        else:
            used.add(col)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise self._fail(line, "id", col, f"must be a string or integer, got {_type_name(value)}")
            pid = str(value).strip()
            if not pid:
                raise self._fail(line, "id", col, "is empty")

        col, prompt = self._get(row, "prompt", line)
        used.add(col)
        if not isinstance(prompt, str):
            raise self._fail(line, "prompt", col, f"must be a string, got {_type_name(prompt)}")
        if not prompt.strip():
            raise self._fail(line, "prompt", col, "is empty")

        col, raw_answer = self._get(row, "answer", line)
        used.add(col)
        if isinstance(raw_answer, bool) or not isinstance(raw_answer, (str, int, float)):
            raise self._fail(line, "answer", col, f"must be a string or number, got {_type_name(raw_answer)}")
        if isinstance(raw_answer, float) and not math.isfinite(raw_answer):
            raise self._fail(line, "answer", col, f"must be finite, got {raw_answer}")
        answer = str(raw_answer).strip()
        extra_meta: dict[str, Any] = {}
        if self.extractor is not None:
            try:
                extracted = self.extractor(answer)
            except Exception as e:  # a user-supplied extractor; report where it choked
                raise self._fail(line, "answer", col, f"answer extractor failed: {type(e).__name__}: {e}") from None
            if extracted is None or not str(extracted).strip():
                raise self._fail(line, "answer", col, f"has no extractable gold answer: {_clip(answer)!r}")
            extra_meta["solution"] = str(raw_answer)
            answer = str(extracted).strip()
        if not answer:
            raise self._fail(line, "answer", col, "is empty")

        texts: dict[str, str] = {}
        for field, default in (("family", self.family), ("source", self.path)):
            col, value = self._get(row, field, line)
            if col is None:
                texts[field] = default
                continue
            used.add(col)
            if not isinstance(value, str):
                raise self._fail(line, field, col, f"must be a string, got {_type_name(value)}")
            texts[field] = value

        col, difficulty = self._get(row, "difficulty", line)
        if col is None:
            difficulty = 0
        else:
            used.add(col)
            if isinstance(difficulty, float) and difficulty.is_integer():
                difficulty = int(difficulty)
            if isinstance(difficulty, bool) or not isinstance(difficulty, int):
                raise self._fail(line, "difficulty", col, f"must be an integer, got {_type_name(difficulty)}")

        col, metadata = self._get(row, "metadata", line)
        if col is None:
            metadata = {}
        else:
            used.add(col)
            if isinstance(metadata, str):  # Parquet files written by write_records
                try:
                    metadata = json.loads(metadata)
                except json.JSONDecodeError:
                    pass
            if not isinstance(metadata, dict):
                raise self._fail(line, "metadata", col, f"must be an object, got {_type_name(metadata)}")

        extras = {k: v for k, v in row.items() if k not in used}
        return Problem(
            id=pid,
            prompt=prompt,
            answer=answer,
            family=texts["family"],
            source=texts["source"],
            difficulty=difficulty,
            metadata={**extras, **metadata, **extra_meta},
        )


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
