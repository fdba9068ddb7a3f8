"""End-to-end scoring on the micro model: stores -> POPI -> projection -> cosine -> RRF."""

import pytest
import torch

from cropi.errors import CropiError
from cropi.gradients.popi import groups_from_rows, prompt_gradients
from cropi.rollouts.trajectory_store import CollectConfig, collect, read_store
from cropi.scores.engine import ScoreConfig, score_pool, selected_ids
from cropi.tasks.problem import Problem


def _problems(prefix, n):
    # single-token answers so a random micro policy gets mixed reward groups
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


def test_scores_match_exact_cosines_at_large_k(micro_policy, tmp_path):
    cfg = CollectConfig(group_size=32, max_new_tokens=1, chunk_size=8, temperature=3.0)
    pool = collect(micro_policy, _problems("p", 16), tmp_path / "pool", cfg)
    val = collect(micro_policy, _problems("v", 8), tmp_path / "val", cfg)
    table = score_pool(micro_policy, pool, {"count": val}, tmp_path / "scores.parquet",
                       ScoreConfig(k=8192, ratio=0.25))
    assert (tmp_path / "scores.parquet").exists()
    rows = table.to_pylist()
    usable = [r for r in rows if r["usable"]]
    assert usable and all(-1 <= r["score_count"] <= 1 for r in usable)
    assert all(r["score_count"] is None for r in rows if not r["usable"])
    # exact cosines from flat gradients
    def flat(groups):
        return {g.prompt_id: torch.cat([v.flatten() for v in g.grads.values()])
                for g in prompt_gradients(micro_policy.model, groups, micro_policy.pad_token_id)}
    vg = flat(groups_from_rows(read_store(val).to_pylist()))
    d = torch.stack(list(vg.values())).mean(0)
    pg = flat(groups_from_rows(read_store(pool).to_pylist()))
    for r in usable:
        exact = float(torch.dot(pg[r["prompt_id"]], d) / (pg[r["prompt_id"]].norm() * d.norm()))
        assert abs(exact - r["score_count"]) < 0.1
    chosen = selected_ids(table)
    assert 1 <= len(chosen) <= 4 and all(c in {r["prompt_id"] for r in usable} for c in chosen)


def test_validation_without_gradient_is_a_clear_error(micro_policy, tmp_path):
    cfg = CollectConfig(group_size=2, max_new_tokens=1, chunk_size=8)
    pool = collect(micro_policy, _problems("p", 4), tmp_path / "pool", cfg)
    impossible = [Problem("v0", "1+1=", "999999", "add")]
    val = collect(micro_policy, impossible, tmp_path / "val", cfg)
    with pytest.raises(CropiError, match="no usable gradient"):
        score_pool(micro_policy, pool, {"add": val}, tmp_path / "s.parquet")
    assert not (tmp_path / "s.parquet").exists()
    with pytest.raises(CropiError, match="no trajectory store"):
        score_pool(micro_policy, tmp_path / "missing", {"add": val}, tmp_path / "s.parquet")
