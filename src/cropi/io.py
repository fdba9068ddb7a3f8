"""Atomic file writes and versioned JSON.  Every write goes to a temporary name in the same folder and is
renamed into place, so a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cropi import SCHEMA_VERSION

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give the final file the usual umask permissions
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write ``obj`` as indented JSON with a ``schema_version`` field (added first if missing)."""
    payload = {"schema_version": SCHEMA_VERSION, **obj}
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file cropi wrote; a damaged one is one ``DataError`` line naming the file and the line."""
    from cropi.errors import DataError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise DataError(str(path), line, f"damaged JSON ({getattr(exc, 'msg', exc)}); it was cut short or edited: "
                        "rerun the command that wrote it in a new output folder") from None


def append_jsonl(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Append one JSON line (metrics logs).  A torn last line is tolerated by ``read_jsonl``."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj) + "\n")
        fh.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # torn final line from an interrupted run
    return rows


# -- damaged files ---------------------------------------------------------------------------------------------
# Every chunk is renamed into place whole, so damage comes from outside (a full disk, a copy cut short, a
# hand edit).  Resumable jobs check what they would skip and recompute it; readers stop with one line.

log = logging.getLogger("cropi")


def parquet_damage(path: str | os.PathLike, expected_rows: int | None = None) -> str | None:
    """Why the Parquet file at ``path`` cannot be read whole (``None`` when it can, with ``expected_rows`` rows)."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).num_rows
    except Exception as exc:  # pyarrow raises several types for a cut or overwritten file
        return f"{type(exc).__name__}: {first_line(exc)}"
    if expected_rows is not None and rows != expected_rows:
        return f"{rows} rows, expected {expected_rows}"
    return None


def chunk_is_done(path: str | os.PathLike, expected_rows: int | None = None) -> bool:
    """A resumable job's test for a chunk it would skip: present and readable.  A damaged one is reported in
    one line and left to be recomputed (chunks are deterministic, so the result equals an undamaged run)."""
    if not Path(path).exists():
        return False
    reason = parquet_damage(path, expected_rows)
    if reason is None:
        return True
    log.warning("%s is damaged (%s); recomputing it", path, reason)
    return False


def table_bits(table) -> bytes:
    """An Arrow table's data as Arrow IPC bytes, schema metadata dropped: equal bytes mean bit-identical columns
    (how sharded, resumed and Ray runs are compared with a single process)."""
    import pyarrow as pa

    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def first_line(exc: BaseException) -> str:
    """An exception's first message line (its type name when it has no message): for one-line errors."""
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_parquet(path: str | os.PathLike, remedy: str, columns: list[str] | None = None):
    """``pq.read_table``, with a damaged file reported as one ``DataError`` line naming it and ``remedy``."""
    import pyarrow.parquet as pq

    from cropi.errors import DataError

    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:
        raise DataError(str(path), None, f"damaged or unreadable Parquet file ({first_line(exc)}); {remedy}") from None
