"""Featurizing: each usable prompt's gradient computed once per chunk of a trajectory store and handed to every
sink (a projector and the gradient store its vectors go to), as ``scores.engine`` wires them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from cropi.gradients.popi import GradientBatch, GradientEstimator
from cropi.projection import Projector
from cropi.projection.factored import squared_norms
from cropi.rollouts.trajectory_store import PromptGroup, iter_prompt_groups, store_meta
from cropi.scores.gradient_store import ChunkRows, GradientStoreWriter


@dataclass
class StoreSink:
    """A projector and the gradient store its vectors go to."""

    projector: Projector
    writer: GradientStoreWriter


def featurize(estimator: GradientEstimator, trajectories: str | Path, sinks: Sequence[StoreSink], start: int = 0,
              end: int | None = None, chunk_size: int = 64, stage: int = 0,
              on_batch: Callable[[GradientBatch], None] | None = None,
              on_prompts: Callable[[int], None] | None = None) -> None:
    """Compute g_x once for every usable prompt of [start, end) in each grid chunk that some sink still lacks
    (every chunk when ``on_batch`` is given), and hand each gradient batch to every sink.

    Micro-batches never cross a chunk, and within a chunk usable groups are ordered by packed width (less
    padding) — a fixed function of the chunk's own prompts, so a chunk's bits do not depend on what else is
    computed (resumed and sharded stores equal whole ones)."""
    n = int(store_meta(trajectories)["num_prompts"])
    end = n if end is None else end
    pending: list[tuple[int, PromptGroup]] = []

    def flush(chunk: int) -> None:
        todo = [s for s in sinks if not s.writer.has_chunk(chunk)]
        if todo or on_batch is not None:
            _featurize_chunk(estimator, pending, chunk, todo, stage, on_batch)
        if on_prompts:
            on_prompts(len(pending))
        pending.clear()

    current = None
    for pos, group in iter_prompt_groups(trajectories, start, end):
        if current is not None and pos // chunk_size != current:
            flush(current)
        current = pos // chunk_size
        pending.append((pos, group))
    if pending:
        flush(current)
    for s in sinks:
        s.writer.finish()


def _featurize_chunk(estimator, members, chunk, sinks, stage, on_batch) -> None:
    groups = sorted((g for _, g in members), key=lambda g: len(g.prompt_ids) + max(map(len, g.response_ids)))
    results: list[dict[str, tuple]] = [{} for _ in sinks]  # stable sort: ties keep the chunk's order
    for gb in estimator.gradients(groups).batches:  # zero-variance groups are skipped: no row gets a vector
        if on_batch is not None:
            on_batch(gb)
        if not sinks:
            continue
        if gb.projected is not None:  # a sketching estimator: its projections are all there is
            _sketched_rows(gb, sinks, results)
            continue
        sq = torch.zeros(len(gb), dtype=torch.float64)
        for g in gb.grads.values():
            sq += g.reshape(len(gb), -1).pow(2).sum(1, dtype=torch.float64).cpu()
        for f in gb.factors.values():  # a factored weight's norm without forming its gradient
            sq += squared_norms(f).double().cpu()
        for sink, res in zip(sinks, results):
            factored = getattr(sink.projector, "project_factored_batch", None)
            if factored is not None and gb.factors:
                vecs = factored(gb)
            elif gb.factors:  # a flat projector is linear: one factored weight formed at a time, never all at once
                vecs = sink.projector.project_batch(gb.grads) if gb.grads else 0
                for name, f in gb.factors.items():
                    vecs = vecs + sink.projector.project_batch({name: torch.bmm(f.d.transpose(1, 2), f.a)})
            else:
                vecs = sink.projector.project_batch(gb.grads)
            for b, pid in enumerate(gb.prompt_ids):
                res[pid] = (vecs[b].cpu().numpy(), float(sq[b].sqrt()), gb.ess[b], gb.max_abs_log_ratio[b])
    for sink, res in zip(sinks, results):
        rows = ChunkRows([p for p, _ in members], [g.prompt_id for _, g in members], [], [], [], [], stage)
        for _, g in members:
            r = res.get(g.prompt_id)
            rows.vectors.append(None if r is None else r[0])
            rows.grad_norm.append(None if r is None else r[1])
            rows.ess.append(None if r is None else r[2])
            rows.max_abs_log_ratio.append(None if r is None else r[3])
        sink.writer.write_chunk(chunk, rows)


def _sketched_rows(gb: GradientBatch, sinks, results) -> None:
    """Rows of a batch that holds projections only; ``grad_norm`` is then the norm of the projection (an
    estimate of ‖g‖ with the projection's error, the same for every prompt's cosine)."""
    norms = gb.projected.double().pow(2).sum(1).sqrt()
    for sink, res in zip(sinks, results):
        if sink.projector.spec() != gb.projector_spec:
            raise ValueError("a sketched gradient batch can only feed a sink with the sketch's own projector")
        for b, pid in enumerate(gb.prompt_ids):
            res[pid] = (gb.projected[b].cpu().numpy(), float(norms[b]), gb.ess[b], gb.max_abs_log_ratio[b])
