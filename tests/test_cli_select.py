"""`cropi score` with a gradient store and shards, `cropi select`, and their one-line errors (exit 2)."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cropi.cli import app
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.selection.export import influence_ranking, read_scores
from cropi.tasks.problem import Problem

runner = CliRunner()


def _problems(prefix, n):
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


@pytest.fixture()
def setup(micro_policy, micro_model_dir, tmp_path):
    cfg = CollectConfig(group_size=24, max_new_tokens=1, chunk_size=5, temperature=3.0)
    problems = _problems("p", 20)
    pool = collect(micro_policy, problems, tmp_path / "pool", cfg)
    val = collect(micro_policy, _problems("v", 8), tmp_path / "val", cfg)
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in problems))
    base = ["score", "--pool-store", str(pool), "--val-store", f"count={val}", "--model", str(micro_model_dir),
            "--device", "cpu", "--k", "64", "--chunk-size", "4", "--select-ratio", "0.2"]
    return tmp_path, pool_file, base


def _one_line_error(r, expect):
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output
    assert len([l for l in r.output.splitlines() if l.strip()]) <= 3  # one message (rich may wrap it)


def test_score_shards_then_select_jsonl_and_verl(setup):
    tmp, pool_file, base = setup
    g = tmp / "grads"
    for i in range(2):
        r = runner.invoke(app, base + ["--gradients", str(g), "--shard", f"{i}/2", "--batch-size", "3"])
        assert r.exit_code == 0, r.output
    assert len(list(g.glob("pool-*"))) == 2 and not (tmp / "s.parquet").exists()
    r = runner.invoke(app, base + ["--gradients", str(g), "--out", str(tmp / "s.parquet")])
    assert r.exit_code == 0, r.output
    scores, meta = read_scores(tmp / "s.parquet")
    assert meta["schema_version"] == 1 and scores.num_rows == 20
    expected = influence_ranking(scores, {}, 0.2)  # fused again from the score columns
    assert 1 <= len(expected) <= 4 and influence_ranking(scores, meta) == expected  # = the file's fused_rank

    r = runner.invoke(app, ["select", "--scores", str(tmp / "s.parquet"), "--pool", str(pool_file), "--select-ratio", "0.2",
                            "--out", str(tmp / "chosen.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (tmp / "chosen.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == expected and [x["fused_rank"] for x in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["prompt"].startswith("count a") and rows[0]["answer"] in {"1", "2", "3"}
    ids = json.loads((tmp / "chosen.ids.json").read_text())
    assert ids["schema_version"] == 1 and ids["ids"] == expected and ids["pool_size"] == 20

    r = runner.invoke(app, ["select", "--scores", str(tmp / "s.parquet"), "--pool", str(pool_file), "--select-ratio", "0.2",
                            "--layout", "verl", "--out", str(tmp / "chosen.parquet")])
    assert r.exit_code == 0, r.output
    v = pq.read_table(tmp / "chosen.parquet").to_pylist()
    assert [x["extra_info"]["id"] for x in v] == expected
    first = v[0]
    assert first["prompt"] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert first["reward_model"]["style"] == "rule"
    assert json.loads(first["reward_model"]["ground_truth"]) == {"answer": rows[0]["answer"], "family": "count",
                                                                 "synthetic": True}  # the family's own grader
    assert first["ability"] == "math" and first["data_source"] == "count"
    assert [x["extra_info"]["index"] for x in v] == expected  # the pool id: verl reads it as the prompt's index

    # without --pool the embedded suite is the pool, which does not hold these ids
    r = runner.invoke(app, ["select", "--scores", str(tmp / "s.parquet"), "--select-ratio", "0.2",
                            "--out", str(tmp / "x.jsonl")])
    _one_line_error(r, "not in the pool")


def test_select_missing_scores_exit_2(tmp_path):
    r = runner.invoke(app, ["select", "--scores", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "c.jsonl")])
    _one_line_error(r, "no scores file")
    assert not (tmp_path / "c.jsonl").exists()


def test_score_refuses_store_of_another_model_or_tokenizer(setup):
    tmp, _, base = setup
    g = tmp / "grads"
    args = base + ["--gradients", str(g), "--out", str(tmp / "s.parquet")]
    assert runner.invoke(app, args).exit_code == 0
    meta_path = g / "pool" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "model_fingerprint": "0" * 16}))
    _one_line_error(runner.invoke(app, args), "another model")
    meta_path.write_text(json.dumps({**meta, "tokenizer_fingerprint": "0" * 16}))
    _one_line_error(runner.invoke(app, args), "another tokenizer")
    meta_path.write_text(json.dumps(meta))
    assert runner.invoke(app, args).exit_code == 0  # resumes: every chunk is already there


def test_score_validation_without_usable_gradient_exit_2(setup, micro_policy):
    tmp, _, base = setup
    cfg = CollectConfig(group_size=2, max_new_tokens=1, chunk_size=5)
    bad = collect(micro_policy, [Problem("z0", "1+1=", "999999", "add")], tmp / "bad", cfg)
    args = base[:]
    args[args.index("--val-store") + 1] = f"add={bad}"
    _one_line_error(runner.invoke(app, args + ["--out", str(tmp / "s.parquet")]), "no usable gradient")
    assert not (tmp / "s.parquet").exists()
    _one_line_error(runner.invoke(app, base), "--out is required")
    _one_line_error(runner.invoke(app, base + ["--shard", "0/2"]), "--gradients")
    _one_line_error(runner.invoke(app, base + ["--range", "3:8", "--gradients", str(tmp / "g")]), "multiple of the chunk")


def test_score_says_which_mode_ran_and_exact_shards_merge_like_a_whole_run(setup):
    tmp, _, base = setup
    r = runner.invoke(app, base + ["--mode", "exact", "--out", str(tmp / "whole.parquet")])
    assert r.exit_code == 0, r.output
    assert "in exact mode" in r.output and read_scores(tmp / "whole.parquet")[1]["mode"] == "exact"
    for i in range(2):
        r = runner.invoke(app, base + ["--mode", "exact", "--gradients", str(tmp / "g"), "--shard", f"{i}/2"])
        assert r.exit_code == 0, r.output
    assert len(list((tmp / "g").glob("pool-exact-*"))) == 2
    r = runner.invoke(app, base + ["--mode", "exact", "--gradients", str(tmp / "g"), "--out", str(tmp / "s.parquet")])
    assert r.exit_code == 0, r.output
    assert read_scores(tmp / "s.parquet")[0].equals(read_scores(tmp / "whole.parquet")[0])
    r = runner.invoke(app, base + ["--mode", "projected", "--out", str(tmp / "p.parquet")])
    assert "in projected mode" in r.output
    r = runner.invoke(app, base + ["--out", str(tmp / "a.parquet")])  # auto: the micro model's mean fits
    assert "in exact mode" in r.output
