"""The influence engine: score a pool with the current policy.

Four parts, each behind one small interface, wired together by ``score_pool``:

    estimator        gradients.popi.GradientEstimator   g_x of each usable prompt group (scores.featurize feeds it)
    projector        projection.Projector               g_x -> k numbers, linearly (sparse JL)
    gradient store   scores.gradient_store              the k numbers on disk, chunked, resumable, shardable
    scorer           scores.ranking                     cosine to each validation mean -> one fused Ranking

Two modes (``select.score.mode``):
- ``projected``: the validation means and the pool gradients are projected to k dims, and the cosine is taken
  there (error ≈ 1/√k; lab/results/projection.md).
- ``exact``: each validation set's mean gradient ḡ_v is kept whole (one d-vector per set), and each prompt's
  gradient is streamed against it: ⟨g, ḡ_v⟩ and ‖g‖ exactly, so cos(g, ḡ_v) has no projection error.  The
  "projector" is then the linear map g ↦ (⟨g, ḡ_v⟩)_v, stored like any other projection, so exact scoring
  resumes and shards the same way.  Projected gradients are still written when a ``gradients`` folder is
  given, for later reuse (another validation set, static influence).
- ``auto``: exact when the means fit in ``select.score.exact_memory_gb``, else projected.

Output (Parquet, one row per pool prompt): prompt_id, usable (False for zero-variance groups), ess,
max_abs_log_ratio, grad_norm, score_<validation set> for each set, fused_rank (1 = best; null when not chosen),
and with re-probe overlays a ``reprobed`` column.  File metadata carries the mode, projector spec, score config,
selection size, gradient stores and the pool store's meta.

Gradient folder layout: ``pool/`` (or shards ``pool-START-END/``) and ``val-<name>/`` for projected gradients;
``pool-exact/`` (or ``pool-exact-START-END/``) for exact mode's inner products; ``overlay-<i>/`` for overlays.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cropi import SCHEMA_VERSION
from cropi.config import RunConfig, ScoreConfig
from cropi.errors import CropiError
from cropi.gradients.popi import GradientBatch, GradientEstimator, make_estimator, scoring_loss
from cropi.io import atomic_path
from cropi.objective import LossSpec, loss_spec
from cropi.policy import Policy, model_fingerprint, tokenizer_fingerprint
from cropi.projection import Projector, make_projector, param_shapes_of
from cropi.projection.factored import FactoredSJLT, SketchingPopiEstimator
from cropi.scores.featurize import StoreSink, featurize
from cropi.scores.mean_dots import MeanDots
from cropi.rollouts.trajectory_store import store_meta, usable_prefix_end
from cropi.scores.gradient_store import (FORMAT, GradientStoreWriter, check_same_run,
                                         iter_gradient_chunks, read_gradient_store, shard_range)
from cropi.scores.ranking import Ranking, cosine_scores, mean_direction, rank, top_n

MODES = ("projected", "exact", "auto")


# ----------------------------------------------------------------------------- the parts
def make_score_projector(policy: Policy, cfg: ScoreConfig) -> Projector:
    shapes = param_shapes_of(policy.model, exclude=cfg.exclude or None)
    if cfg.kind == FactoredSJLT.kind:
        return FactoredSJLT(shapes, cfg.factor_k, cfg.factor_k, cfg.seed, policy.device)
    return make_projector(cfg.kind, cfg.k, cfg.seed, shapes, keep=cfg.keep)


def run_scoring_loss(cfg: RunConfig) -> LossSpec:
    """The loss a run's scoring differentiates: its trainer's, with ``select.score.clip_eps``."""
    return scoring_loss(loss_spec(cfg.train, cfg.rollout), cfg.select.score.clip_eps)


def make_score_estimator(policy: Policy, cfg: RunConfig, projector: Projector | None = None) -> GradientEstimator:
    """POPI on the trainer's own loss (aggregation and normaliser from ``train`` / ``rollout``).  With a
    ``FactoredSJLT`` ``projector`` the estimator hands over its projections only, computed inside the backward."""
    score = cfg.select.score
    if isinstance(projector, FactoredSJLT):
        return SketchingPopiEstimator(policy.model, policy.pad_token_id, projector, run_scoring_loss(cfg),
                                      acg=score.acg, batch_size=score.batch_size, memory_gb=score.factor_memory_gb)
    names = list(param_shapes_of(policy.model, exclude=score.exclude or None))
    return make_estimator(policy.model, policy.pad_token_id, run_scoring_loss(cfg), acg=score.acg, param_names=names,
                          batch_size=score.batch_size, factored=score.factored,
                          factor_memory_gb=score.factor_memory_gb)


# ----------------------------------------------------------------------------- identities and checks
def _check_store(path: Path, policy: Policy) -> dict:
    meta = store_meta(path)
    tok = tokenizer_fingerprint(policy.tokenizer)  # the weights may differ from β: that is the point
    if meta.get("tokenizer_fingerprint") != tok:
        raise CropiError(f"{path / 'meta.json'}: store was made with another tokenizer "
                         f"({meta.get('tokenizer_fingerprint')} != {tok}); collect it with this model's tokenizer")
    return meta


def _identity(policy: Policy, fingerprint: str, trajectories: str | Path, projector: Projector, cfg: RunConfig,
              start: int = 0, end: int | None = None) -> dict:
    """The meta.json a gradient store of these inputs has (``IDENTITY`` keys decide whether two may mix)."""
    traj_meta = store_meta(trajectories)
    n = int(traj_meta["num_prompts"])
    score = cfg.select.score
    return {
        "format": FORMAT,
        "projector": projector.spec(),
        "model": policy.name,
        "model_fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint(policy.tokenizer),
        "stage": score.stage,
        "popi": {"loss": asdict(run_scoring_loss(cfg)), "acg": score.acg},
        "trajectory_store": traj_meta,
        "trajectory_store_path": str(trajectories),
        "num_prompts": n,
        "start": start,
        "end": n if end is None else end,
        "chunk_size": score.chunk_size,
        "k": projector.k,
    }


def _writer(policy, fp, trajectories, folder: Path, projector, cfg, start=0, end=None) -> GradientStoreWriter:
    meta = _identity(policy, fp, trajectories, projector, cfg, start, end)
    if not (folder / "meta.json").exists() and meta["tokenizer_fingerprint"] != meta["trajectory_store"].get(
            "tokenizer_fingerprint"):
        raise CropiError(f"{Path(trajectories) / 'meta.json'}: trajectory store was made with another tokenizer "
                         f"({meta['trajectory_store'].get('tokenizer_fingerprint')} != {meta['tokenizer_fingerprint']})")
    return GradientStoreWriter(folder, meta)


def project_store(policy: Policy, trajectories: str | Path, folder: str | Path, projector: Projector, cfg: RunConfig,
                  start: int = 0, end: int | None = None, fingerprint: str | None = None,
                  on_prompts: Callable[[int], None] | None = None) -> Path:
    """Write (or resume) the gradient store of prompts [start, end) of ``trajectories`` at ``folder``: POPI
    gradients of ``policy`` projected by ``projector``.  ``start`` must lie on the chunk grid."""
    fp = fingerprint or model_fingerprint(policy.model)
    writer = _writer(policy, fp, trajectories, Path(folder), projector, cfg, start, end)
    score = cfg.select.score
    featurize(make_score_estimator(policy, cfg, projector), trajectories, [StoreSink(projector, writer)], start,
              writer.identity["end"], score.chunk_size, score.stage, on_prompts=on_prompts)
    return writer.folder


def resolve_mode(policy: Policy, cfg: ScoreConfig, n_sets: int) -> str:
    """``projected`` or ``exact``; ``auto`` is exact when the n_sets fp32 means fit in ``exact_memory_gb``."""
    if cfg.mode != "auto":
        return cfg.mode
    d = sum(math.prod(s) for s in param_shapes_of(policy.model, exclude=cfg.exclude or None).values())
    return "exact" if n_sets * d * 4 <= cfg.exact_memory_gb * 2 ** 30 else "projected"


def describe(score: ScoreConfig, mode: str) -> str:
    """What a scoring run computes, in a few words, for progress bars and summaries: the mode, the projector (or
    none), and how many prompts share a backward pass."""
    per = f"{score.batch_size} prompts per backward" if score.batch_size > 1 else "one backward per prompt"
    if mode == "projected" and score.kind == FactoredSJLT.kind:
        return f"projected factored-sjlt {score.factor_k}x{score.factor_k} per weight, {per}"
    if mode == "projected":
        return f"projected {score.kind} k={score.k}, {per}"
    return f"exact{', factored' if score.factored else ''}, {per}"


def default_gradients_dir(out: str | Path) -> Path:
    """Where ``score_pool`` keeps its stores unless told: next to the scores file."""
    out = Path(out)
    return out.with_name(out.stem + ".gradients")


# ----------------------------------------------------------------------------- validation means
def project_validation_store(policy: Policy, name: str, path: str | Path, gradients: str | Path, cfg: RunConfig,
                             projector: Projector | None = None, fingerprint: str | None = None) -> Path:
    """Write (or resume) validation set ``name``'s projected store ``gradients/val-NAME`` exactly as projected
    scoring reads it (its first ``max_val_prompts`` usable prompts), so a run that finds it complete reuses it."""
    end = usable_prefix_end(path, cfg.select.score.max_val_prompts)
    projector = projector or make_score_projector(policy, cfg.select.score)
    return project_store(policy, path, Path(gradients) / f"val-{name}", projector, cfg, 0, end, fingerprint=fingerprint)


def _projected_means(policy, fp, val_stores, root, projector, cfg) -> tuple[dict, dict]:
    score = cfg.select.score
    means, folders = {}, {}
    for name, path in val_stores.items():
        folders[name] = project_validation_store(policy, name, path, root, cfg, projector, fp)
        val = read_gradient_store(folders[name])
        _require_usable(path, name, val.vectors.shape[0])
        means[name] = mean_direction(val.vectors[:score.max_val_prompts])
    return means, folders


def _exact_means(policy, fp, estimator, val_stores, root, projector, cfg) -> tuple[dict, dict]:
    """ḡ_v = the mean full gradient of each set's first ``max_val_prompts`` usable prompts, one fp32 dict per set;
    with ``projector`` the same pass also writes the projected validation stores."""
    score = cfg.select.score
    means, folders = {}, {}
    for name, path in val_stores.items():
        end = usable_prefix_end(path, score.max_val_prompts)
        total: dict[str, torch.Tensor] = {}
        count = [0]

        def add(gb: GradientBatch) -> None:
            sums = {pname: g.sum(0) for pname, g in gb.grads.items()}
            # a factored weight's batch sum Σ_b d_bᵀ a_b is one product over all the batch's tokens
            sums.update({pname: f.d.reshape(-1, f.d.shape[-1]).T @ f.a.reshape(-1, f.a.shape[-1])
                         for pname, f in gb.factors.items()})
            for pname, s in sums.items():
                total[pname] = s if pname not in total else total[pname].add_(s)
            count[0] += len(gb)

        sinks = []
        if projector is not None:
            sinks = [StoreSink(projector, _writer(policy, fp, path, root / f"val-{name}", projector, cfg, 0, end))]
            folders[name] = sinks[0].writer.folder
        featurize(estimator, path, sinks, 0, end, score.chunk_size, score.stage, on_batch=add)
        _require_usable(path, name, count[0])
        means[name] = {p: t / count[0] for p, t in total.items()}
    return means, folders


def validation_means(policy: Policy, val_stores: Mapping[str, str | Path], cfg: RunConfig) -> dict[str, dict]:
    """Exact mode's ḡ_v of each validation set, computed as ``score_pool`` computes them (one set's mean does not
    depend on the other sets), so means computed apart and passed back as ``exact_means`` give the same bits."""
    for path in val_stores.values():
        _check_store(Path(path), policy)
    estimator = make_score_estimator(policy, cfg)
    return _exact_means(policy, None, estimator, val_stores, None, None, cfg)[0]


def check_scoring_stores(policy: Policy, pool_store: str | Path, val_stores: Mapping[str, str | Path]) -> None:
    """Refuse (``CropiError``) missing stores and stores made with another tokenizer, before anything is written."""
    if not val_stores:
        raise CropiError("scoring needs at least one validation store")
    for path in (pool_store, *val_stores.values()):
        _check_store(Path(path), policy)


def _means_identity(val_stores: Mapping[str, str | Path], score: ScoreConfig) -> dict:
    return {name: {"trajectory_store": store_meta(p), "max_val_prompts": score.max_val_prompts}
            for name, p in val_stores.items()}


def _on_device(means: Mapping[str, dict[str, torch.Tensor]], policy: Policy) -> dict:
    return {v: {p: t.to(policy.device) for p, t in m.items()} for v, m in means.items()}


def _require_usable(path, name, usable: int) -> None:
    if usable == 0:
        raise CropiError(f"{path}: validation set {name!r} has no usable gradient "
                         "(every reward group has zero variance); sample more responses or easier prompts")


# ----------------------------------------------------------------------------- the driver
@dataclass
class ScoringResult:
    table: pa.Table  # the scores file's rows
    ranking: Ranking  # the fused selection, best first (the file's fused_rank column)
    mode: str  # "projected" or "exact"
    meta: dict  # the scores file's metadata


def score_pool(
    policy: Policy,
    pool_store: str | Path,
    val_stores: Mapping[str, str | Path],
    out: str | Path,
    cfg: RunConfig,
    on_prompt: Callable[[int], None] | None = None,
    gradients: str | Path | None = None,
    overlays: Sequence[str | Path] = (),
    select_n: int | None = None,
    exact_means: Mapping[str, dict[str, torch.Tensor]] | None = None,
) -> ScoringResult:
    """Influence scores of every pool prompt for ``policy``: writes ``out`` (Parquet) and returns the table and
    its one fused ranking of ``select_n`` prompts (default ⌊select.ratio · pool rows⌋).

    ``overlays``: trajectory stores of some pool prompts re-sampled by the current policy; their usable groups
    replace the pool's rows for the same prompts.  Stores go under ``gradients`` (default: next to ``out``);
    rerunning after an interruption resumes them, and a store made with another model, tokenizer, loss or
    projector is refused with a ``CropiError``.  ``exact_means`` (exact mode): the sets' means from
    ``validation_means``, not computed again (and no projected validation stores are written)."""
    if not val_stores:
        raise CropiError("scoring needs at least one validation store")
    score = cfg.select.score
    pool_meta = _check_store(Path(pool_store), policy)
    for path in val_stores.values():
        _check_store(Path(path), policy)
    mode = resolve_mode(policy, score, len(val_stores))
    root = Path(gradients) if gradients is not None else default_gradients_dir(out)
    fp = model_fingerprint(policy.model)  # once per run: every store of this run is checked against it
    keep_projected = mode == "projected" or gradients is not None
    projector = make_score_projector(policy, score) if keep_projected else None
    estimator = make_score_estimator(policy, cfg, projector if mode == "projected" else None)
    if mode == "projected":
        means, val_dirs = _projected_means(policy, fp, val_stores, root, projector, cfg)
        scorer = projector
    elif exact_means is not None:
        means, val_dirs = _on_device(exact_means, policy), {}
        scorer = MeanDots(means, _means_identity(val_stores, score))
    else:
        means, val_dirs = _exact_means(policy, fp, estimator, val_stores, root, projector, cfg)
        scorer = MeanDots(means, _means_identity(val_stores, score))
    pool_dirs = _pool_stores(policy, fp, estimator, pool_store, root, projector, scorer, mode, cfg, on_prompt)
    columns: dict[str, list] = {"prompt_id": [], "usable": [], "ess": [], "max_abs_log_ratio": [], "grad_norm": []}
    per_set: dict[str, dict[str, float]] = {name: {} for name in val_stores}
    for index, vectors in iter_gradient_chunks(pool_dirs, require_whole=True):
        for key in columns:
            columns[key] += index.column(key).to_pylist()
        _chunk_scores(index, vectors, mode, means, scorer, per_set)
    reprobed = None
    if overlays:
        reprobed = _apply_overlays(policy, fp, estimator, overlays, root, projector, scorer, mode, means, cfg,
                                   columns, per_set)
    all_ids = columns["prompt_id"]
    for name in val_stores:
        columns[f"score_{name}"] = [per_set[name].get(p) for p in all_ids]
    n = select_n if select_n is not None else top_n(len(all_ids), cfg.select.ratio)
    ranking = rank(per_set, n)
    fused = ranking.rank_of()
    columns["fused_rank"] = [fused.get(p) for p in all_ids]
    if reprobed is not None:
        columns["reprobed"] = reprobed
    table = pa.table(columns)
    meta = {"schema_version": SCHEMA_VERSION, "mode": mode, "scoring": describe(score, mode),
            "projector": scorer.spec() if mode == "projected" else {"kind": "validation-means", "sets": list(val_stores)},
            "score_config": asdict(score),
            "loss": asdict(run_scoring_loss(cfg)),
            "select_ratio": cfg.select.ratio, "select_n": ranking.n,
            "pool_store": pool_meta, "policy": policy.name, "model_fingerprint": fp,
            "tokenizer_fingerprint": tokenizer_fingerprint(policy.tokenizer),
            "gradients": {"pool": [str(p) for p in pool_dirs], **{f"val-{k}": str(v) for k, v in val_dirs.items()}}}
    with atomic_path(out) as tmp:
        pq.write_table(table.replace_schema_metadata({b"cropi": json.dumps(meta, default=str).encode()}), tmp)
    return ScoringResult(table, ranking, mode, meta)


def _chunk_scores(index: pa.Table, vectors: torch.Tensor, mode: str, means, scorer, per_set) -> None:
    """Add one chunk's per-set cosines to ``per_set``."""
    ids = index.filter(index.column("usable")).column("prompt_id").to_pylist()
    if not ids:
        return
    if mode == "projected":
        for name, d in means.items():
            per_set[name].update(zip(ids, cosine_scores(vectors, d).tolist()))
        return
    norms = np.array([x for x in index.column("grad_norm").to_pylist() if x is not None], dtype=np.float64)
    for j, name in enumerate(scorer.sets):
        den = norms * scorer.norms[name]
        cos = np.where(den > 1e-12, vectors[:, j].double().numpy() / np.maximum(den, 1e-300), 0.0)
        per_set[name].update(zip(ids, cos.tolist()))


def _pool_stores(policy, fp, estimator, pool_store, root: Path, projector, scorer, mode, cfg, on_prompt) -> list[Path]:
    """The stores the pool is scored from (made here, or shards made by ``project_pool_range``)."""
    prefix = "pool" if mode == "projected" else "pool-exact"
    shards = sorted(p for p in root.glob(f"{prefix}-*") if (p / "meta.json").exists()
                    and (mode == "exact" or not p.name.startswith("pool-exact")))
    if shards:  # iter_gradient_chunks checks that they cover the pool
        expected = _identity(policy, fp, pool_store, scorer, cfg)
        for shard in shards:
            check_same_run(shard, expected)
        if on_prompt:
            on_prompt(int(store_meta(pool_store)["num_prompts"]))
        return shards
    sinks = [StoreSink(scorer, _writer(policy, fp, pool_store, root / prefix, scorer, cfg))]
    if mode == "exact" and projector is not None:
        sinks.append(StoreSink(projector, _writer(policy, fp, pool_store, root / "pool", projector, cfg)))
    featurize(estimator, pool_store, sinks, 0, None, cfg.select.score.chunk_size, cfg.select.score.stage,
              on_prompts=on_prompt)
    return [sinks[0].writer.folder]


def _apply_overlays(policy, fp, estimator, overlays, root, projector, scorer, mode, means, cfg, columns,
                    per_set) -> list[bool]:
    """Score each overlay store and let its usable rows replace the pool's rows of the same prompts (later
    overlays win; prompts the scored pool does not hold are left out, as they cannot be chosen from it); returns
    the ``reprobed`` column (True where an overlay's row is in force).  An overlay whose meta says
    ``"replaces": "all"`` (the trainer's own groups) replaces with its equal-reward rows too: such a prompt then
    has no gradient and no score."""
    position = {p: i for i, p in enumerate(columns["prompt_id"])}
    reprobed = [False] * len(position)
    for i, store in enumerate(overlays, start=1):
        replace_all = _check_store(Path(store), policy).get("replaces") == "all"
        writer = _writer(policy, fp, store, root / f"overlay-{i}", scorer, cfg)
        featurize(estimator, store, [StoreSink(scorer, writer)], 0, None, cfg.select.score.chunk_size,
                  cfg.select.score.stage)
        for index, vectors in iter_gradient_chunks([writer.folder], require_whole=True):
            extra: dict[str, dict[str, float]] = {name: {} for name in per_set}
            _chunk_scores(index, vectors, mode, means, scorer, extra)
            for row in (index if replace_all else index.filter(index.column("usable"))).to_pylist():
                at = position.get(row["prompt_id"])
                if at is None:  # e.g. an earlier stage's re-probe outside this stage's candidates
                    continue
                for key in ("usable", "ess", "max_abs_log_ratio", "grad_norm"):
                    columns[key][at] = row[key]
                reprobed[at] = True
                for name in per_set:
                    if row["usable"]:
                        per_set[name][row["prompt_id"]] = extra[name][row["prompt_id"]]
                    else:
                        per_set[name].pop(row["prompt_id"], None)
    return reprobed


def project_pool_range(policy: Policy, pool_store: str | Path, gradients: str | Path, cfg: RunConfig,
                       start: int = 0, end: int | None = None, shard: tuple[int, int] | None = None,
                       val_stores: Mapping[str, str | Path] | None = None,
                       on_prompt: Callable[[int], None] | None = None,
                       exact_means: Mapping[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Project pool prompts [start, end) (or chunk-aligned shard ``(i, n)``) into ``gradients/pool-START-END``
    (exact mode: ``pool-exact-START-END``, the inner products only, which needs ``val_stores`` for the means), resumable;
    ``score_pool`` with the same ``gradients`` folder then reads the shards as one store.  ``exact_means``: the
    means from ``validation_means``, instead of computing them here."""
    _check_store(Path(pool_store), policy)
    score = cfg.select.score
    n = int(store_meta(pool_store)["num_prompts"])
    if shard is not None:
        start, end = shard_range(n, score.chunk_size, *shard)
    end = n if end is None else end
    mode = resolve_mode(policy, score, len(val_stores or {}) or 1)
    if mode == "projected":
        return project_store(policy, pool_store, Path(gradients) / f"pool-{start:09d}-{end:09d}",
                             make_score_projector(policy, score), cfg, start, end, on_prompts=on_prompt)
    if not val_stores:
        raise CropiError("exact scoring of a pool shard needs the validation stores (--val-store)")
    for path in val_stores.values():
        _check_store(Path(path), policy)
    fp = model_fingerprint(policy.model)
    estimator = make_score_estimator(policy, cfg)
    if exact_means is not None:
        means = _on_device(exact_means, policy)
    else:
        means, _ = _exact_means(policy, fp, estimator, val_stores, Path(gradients), None, cfg)
    scorer = MeanDots(means, _means_identity(val_stores, score))
    writer = _writer(policy, fp, pool_store, Path(gradients) / f"pool-exact-{start:09d}-{end:09d}", scorer, cfg,
                     start, end)
    featurize(estimator, pool_store, [StoreSink(scorer, writer)], start, end, score.chunk_size, score.stage,
              on_prompts=on_prompt)
    return writer.folder


__all__ = ["MODES", "ScoringResult", "score_pool", "project_pool_range", "featurize", "default_gradients_dir",
           "validation_means", "project_validation_store", "check_scoring_stores",
           "make_score_projector", "make_score_estimator", "resolve_mode", "describe", "StoreSink", "MeanDots"]
