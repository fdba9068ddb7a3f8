"""Score a pool with the current policy: POPI gradients -> sparse projection -> cosine to each validation
set's mean direction -> reciprocal-rank fusion.  Gradients are projected as they are computed, so no full
gradient is ever kept beyond one prompt, and only k floats per prompt are held.

Output (Parquet, one row per pool prompt): prompt_id, usable (False for zero-variance groups), ess,
max_abs_log_ratio, score_<validation set> for each set, fused_rank (1 = best; null when not selected by RRF
at ``ratio``).  File metadata carries the projector spec, the score config and the pool store's meta
(with its model and tokenizer fingerprints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cropi import SCHEMA_VERSION
from cropi.errors import CropiError
from cropi.gradients.popi import groups_from_rows, prompt_gradients
from cropi.io import atomic_path
from cropi.policy import Policy, tokenizer_fingerprint
from cropi.projection import make_projector, param_shapes_of
from cropi.rollouts.store import read_store, store_meta
from cropi.scores.influence import cosine_scores, mean_direction, reciprocal_rank_fusion, top_n


@dataclass
class ScoreConfig:
    # Default from the projection benchmarks (`cropi bench`, benchmarks/results/projection.md): hashed SJLT, no
    # sparsifier, k = 8192.  Real SmolLM2 POPI gradients are heavy-tailed (top 1% of coordinates: ~90% of the
    # squared norm), so masks drop mass that carries the inner product.  Probe at k = 8192, RMS error / (‖x‖‖y‖)
    # on pairs of real gradients: keep 1 0.011, calibrated 10% 0.05, uniform 10% 0.09, uniform 1% 0.55; Spearman ρ
    # of projected vs exact influence cosines (30 SmolLM2 prompts, 3 seeds): keep 1 0.990 ± 0.007 (k = 1024:
    # 0.944), calibrated 10% 0.944 ± 0.033, uniform 1% 0.81 ± 0.17.  On CPU a mask is not even cheaper (its hash
    # per coordinate costs what SJLT's does): per SmolLM2 gradient keep 1 0.36 s, uniform 1% 0.63 s, calibrated
    # 10% 1.4 s.  SJLT's cost does not depend on k, so k = 8192 (cosine noise ~1/√k ≈ 0.011, under the 0.09-0.14
    # SD of exact cosines) costs what 1024 does, plus k floats per prompt.
    kind: str = "sjlt"
    k: int = 8192
    seed: int = 0
    keep: float = 1.0
    exclude: list[str] = field(default_factory=list)  # parameter globs left out of scoring
    ratio: float = 0.1
    max_val_prompts: int = 100  # per validation set (METHOD.md §4)


def _check_store(path: Path, policy: Policy) -> dict:
    meta = store_meta(path)
    tok = tokenizer_fingerprint(policy.tokenizer)  # the weights may differ from β: that is the point
    if meta.get("tokenizer_fingerprint") != tok:
        raise CropiError(f"{path / 'meta.json'}: store was made with another tokenizer "
                         f"({meta.get('tokenizer_fingerprint')} != {tok}); collect it with this model's tokenizer")
    return meta


def _project_store(policy: Policy, path: Path, projector, limit: int | None,
                   on_prompt: Callable[[int], None] | None = None):
    groups = groups_from_rows(read_store(path).to_pylist())
    ids, vecs, ess, mlr = [], [], [], []
    skipped: list[str] = []
    names = list(projector.param_shapes)
    for pg in prompt_gradients(policy.model, groups, policy.pad_token_id, names, skipped=skipped):
        ids.append(pg.prompt_id)
        vecs.append(projector.project(pg.grads))
        ess.append(pg.ess)
        mlr.append(pg.max_abs_log_ratio)
        if on_prompt:
            on_prompt(1)
        if limit is not None and len(ids) >= limit:
            break
    if on_prompt:
        on_prompt(len(skipped))
    mat = torch.stack(vecs) if vecs else torch.zeros(0, projector.k)
    return [g.prompt_id for g in groups], ids, mat, ess, mlr


def score_pool(
    policy: Policy,
    pool_store: str | Path,
    val_stores: Mapping[str, str | Path],
    out: str | Path,
    cfg: ScoreConfig = ScoreConfig(),
    on_prompt: Callable[[int], None] | None = None,
) -> pa.Table:
    """Influence scores of every pool prompt for ``policy``; writes ``out`` (Parquet) and returns the table."""
    if not val_stores:
        raise CropiError("scoring needs at least one validation store")
    pool_meta = _check_store(Path(pool_store), policy)
    shapes = param_shapes_of(policy.model, exclude=cfg.exclude or None)
    projector = make_projector(cfg.kind, cfg.k, cfg.seed, shapes, keep=cfg.keep)
    directions = {}
    for name, path in val_stores.items():
        _check_store(Path(path), policy)
        _, ids, mat, _, _ = _project_store(policy, Path(path), projector, cfg.max_val_prompts)
        if not ids:
            raise CropiError(f"{path}: validation set {name!r} has no usable gradient "
                             "(every reward group has zero variance); sample more responses or easier prompts")
        directions[name] = mean_direction(mat)
    all_ids, ids, mat, ess, mlr = _project_store(policy, Path(pool_store), projector, None, on_prompt)
    usable = {pid: i for i, pid in enumerate(ids)}
    columns: dict[str, list] = {"prompt_id": all_ids, "usable": [p in usable for p in all_ids],
                                "ess": [ess[usable[p]] if p in usable else None for p in all_ids],
                                "max_abs_log_ratio": [mlr[usable[p]] if p in usable else None for p in all_ids]}
    per_set = {}
    for name, d in directions.items():
        s = cosine_scores(mat, d).tolist() if len(ids) else []
        per_set[name] = dict(zip(ids, s))
        columns[f"score_{name}"] = [per_set[name].get(p) for p in all_ids]
    fused = reciprocal_rank_fusion(per_set, top_n(len(all_ids), cfg.ratio))
    rank = {p: i + 1 for i, p in enumerate(fused)}
    columns["fused_rank"] = [rank.get(p) for p in all_ids]
    table = pa.table(columns)
    meta = {"schema_version": SCHEMA_VERSION, "projector": projector.spec(),
            "score_config": cfg.__dict__, "pool_store": pool_meta, "policy": policy.name}
    with atomic_path(out) as tmp:
        pq.write_table(table.replace_schema_metadata({b"cropi": json.dumps(meta, default=str).encode()}), tmp)
    return table


def selected_ids(scores: pa.Table) -> list[str]:
    """The ids chosen by reciprocal-rank fusion, best first."""
    rows = [(r, p) for p, r in zip(scores.column("prompt_id").to_pylist(), scores.column("fused_rank").to_pylist())
            if r is not None]
    return [p for _, p in sorted(rows)]
