"""The gradient store: projected POPI gradients (k fp32 numbers per prompt) of one policy on one trajectory
store, on disk, chunked, resumable and shardable by prompt ranges (METHOD.md §2–3).

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
renamed, and a chunk's result depends only on its own prompts (micro-batches are formed inside a chunk).  So a
rerun after an interruption keeps the finished chunks and computes the rest, and shards [0, a), [a, b), [b, n)
with chunk-aligned a, b hold exactly the chunks of one whole store — bit for bit, at a fixed thread count and
batch size.  Only one chunk of vectors and one trajectory part are in memory at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from cropi.errors import CropiError
from cropi.gradients.popi import PromptGroup, gradient_batches, groups_from_rows
from cropi.io import atomic_path, read_json, write_json
from cropi.policy import Policy, model_fingerprint, tokenizer_fingerprint
from cropi.projection import HashProjector
from cropi.rollouts.trajectory_store import store_meta

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


# ---------------------------------------------------------------------------- the trajectory store, lazily
def iter_groups(trajectories: str | Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, PromptGroup]]:
    """(position, group) for prompts [start, end) of a trajectory store, one Parquet part in memory at a time."""
    folder = Path(trajectories)
    meta = store_meta(folder)
    n, per_part = int(meta["num_prompts"]), int(meta["chunk_size"])
    end = n if end is None else end
    for part in range(start // per_part, -(-end // per_part)):
        path = folder / f"part-{part:06d}.parquet"
        if not path.exists():
            raise CropiError(f"{path}: trajectory store is incomplete (part {part} missing); "
                             "finish `cropi collect` (rerun it to resume) before scoring")
        groups = groups_from_rows(pq.read_table(path).to_pylist())
        first = part * per_part
        expected = min(per_part, n - first)
        if len(groups) != expected:
            raise CropiError(f"{path}: holds {len(groups)} prompts, expected {expected}")
        for i, g in enumerate(groups):
            if start <= first + i < end:
                yield first + i, g


def _zero_variance(rewards: Sequence[float]) -> bool:
    return max(rewards) == min(rewards)


def usable_prefix_end(trajectories: str | Path, max_usable: int) -> int:
    """The smallest end such that prompts [0, end) hold ``max_usable`` usable groups (or the store's size);
    from the stored rewards alone, so no gradient is computed for prompts that would not be used."""
    seen = 0
    end = 0
    for pos, g in iter_groups(trajectories):
        end = pos + 1
        if not _zero_variance(g.rewards):
            seen += 1
            if seen >= max_usable:
                break
    return end


# ---------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class StoreOptions:
    stage: int = 0
    chunk_size: int = 64  # prompts per chunk file (resume unit; shard boundaries are multiples of it)
    # prompts per backward pass.  1 (the loop) by default: on the embedded tiny policy at one CPU thread batching
    # measured 0.96-0.99x the loop, on the micro test model 1.5x (benchmarks/results/per_example_grads.json)
    batch_size: int = 1
    clip_eps: float | None = None
    acg: bool = False


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


def store_identity(policy: Policy, trajectories: str | Path, projector: HashProjector,
                   options: StoreOptions = StoreOptions(), start: int = 0, end: int | None = None,
                   fingerprint: str | None = None) -> dict:
    """The meta.json a store of these inputs has (``IDENTITY`` keys decide whether two stores may mix)."""
    traj_meta = store_meta(trajectories)
    n = int(traj_meta["num_prompts"])
    return {
        "format": FORMAT,
        "projector": projector.spec(),
        "model": policy.name,
        "model_fingerprint": fingerprint or model_fingerprint(policy.model),
        "tokenizer_fingerprint": tokenizer_fingerprint(policy.tokenizer),
        "stage": options.stage,
        "popi": {"clip_eps": options.clip_eps, "acg": options.acg},
        "trajectory_store": traj_meta,
        "trajectory_store_path": str(trajectories),
        "num_prompts": n,
        "start": start,
        "end": n if end is None else end,
        "chunk_size": options.chunk_size,
        "k": projector.k,
    }


def check_same_run(folder: str | Path, expected: dict) -> None:
    """Refuse (``CropiError``) a store at ``folder`` whose model, tokenizer, projector, stage, POPI options or
    trajectory store differ from ``expected`` (its prompt range may differ: shards)."""
    _identity_mismatch(Path(folder), gradient_store_meta(folder), expected, skip=("start", "end"))


def write_gradient_store(
    policy: Policy,
    trajectories: str | Path,
    out_dir: str | Path,
    projector: HashProjector,
    options: StoreOptions = StoreOptions(),
    start: int = 0,
    end: int | None = None,
    fingerprint: str | None = None,
    on_prompts: Callable[[int], None] | None = None,
) -> Path:
    """Project g_x of prompts [start, end) of ``trajectories`` into the store ``out_dir`` (resumable).

    ``start`` must lie on the chunk grid (a multiple of ``options.chunk_size``) so that shards line up with a
    whole store; ``fingerprint`` is the policy's ``model_fingerprint`` when the caller already has it."""
    folder = Path(out_dir)
    meta = store_identity(policy, trajectories, projector, options, start, end, fingerprint)
    traj_meta, n, end, C = meta["trajectory_store"], meta["num_prompts"], meta["end"], options.chunk_size
    if not (0 <= start <= end <= n) or start % C:
        raise CropiError(f"prompt range {start}:{end}: expected 0 <= START <= END <= {n} with START a multiple "
                         f"of the chunk size {C}")
    path = folder / "meta.json"
    if path.exists():
        old = read_json(path)
        _identity_mismatch(folder, old, meta)
        meta = {**old, **{k: meta[k] for k in ("model", "trajectory_store_path")}}
    else:
        if meta["tokenizer_fingerprint"] != traj_meta.get("tokenizer_fingerprint"):
            raise CropiError(f"{Path(trajectories) / 'meta.json'}: trajectory store was made with another tokenizer "
                             f"({traj_meta.get('tokenizer_fingerprint')} != {meta['tokenizer_fingerprint']})")
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, meta)
    names = list(projector.param_shapes)
    schema = index_schema(projector.k)
    pending: list[tuple[int, PromptGroup]] = []
    current = None

    def flush():
        chunk_file = _chunk_path(folder, current)
        if not chunk_file.exists():
            table = _project_chunk(policy, pending, projector, names, options, schema)
            with atomic_path(chunk_file) as tmp:
                pq.write_table(table, tmp)
        if on_prompts:
            on_prompts(len(pending))
        pending.clear()

    for pos, group in iter_groups(trajectories, start, end):
        if current is not None and pos // C != current:
            flush()
        current = pos // C
        pending.append((pos, group))
    if pending:
        flush()
    counts = _counts(folder, start, end, C)
    write_json(path, {**{k: v for k, v in meta.items() if k != "schema_version"}, "complete": True, **counts})
    return folder


def _project_chunk(policy: Policy, members: list[tuple[int, PromptGroup]], projector: HashProjector,
                   names: list[str], options: StoreOptions, schema: pa.Schema) -> pa.Table:
    """One chunk's rows.  Usable groups are batched by packed width (less padding), a fixed function of the
    chunk's own prompts, so the chunk's bits do not depend on what else is being computed."""
    usable = [g for _, g in members if not g.zero_variance]
    usable.sort(key=lambda g: len(g.prompt_ids) + max(map(len, g.response_ids)))  # stable: ties keep order
    k = projector.k
    results: dict[str, tuple] = {}
    for gb in gradient_batches(policy.model, usable, policy.pad_token_id, names, options.clip_eps, options.acg,
                               batch_size=options.batch_size):
        vecs = projector.project_batch(gb.grads)
        sq = torch.zeros(len(gb), dtype=torch.float64)
        for g in gb.grads.values():
            sq += g.reshape(len(gb), -1).pow(2).sum(1, dtype=torch.float64).cpu()
        for b, pid in enumerate(gb.prompt_ids):
            results[pid] = (vecs[b].cpu(), float(sq[b].sqrt()), gb.ess[b], gb.max_abs_log_ratio[b])
    flat = np.zeros((len(members), k), dtype=np.float32)
    cols: dict[str, list] = {"norm": [], "grad_norm": [], "ess": [], "max_abs_log_ratio": []}
    for i, (_, g) in enumerate(members):
        r = results.get(g.prompt_id)
        if r is None:
            for c in cols.values():
                c.append(None)
            continue
        flat[i] = r[0].numpy()
        cols["norm"].append(float(r[0].norm()))
        cols["grad_norm"].append(r[1])
        cols["ess"].append(r[2])
        cols["max_abs_log_ratio"].append(r[3])
    mask = pa.array([g.prompt_id not in results for _, g in members])
    vector = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), k, mask=mask)
    return pa.table({
        "position": [p for p, _ in members],
        "prompt_id": [g.prompt_id for _, g in members],
        "stage": [options.stage] * len(members),
        "usable": [g.prompt_id in results for _, g in members],
        **cols,
        "vector": vector,
    }, schema=schema)


def _counts(folder: Path, start: int, end: int, C: int) -> dict:
    usable = total = 0
    for c in _chunks_of(start, end, C):
        col = pq.read_table(_chunk_path(folder, c), columns=["usable"]).column("usable")
        usable += int(pc.sum(col).as_py() or 0)
        total += len(col)
    return {"usable": usable, "zero_variance": total - usable}


def _chunks_of(start: int, end: int, C: int) -> range:
    return range(start // C, -(-end // C)) if end > start else range(0)


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
        missing = [c for c in _chunks_of(meta["start"], meta["end"], meta["chunk_size"])
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
        for c in _chunks_of(meta["start"], meta["end"], meta["chunk_size"]):
            table = pq.read_table(_chunk_path(folder, c))
            yield table.drop_columns(["vector"]), _vectors(table, meta["k"])


@dataclass
class ProjectedGradients:
    """One or several stores read as one: ``index`` has a row per prompt (pool order), ``vectors`` a row per
    usable prompt (the index rows with usable = True, in the same order)."""

    index: pa.Table
    vectors: torch.Tensor
    meta: dict  # the first store's meta, with start / end of the union

    @property
    def usable_ids(self) -> list[str]:
        return self.index.filter(self.index.column("usable")).column("prompt_id").to_pylist()


def read_gradient_store(folders: str | Path | Sequence[str | Path], require_whole: bool = False) -> ProjectedGradients:
    stores = open_gradient_stores(folders, require_whole)
    k = stores[0][1]["k"]
    parts = list(iter_gradient_chunks([f for f, _ in stores]))
    index = pa.concat_tables([t for t, _ in parts]) if parts else index_schema(k).empty_table().drop_columns(["vector"])
    vectors = torch.cat([v for _, v in parts]) if parts else torch.zeros(0, k)
    meta = {**stores[0][1], "start": stores[0][1]["start"], "end": stores[-1][1]["end"]}
    return ProjectedGradients(index, vectors, meta)
