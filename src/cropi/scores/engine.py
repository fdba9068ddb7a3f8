"""Score a pool with the current policy: POPI gradients -> sparse projection -> gradient store -> cosine to each
validation set's mean direction -> reciprocal-rank fusion.  Gradients are projected as they are computed and
streamed to gradient stores (``scores.gradient_store``), so no full gradient outlives its micro-batch and only one chunk
of k-vectors is in memory; a rerun resumes the stores.

Output (Parquet, one row per pool prompt): prompt_id, usable (False for zero-variance groups), ess,
max_abs_log_ratio, grad_norm, score_<validation set> for each set, fused_rank (1 = best; null when not selected
by RRF at ``ratio``).  File metadata carries the projector spec, the score config, the gradient stores and the
pool store's meta (with its model and tokenizer fingerprints).

Gradient folder layout: ``pool/`` (or shards ``pool-START-END/`` from ``project_pool_range``) and one
``val-<name>/`` per validation set.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from cropi import SCHEMA_VERSION
from cropi.config import ScoreConfig
from cropi.errors import CropiError
from cropi.io import atomic_path
from cropi.policy import Policy, model_fingerprint, tokenizer_fingerprint
from cropi.projection import HashProjector, make_projector, param_shapes_of
from cropi.rollouts.trajectory_store import store_meta
from cropi.scores.ranking import cosine_scores, mean_direction, reciprocal_rank_fusion, top_n
from cropi.scores.gradient_store import (StoreOptions, check_same_run, iter_gradient_chunks, read_gradient_store, shard_range,
                                store_identity, usable_prefix_end, write_gradient_store)


def _store_options(cfg: ScoreConfig) -> StoreOptions:
    return StoreOptions(stage=cfg.stage, chunk_size=cfg.chunk_size, batch_size=cfg.batch_size)


def _check_store(path: Path, policy: Policy) -> dict:
    meta = store_meta(path)
    tok = tokenizer_fingerprint(policy.tokenizer)  # the weights may differ from β: that is the point
    if meta.get("tokenizer_fingerprint") != tok:
        raise CropiError(f"{path / 'meta.json'}: store was made with another tokenizer "
                         f"({meta.get('tokenizer_fingerprint')} != {tok}); collect it with this model's tokenizer")
    return meta


def default_gradients_dir(out: str | Path) -> Path:
    """Where ``score_pool`` keeps its gradient stores unless told: next to the scores file."""
    out = Path(out)
    return out.with_name(out.stem + ".gradients")


def make_score_projector(policy: Policy, cfg: ScoreConfig) -> HashProjector:
    shapes = param_shapes_of(policy.model, exclude=cfg.exclude or None)
    return make_projector(cfg.kind, cfg.k, cfg.seed, shapes, keep=cfg.keep)


def project_pool_range(policy: Policy, pool_store: str | Path, gradients: str | Path, cfg: ScoreConfig = ScoreConfig(),
                       start: int = 0, end: int | None = None, shard: tuple[int, int] | None = None,
                       on_prompt: Callable[[int], None] | None = None) -> Path:
    """Project pool prompts [start, end) (or chunk-aligned shard ``(i, n)``) into ``gradients/pool-START-END``,
    resumable; ``score_pool`` with the same ``gradients`` folder then reads the shards as one store."""
    _check_store(Path(pool_store), policy)
    n = int(store_meta(pool_store)["num_prompts"])
    if shard is not None:
        start, end = shard_range(n, cfg.chunk_size, *shard)
    end = n if end is None else end
    folder = Path(gradients) / f"pool-{start:09d}-{end:09d}"
    return write_gradient_store(policy, pool_store, folder, make_score_projector(policy, cfg), _store_options(cfg),
                                start, end, on_prompts=on_prompt)


def _pool_stores(policy, pool_store, root: Path, projector, cfg, fp, on_prompt) -> list[Path]:
    shards = sorted(p for p in root.glob("pool-*") if (p / "meta.json").exists())
    if shards:  # made by project_pool_range; iter_gradient_chunks checks that they cover the pool
        expected = store_identity(policy, pool_store, projector, _store_options(cfg), fingerprint=fp)
        for shard in shards:
            check_same_run(shard, expected)
        if on_prompt:
            on_prompt(int(store_meta(pool_store)["num_prompts"]))
        return shards
    return [write_gradient_store(policy, pool_store, root / "pool", projector, _store_options(cfg),
                                 fingerprint=fp, on_prompts=on_prompt)]


def score_pool(
    policy: Policy,
    pool_store: str | Path,
    val_stores: Mapping[str, str | Path],
    out: str | Path,
    cfg: ScoreConfig = ScoreConfig(),
    on_prompt: Callable[[int], None] | None = None,
    gradients: str | Path | None = None,
) -> pa.Table:
    """Influence scores of every pool prompt for ``policy``; writes ``out`` (Parquet) and returns the table.

    Projected gradients go to gradient stores under ``gradients`` (default: ``default_gradients_dir(out)``);
    rerunning after an interruption resumes them.  A store made with another model, tokenizer or projector
    is refused with a ``CropiError``."""
    if not val_stores:
        raise CropiError("scoring needs at least one validation store")
    pool_meta = _check_store(Path(pool_store), policy)
    root = Path(gradients) if gradients is not None else default_gradients_dir(out)
    projector = make_score_projector(policy, cfg)
    fp = model_fingerprint(policy.model)  # once per run: every store of this run is checked against it
    directions = {}
    val_dirs = {}
    for name, path in val_stores.items():
        _check_store(Path(path), policy)
        end = usable_prefix_end(path, cfg.max_val_prompts)
        val_dirs[name] = write_gradient_store(policy, path, root / f"val-{name}", projector, _store_options(cfg),
                                              end=end, fingerprint=fp)
        val = read_gradient_store(val_dirs[name])
        if val.vectors.shape[0] == 0:
            raise CropiError(f"{path}: validation set {name!r} has no usable gradient "
                             "(every reward group has zero variance); sample more responses or easier prompts")
        directions[name] = mean_direction(val.vectors[:cfg.max_val_prompts])
    pool_dirs = _pool_stores(policy, pool_store, root, projector, cfg, fp, on_prompt)
    columns: dict[str, list] = {"prompt_id": [], "usable": [], "ess": [], "max_abs_log_ratio": [], "grad_norm": []}
    per_set: dict[str, dict[str, float]] = {name: {} for name in directions}
    for index, vectors in iter_gradient_chunks(pool_dirs, require_whole=True):
        for key in columns:
            columns[key] += index.column(key).to_pylist()
        ids = index.filter(index.column("usable")).column("prompt_id").to_pylist()
        for name, d in directions.items():
            per_set[name].update(zip(ids, cosine_scores(vectors, d).tolist() if ids else []))
    all_ids = columns["prompt_id"]
    for name in directions:
        columns[f"score_{name}"] = [per_set[name].get(p) for p in all_ids]
    fused = reciprocal_rank_fusion(per_set, top_n(len(all_ids), cfg.ratio))
    rank = {p: i + 1 for i, p in enumerate(fused)}
    columns["fused_rank"] = [rank.get(p) for p in all_ids]
    table = pa.table(columns)
    meta = {"schema_version": SCHEMA_VERSION, "projector": projector.spec(), "score_config": asdict(cfg),
            "pool_store": pool_meta, "policy": policy.name, "model_fingerprint": fp,
            "tokenizer_fingerprint": tokenizer_fingerprint(policy.tokenizer),
            "gradients": {"pool": [str(p) for p in pool_dirs], **{f"val-{k}": str(v) for k, v in val_dirs.items()}}}
    with atomic_path(out) as tmp:
        pq.write_table(table.replace_schema_metadata({b"cropi": json.dumps(meta, default=str).encode()}), tmp)
    return table


def selected_ids(scores: pa.Table) -> list[str]:
    """The ids chosen by reciprocal-rank fusion, best first."""
    rows = [(r, p) for p, r in zip(scores.column("prompt_id").to_pylist(), scores.column("fused_rank").to_pylist())
            if r is not None]
    return [p for _, p in sorted(rows)]
