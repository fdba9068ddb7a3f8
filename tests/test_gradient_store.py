"""The gradient store: sharded == whole and resumed == uninterrupted bit for bit, refusals, the index."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from cropi.errors import CropiError
from cropi.config import RunConfig, ScoreConfig
from cropi.projection import make_projector, param_shapes_of
from cropi.rollouts.trajectory_store import CollectConfig, collect, read_store
from cropi.rollouts.trajectory_store import prompt_groups
from cropi.scores.engine import project_pool_range, project_store, score_pool
from cropi.scores.gradient_store import gradient_store_meta, read_gradient_store, shard_range
from tests.popi_helpers import prompt_gradients
from cropi.tasks.problem import Problem

N = 18


def _problems(prefix, n):
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


@pytest.fixture()
def stores(micro_policy, tmp_path):
    # one-token answers at a high temperature: a random micro policy gets mixed reward groups
    cfg = CollectConfig(group_size=24, max_new_tokens=1, chunk_size=5, temperature=3.0)
    pool = collect(micro_policy, _problems("p", N), tmp_path / "pool", cfg)
    # two groups with zero variance: they must be counted, not stored
    impossible = [Problem("z0", "1+1=", "999999", "add"), Problem("z1", "2+2=", "999999", "add")]
    val = collect(micro_policy, impossible + _problems("v", 8), tmp_path / "val", cfg)
    return pool, val


def _projector(policy, k=64, seed=0):
    return make_projector("sjlt", k, seed, param_shapes_of(policy.model))


def run_config(ratio=0.1, **score) -> RunConfig:
    cfg = RunConfig()
    cfg.select.ratio = ratio
    cfg.select.score = ScoreConfig(**{"mode": "projected", **score})  # these tests are about projected stores
    return cfg


OPTS = run_config(chunk_size=4, batch_size=3)


def write_gradient_store(policy, pool, folder, proj, cfg, start=0, end=None, on_prompts=None):
    return project_store(policy, pool, folder, proj, cfg, start, end, on_prompts=on_prompts)


def _same(a, b):
    assert a.index.equals(b.index)
    assert torch.equal(a.vectors, b.vectors)


def test_three_shards_equal_one_whole_store_bitwise(micro_policy, stores, tmp_path):
    pool, _ = stores
    proj = _projector(micro_policy)
    whole = write_gradient_store(micro_policy, pool, tmp_path / "whole", proj, OPTS)
    shards = []
    for i in range(3):
        start, end = shard_range(N, OPTS.select.score.chunk_size, i, 3)
        assert start % OPTS.select.score.chunk_size == 0
        shards.append(write_gradient_store(micro_policy, pool, tmp_path / f"s{i}", proj, OPTS, start, end))
    a, b = read_gradient_store(whole), read_gradient_store(list(reversed(shards)))  # any order: sorted by range
    _same(a, b)
    assert 0 < a.vectors.shape[0] < N  # usable and zero-variance groups both present
    assert a.index.column("position").to_pylist() == list(range(N))
    assert a.vectors.shape == (sum(a.index.column("usable").to_pylist()), 64)
    with pytest.raises(CropiError, match="leave a gap"):
        read_gradient_store([shards[0], shards[2]])
    with pytest.raises(CropiError, match="cover prompts"):
        read_gradient_store(shards[:2], require_whole=True)
    with pytest.raises(CropiError, match="multiple of the chunk size"):
        write_gradient_store(micro_policy, pool, tmp_path / "bad", proj, OPTS, 3, 9)


def test_resume_after_interruption_equals_uninterrupted_bitwise(micro_policy, stores, tmp_path):
    pool, _ = stores
    proj = _projector(micro_policy)
    ref = read_gradient_store(write_gradient_store(micro_policy, pool, tmp_path / "ref", proj, OPTS))
    seen = []

    def crash(n):  # called after each finished chunk: die after two
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_gradient_store(micro_policy, pool, tmp_path / "run", proj, OPTS, on_prompts=crash)
    done = sorted((tmp_path / "run").glob("chunk-*.parquet"))
    assert len(done) == 2 and not list((tmp_path / "run").glob(".*tmp"))
    with pytest.raises(CropiError, match="incomplete"):
        read_gradient_store(tmp_path / "run")
    stamps = {p: p.stat().st_mtime_ns for p in done}
    write_gradient_store(micro_policy, pool, tmp_path / "run", proj, OPTS)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished chunks kept, not recomputed
    _same(ref, read_gradient_store(tmp_path / "run"))
    meta = gradient_store_meta(tmp_path / "run")
    assert meta["schema_version"] == 1 and meta["complete"] and meta["usable"] + meta["zero_variance"] == N


def test_refuses_other_projector_tokenizer_or_model(micro_policy, stores, tmp_path):
    pool, _ = stores
    out = write_gradient_store(micro_policy, pool, tmp_path / "g", _projector(micro_policy), OPTS)
    with pytest.raises(CropiError, match="another projector"):
        write_gradient_store(micro_policy, pool, out, _projector(micro_policy, k=32), OPTS)
    with pytest.raises(CropiError, match="stage"):
        write_gradient_store(micro_policy, pool, out, _projector(micro_policy), run_config(chunk_size=4, stage=1))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "tokenizer_fingerprint": "0" * 16}))
    with pytest.raises(CropiError, match="another tokenizer"):
        write_gradient_store(micro_policy, pool, out, _projector(micro_policy), OPTS)
    (out / "meta.json").write_text(json.dumps(meta))
    with torch.no_grad():
        next(micro_policy.model.parameters()).add_(0.01)
    with pytest.raises(CropiError, match="another model"):
        write_gradient_store(micro_policy, pool, out, _projector(micro_policy), OPTS)


def test_index_rows_and_vectors_match_the_per_prompt_loop(micro_policy, stores, tmp_path):
    pool, _ = stores
    proj = _projector(micro_policy, k=128)
    store = read_gradient_store(write_gradient_store(micro_policy, pool, tmp_path / "g", proj, OPTS))
    rows = store.index.to_pylist()
    skipped = [r for r in rows if not r["usable"]]
    assert skipped and all(r["norm"] is None and r["ess"] is None for r in skipped)
    raw = [v for c in sorted((tmp_path / "g").glob("chunk-*")) for v in pq.read_table(c).column("vector").to_pylist()]
    assert all((v is None) == (not r["usable"]) for v, r in zip(raw, rows))  # no zero vectors on disk
    meta = gradient_store_meta(tmp_path / "g")
    assert meta["zero_variance"] == len(skipped) and meta["usable"] == store.vectors.shape[0] >= 3
    assert meta["projector"] == proj.spec() and meta["trajectory_store"]["num_prompts"] == N
    groups = prompt_groups(read_store(pool).to_pylist())
    loop = {g.prompt_id: g for g in prompt_gradients(micro_policy.model, groups, micro_policy.pad_token_id)}
    usable = [r for r in rows if r["usable"]]
    assert [r["prompt_id"] for r in usable] == list(loop)
    for r, v in zip(usable, store.vectors):
        g = loop[r["prompt_id"]]
        exact = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g.grads.values()))
        assert abs(r["grad_norm"] - exact) <= 1e-5 * exact
        assert abs(r["norm"] - float(v.norm())) <= 1e-6 * float(v.norm())
        ref = proj.project(g.grads)
        assert float((v - ref).norm()) <= 1e-5 * float(ref.norm())
        assert abs(r["ess"] - g.ess) < 1e-9 and r["stage"] == 0


def test_score_pool_from_shards_equals_whole(micro_policy, stores, tmp_path):
    pool, val = stores
    cfg = run_config(0.3, k=64, chunk_size=4, batch_size=3)
    whole = score_pool(micro_policy, pool, {"v": val}, tmp_path / "whole.parquet", cfg)
    assert (tmp_path / "whole.gradients" / "pool" / "meta.json").exists()
    for i in range(3):
        project_pool_range(micro_policy, pool, tmp_path / "g", cfg, shard=(i, 3))
    sharded = score_pool(micro_policy, pool, {"v": val}, tmp_path / "sharded.parquet", cfg, gradients=tmp_path / "g")
    assert whole.table.equals(sharded.table)
    with pytest.raises(CropiError, match="another projector"):
        score_pool(micro_policy, pool, {"v": val}, tmp_path / "x.parquet", run_config(k=32, chunk_size=4),
                   gradients=tmp_path / "g")
