"""Damaged files: a resumed job recomputes the damaged chunks it would have skipped (one line each) and ends
bit-identical to an undamaged run; a command that only reads a damaged file stops with one line, exit 2."""

from __future__ import annotations

import logging
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from cropi.cli import app
from cropi.config import RunConfig, ScoreConfig
from cropi.errors import DataError
from cropi.rollouts.trajectory_store import CollectConfig, collect, collection_complete, read_store
from cropi.scores.engine import project_pool_range, score_pool
from cropi.tasks.problem import Problem
from cropi.training import checkpoint

runner = CliRunner()


def _problems(prefix, n):
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


COLLECT = CollectConfig(group_size=16, max_new_tokens=1, chunk_size=4, temperature=3.0)


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tables_equal(a, b) -> bool:
    return a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))


@pytest.fixture()
def stores(micro_policy, tmp_path):
    return (collect(micro_policy, _problems("p", 12), tmp_path / "pool", COLLECT),
            collect(micro_policy, _problems("v", 8), tmp_path / "val", COLLECT))


def _cfg() -> RunConfig:
    cfg = RunConfig()
    cfg.select.ratio = 0.25
    cfg.select.score = ScoreConfig(chunk_size=4, mode="projected", k=64)
    return cfg


def test_a_resumed_collect_recomputes_a_cut_chunk_and_equals_an_undamaged_store(micro_policy, stores, tmp_path, caplog):
    pool, _ = stores
    whole = read_store(pool)
    part = pool / "part-000001.parquet"
    _cut_in_half(part)
    assert not collection_complete(pool)  # a cut chunk is not done
    with caplog.at_level(logging.WARNING, logger="cropi"):
        collect(micro_policy, _problems("p", 12), pool, COLLECT)
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert any(str(part) in m and "recomputing it" in m for m in damaged)
    assert _tables_equal(read_store(pool), whole) and collection_complete(pool)


def test_scoring_a_store_with_a_cut_chunk_is_one_line_naming_it_and_what_to_run(micro_model_dir, stores, tmp_path):
    pool, val = stores
    _cut_in_half(pool / "part-000002.parquet")
    out = tmp_path / "scores.parquet"
    r = runner.invoke(app, ["score", "--pool-store", str(pool), "--val-store", f"v={val}", "--model",
                            str(micro_model_dir), "--out", str(out), "--set", "model.device=cpu"])
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "part-000002.parquet" in msg and "rerun the `cropi collect`" in msg and "Traceback" not in r.output
    assert not out.exists()


@pytest.mark.parametrize("sharded", [False, True])
def test_a_resumed_score_recomputes_a_cut_gradient_chunk_and_equals_an_undamaged_run(micro_policy, stores, tmp_path,
                                                                                      caplog, sharded):
    pool, val = stores
    cfg = _cfg()
    grads = tmp_path / "grads"

    def run(out):
        if sharded:
            for i in range(2):
                project_pool_range(micro_policy, pool, grads, cfg, shard=(i, 2), val_stores={"v": val})
        return score_pool(micro_policy, pool, {"v": val}, out, cfg, gradients=grads).table

    first = run(tmp_path / "a.parquet")
    chunks = sorted(grads.rglob("chunk-000001.parquet"))
    assert chunks
    saved = {c: pq.read_table(c) for c in chunks}
    for c in chunks:
        _cut_in_half(c)
    with caplog.at_level(logging.WARNING, logger="cropi"):
        again = run(tmp_path / "b.parquet")
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"{c} is damaged" in warned for c in chunks)
    assert again.equals(first)
    assert all(pq.read_table(c).equals(t) for c, t in saved.items())


def test_select_on_a_cut_scores_file_is_one_line_naming_it(tmp_path, micro_policy, stores):
    pool, val = stores
    out = tmp_path / "scores.parquet"
    score_pool(micro_policy, pool, {"v": val}, out, _cfg())
    _cut_in_half(out)
    r = runner.invoke(app, ["select", "--scores", str(out), "--out", str(tmp_path / "chosen.jsonl")])
    assert r.exit_code == 2 and "scores.parquet" in r.output and "rerun `cropi score" in " ".join(r.output.split())
    assert not (tmp_path / "chosen.jsonl").exists()


def test_a_cut_json_meta_is_one_line_naming_the_file(stores, tmp_path, micro_model_dir):
    pool, val = stores
    meta = pool / "meta.json"
    meta.write_text(meta.read_text()[:20])
    r = runner.invoke(app, ["score", "--pool-store", str(pool), "--val-store", f"v={val}", "--model",
                            str(micro_model_dir), "--out", str(tmp_path / "s.parquet"), "--set", "model.device=cpu"])
    assert r.exit_code == 2 and "meta.json:" in r.output and "damaged JSON" in r.output and "Traceback" not in r.output


def test_resume_passes_over_a_damaged_newest_checkpoint_to_the_one_before(micro_policy, tmp_path, caplog):
    model = micro_policy.model
    opt = torch.optim.Adam(model.parameters())
    first = checkpoint.save(tmp_path, 10, model, opt, None)
    newest = checkpoint.save(tmp_path, 20, model, opt, None)
    assert checkpoint.latest(tmp_path) == newest
    _cut_in_half(newest / "optimizer.safetensors")
    with caplog.at_level(logging.WARNING, logger="cropi"):
        assert checkpoint.latest(tmp_path) == first
    assert "step-0000020 is damaged" in caplog.text and "earlier checkpoint" in caplog.text
    _cut_in_half(first / "model.safetensors")
    assert checkpoint.latest(tmp_path) is None  # nothing intact: the run starts over


def test_missing_starting_weights_stop_a_resume_with_one_line(tmp_path, micro_policy):
    checkpoint.save_initial(tmp_path, micro_policy.model)
    shutil.rmtree(tmp_path / "initial")
    with pytest.raises(DataError, match="starting weights"):
        checkpoint.load_initial(tmp_path)


def test_the_cli_prints_a_recompute_as_one_warning_line(micro_model_dir, tmp_path):
    args = ["collect", "--out", str(tmp_path / "s"), "--model", str(micro_model_dir), "-g", "2", "--max-new-tokens", "2",
            "--set", "model.device=cpu", "--set", "data.suite.pool_size=70"]
    assert runner.invoke(app, args).exit_code == 0
    before = read_store(tmp_path / "s")
    _cut_in_half(tmp_path / "s" / "part-000001.parquet")
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = [l for l in r.output.splitlines() if l.startswith("warning:")]
    assert len(lines) == 1 and "part-000001.parquet is damaged" in lines[0] and "recomputing it" in lines[0]
    assert _tables_equal(read_store(tmp_path / "s"), before)
