"""The gradient store: projected POPI gradients (k fp32 numbers per prompt) of one policy on one trajectory
store, on disk, chunked, resumable and shardable by prompt ranges (docs/method.md §2–3).  This module only
persists: ``scores.engine`` computes the vectors and hands them over chunk by chunk.

Layout of a store folder::

    meta.json                 what produced it (schema_version, projector spec, model and tokenizer
                              fingerprints, stage, POPI options, the trajectory store's meta, the prompt
                              range [start, end) and the chunk size); counts once complete
    chunk-NNNNNN.parquet      prompts [N·C, (N+1)·C) ∩ [start, end) of the trajectory store's prompt order

One row per prompt: position (in the trajectory store's order), prompt_id, stage, usable, norm (of the
projected vector), grad_norm (exact ‖g_x‖ over the projected parameters), ess, max_abs_log_ratio, vector
(fixed-size list of k float32; null for zero-variance groups, which have g_x = 0 and are never stored as
zero vectors).

Chunks sit on a grid fixed by the chunk size (not by the range), each written under a temporary name and
renamed, and a chunk's result depends only on its own prompts (the engine forms micro-batches inside a chunk).  So a
rerun after an interruption keeps the finished chunks and computes the rest, and shards [0, a), [a, b), [b, n)
with chunk-aligned a, b hold exactly the chunks of one whole store — bit for bit, at a fixed thread count and
batch size.  Only one chunk of vectors and one trajectory part are in memory at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from cropi.errors import CropiError
from cropi.io import atomic_path, chunk_is_done, read_json, read_parquet, write_json

FORMAT = "cropi-gradient-store"
IDENTITY = ("format", "projector", "model_fingerprint", "tokenizer_fingerprint", "stage", "popi",
            "trajectory_store", "start", "end", "chunk_size")
"""meta.json keys that must agree before a rerun may continue a store (start/end: a shard is one range)."""


def index_schema(k: int) -> pa.Schema:
    return pa.schema([
        ("position", pa.int64()),
        ("prompt_id", pa.string()),
        ("stage", pa.int32()),
        ("usable", pa.bool_()),
        ("norm", pa.float32()),
        ("grad_norm", pa.float64()),
        ("ess", pa.float64()),
        ("max_abs_log_ratio", pa.float64()),
        ("vector", pa.list_(pa.float32(), k)),
    ])


def _chunk_path(folder: Path, chunk: int) -> Path:
    return folder / f"chunk-{chunk:06d}.parquet"


def chunks_of(start: int, end: int, chunk_size: int) -> range:
    """Indices of the grid chunks that prompts [start, end) touch."""
    return range(start // chunk_size, -(-end // chunk_size)) if end > start else range(0)


def shard_range(num_prompts: int, chunk_size: int, index: int, num_shards: int) -> tuple[int, int]:
    """Prompt range [start, end) of shard ``index`` of ``num_shards``: contiguous runs of whole chunks."""
    if not 0 <= index < num_shards:
        raise CropiError(f"shard {index}/{num_shards}: expected 0 <= I < N")
    n_chunks = -(-num_prompts // chunk_size)
    c0, c1 = index * n_chunks // num_shards, (index + 1) * n_chunks // num_shards
    return min(c0 * chunk_size, num_prompts), min(c1 * chunk_size, num_prompts)


def _identity_mismatch(folder: Path, old: dict, new: dict, skip: Sequence[str] = ()) -> None:
    for key in IDENTITY:
        if key in skip or old.get(key) == new.get(key):
            continue
        if key == "projector":
            said = lambda p: {k: p.get(k) for k in ("kind", "k", "seed", "dim")} if p else p  # noqa: E731
            what = f"another projector ({said(old.get(key))} != {said(new.get(key))}, or other parameters)"
        elif key == "trajectory_store":
            what = "another trajectory store"
        elif key == "model_fingerprint":
            what = f"another model ({old.get('model')!r}, weights {old.get(key)} != {new.get(key)})"
        elif key == "tokenizer_fingerprint":
            what = f"another tokenizer ({old.get(key)} != {new.get(key)})"
        else:
            what = f"{key}={old.get(key)!r}, this run has {new.get(key)!r}"
        raise CropiError(f"{folder / 'meta.json'}: existing gradient store was made with {what}; "
                         "use another gradients folder or delete this one")


@dataclass
class ChunkRows:
    """One chunk's rows as the engine computed them: every member prompt, in position order, with a vector
    (and its statistics) for the usable ones and None for the zero-variance ones."""

    positions: list[int]
    prompt_ids: list[str]
    vectors: list[np.ndarray | None]  # [k] float32, or None (g_x = 0: never stored as a zero vector)
    grad_norm: list[float | None]
    ess: list[float | None]
    max_abs_log_ratio: list[float | None]
    stage: int = 0


@dataclass
class GradientStoreWriter:
    """A store folder open for writing: ``identity`` (see ``IDENTITY``) is checked against an existing
    ``meta.json`` (resume) or written as a new one.  ``has_chunk`` tells what is already done."""

    folder: Path
    identity: dict
    _meta: dict = field(init=False)

    def __post_init__(self):
        self.folder = Path(self.folder)
        meta = self.identity
        n, start, end, C = meta["num_prompts"], meta["start"], meta["end"], meta["chunk_size"]
        if not (0 <= start <= end <= n) or start % C:
            raise CropiError(f"prompt range {start}:{end}: expected 0 <= START <= END <= {n} with START a multiple "
                             f"of the chunk size {C}")
        path = self.folder / "meta.json"
        if path.exists():
            old = read_json(path)
            _identity_mismatch(self.folder, old, meta)
            meta = {**old, **{k: meta[k] for k in ("model", "trajectory_store_path")}}
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(path, meta)
        self._meta = meta

    @property
    def k(self) -> int:
        return int(self.identity["k"])

    def has_chunk(self, chunk: int) -> bool:
        """Done and readable; a damaged chunk is reported and left to be recomputed."""
        m = self._meta
        C = m["chunk_size"]
        rows = min((chunk + 1) * C, m["end"]) - max(chunk * C, m["start"])
        return chunk_is_done(_chunk_path(self.folder, chunk), rows)

    def write_chunk(self, chunk: int, rows: ChunkRows) -> None:
        k = self.k
        flat = np.zeros((len(rows.positions), k), dtype=np.float32)
        norm: list[float | None] = []
        for i, v in enumerate(rows.vectors):
            if v is not None:
                flat[i] = v
            norm.append(None if v is None else float(torch.from_numpy(flat[i]).norm()))
        mask = pa.array([v is None for v in rows.vectors])
        vector = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), k, mask=mask)
        table = pa.table({
            "position": rows.positions,
            "prompt_id": rows.prompt_ids,
            "stage": [rows.stage] * len(rows.positions),
            "usable": [v is not None for v in rows.vectors],
            "norm": norm,
            "grad_norm": rows.grad_norm,
            "ess": rows.ess,
            "max_abs_log_ratio": rows.max_abs_log_ratio,
            "vector": vector,
        }, schema=index_schema(k))
        with atomic_path(_chunk_path(self.folder, chunk)) as tmp:
            pq.write_table(table, tmp)

    def finish(self) -> Path:
        """Mark the store complete, with its usable / zero-variance counts."""
        meta = self._meta
        usable = total = 0
        for c in chunks_of(meta["start"], meta["end"], meta["chunk_size"]):
            col = read_parquet(_chunk_path(self.folder, c), "rerun the `cropi score` command that made this store to recompute it", columns=["usable"]).column("usable")
            usable += int(pc.sum(col).as_py() or 0)
            total += len(col)
        write_json(self.folder / "meta.json", {**{k: v for k, v in meta.items() if k != "schema_version"},
                                               "complete": True, "usable": usable, "zero_variance": total - usable})
        return self.folder


def check_same_run(folder: str | Path, expected: dict) -> None:
    """Refuse (``CropiError``) a store at ``folder`` whose model, tokenizer, projector, stage, POPI options or
    trajectory store differ from ``expected`` (its prompt range may differ: shards)."""
    _identity_mismatch(Path(folder), gradient_store_meta(folder), expected, skip=("start", "end"))


# ---------------------------------------------------------------------------- reading
def gradient_store_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    if not path.exists():
        raise CropiError(f"{path}: no gradient store here (run `cropi score --gradients DIR` first)")
    meta = read_json(path)
    if meta.get("format") != FORMAT:
        raise CropiError(f"{path}: not a cropi gradient store")
    return meta


def open_gradient_stores(folders: str | Path | Sequence[str | Path], require_whole: bool = False) -> list[tuple[Path, dict]]:
    """The stores (shards) in prompt order, checked to be compatible, disjoint, contiguous and complete."""
    if isinstance(folders, (str, Path)):
        folders = [folders]
    stores = sorted(((Path(f), gradient_store_meta(f)) for f in folders), key=lambda x: x[1]["start"])
    if not stores:
        raise CropiError("no gradient store given")
    first_dir, first = stores[0]
    for folder, meta in stores:
        for key in IDENTITY:
            if key not in ("start", "end") and meta.get(key) != first.get(key):
                raise CropiError(f"{folder}: shard differs from {first_dir} in {key}; shards must come from one run")
        missing = [c for c in chunks_of(meta["start"], meta["end"], meta["chunk_size"])
                   if not _chunk_path(folder, c).exists()]
        if missing:
            raise CropiError(f"{_chunk_path(folder, missing[0])}: gradient store is incomplete ({len(missing)} chunks "
                             "missing); rerun the same command to resume it")
    for (a_dir, a), (b_dir, b) in zip(stores, stores[1:]):
        if a["end"] != b["start"]:
            what = "overlap" if a["end"] > b["start"] else "leave a gap"
            raise CropiError(f"{a_dir} [{a['start']}, {a['end']}) and {b_dir} [{b['start']}, {b['end']}) {what}")
    if require_whole and (first["start"] != 0 or stores[-1][1]["end"] != first["num_prompts"]):
        raise CropiError(f"gradient stores cover prompts [{first['start']}, {stores[-1][1]['end']}) of "
                         f"{first['num_prompts']}; project the missing range first")
    return stores


def _vectors(table: pa.Table, k: int) -> torch.Tensor:
    usable = table.filter(table.column("usable")).column("vector").combine_chunks()
    values = usable.flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(-1, k))


def iter_gradient_chunks(folders: str | Path | Sequence[str | Path],
                         require_whole: bool = False) -> Iterator[tuple[pa.Table, torch.Tensor]]:
    """(index rows of one chunk without the vectors, [usable rows, k] vectors) in prompt order: scoring streams
    through a pool with one chunk in memory."""
    for folder, meta in open_gradient_stores(folders, require_whole):
        for c in chunks_of(meta["start"], meta["end"], meta["chunk_size"]):
            table = read_parquet(_chunk_path(folder, c), "rerun the `cropi score` command that made this store to recompute it")
            yield table.drop_columns(["vector"]), _vectors(table, meta["k"])


@dataclass
class ProjectedGradients:
    """One or several stores read as one: ``index`` has a row per prompt (pool order), ``vectors`` a row per
    usable prompt (the index rows with usable = True, in the same order)."""

    index: pa.Table
    vectors: torch.Tensor
    meta: dict  # the first store's meta, with start / end of the union


def read_gradient_store(folders: str | Path | Sequence[str | Path], require_whole: bool = False) -> ProjectedGradients:
    stores = open_gradient_stores(folders, require_whole)
    k = stores[0][1]["k"]
    parts = list(iter_gradient_chunks([f for f, _ in stores]))
    index = pa.concat_tables([t for t, _ in parts]) if parts else index_schema(k).empty_table().drop_columns(["vector"])
    vectors = torch.cat([v for _, v in parts]) if parts else torch.zeros(0, k)
    meta = {**stores[0][1], "start": stores[0][1]["start"], "end": stores[-1][1]["end"]}
    return ProjectedGradients(index, vectors, meta)
