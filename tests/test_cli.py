"""The command line: help texts, one-line errors with exit code 2 and nothing written."""

import json

import pytest
from typer.testing import CliRunner

from cropi.cli import app
from tests.conftest import small_suite_overrides

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["train"], ["collect"], ["score"], ["select"], ["eval"], ["demo"], ["pretrain"], ["model", "fetch"]])
def test_help_explains(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output and len(r.output) > 200


def _bad_pool(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("content,expect", [
    (b"", ":"),
    (b'{"id": "a", "prompt": "1+1=", "answer": "2"}\n{not json}\n', ":2:"),
    (b'{"id": "a", "prompt": "1+1=", "answer": "2"}\n{"id": "b", "answer": "3"}\n', ":2:"),
    (b'{"id": "a", "prompt": 5, "answer": "2"}\n', ":1:"),
    (b'{"id": "a", "prompt": "x", "answer": "2"}\n{"id": "b", "prompt": "\xff\xfe", "answer": "1"}\n', ":2:"),
    (b'{"id": "a", "prompt": "x", "answer": "2"}\n{"id": "a", "prompt": "y", "answer": "1"}\n', ":2:"),
])
def test_bad_pool_file_gives_one_line_exit_2_nothing_written(micro_model_dir, tmp_path, content, expect):
    pool = _bad_pool(tmp_path, "pool.jsonl", content)
    out = tmp_path / "store"
    r = runner.invoke(app, ["collect", "--out", str(out), "--model", str(micro_model_dir), "--pool", str(pool),
                            "--set", "model.device=cpu"])
    assert r.exit_code == 2, r.output
    err = r.output.strip()
    assert "pool.jsonl" + expect in err and "Traceback" not in err
    assert len([l for l in err.splitlines() if l.strip()]) <= 2  # one message (rich may wrap it)
    assert not out.exists()


def test_collect_and_eval_on_user_files(micro_model_dir, tmp_path):
    pool = tmp_path / "mine.jsonl"
    pool.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i}+1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(5)))
    r = runner.invoke(app, ["collect", "--out", str(tmp_path / "s"), "--model", str(micro_model_dir), "--pool",
                            str(pool), "--field", "prompt=question", "--answer-format", "gsm8k", "-g", "2",
                            "--max-new-tokens", "4", "--set", "model.device=cpu"])
    assert r.exit_code == 0, r.output
    assert "stored 5 prompts x 2 responses" in r.output
    r = runner.invoke(app, ["eval", "--model", str(micro_model_dir), "--test", f"mine={pool}", "--val", f"mine={pool}",
                            "--field", "prompt=question", "--answer-format", "gsm8k", "--out", str(tmp_path / "e.json"),
                            "--set", "eval.max_new_tokens=4", "--set", "model.device=cpu"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["schema_version"] == 1 and res["n"] == {"mine": 5} and res["targeted"] == 0.0


def test_train_refuses_existing_run_without_resume(micro_model_dir, tmp_path):
    args = ["train", "--model", str(micro_model_dir), "--selector", "full", "--steps", "1", "--stages", "1", "--out", str(tmp_path / "r")]
    for s in small_suite_overrides() + ["train.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=3",
                                        "eval.max_new_tokens=3", "model.device=cpu"]:
        args += ["--set", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--resume" in r.output
    r = runner.invoke(app, args + ["--resume"])
    assert r.exit_code == 0, r.output


def test_unknown_override_exit_2(tmp_path):
    r = runner.invoke(app, ["train", "--set", "train.nope=1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown key" in r.output and not (tmp_path / "x").exists()


def test_score_missing_store_exit_2(tmp_path):
    r = runner.invoke(app, ["score", "--pool-store", str(tmp_path / "nope"), "--val-store", f"a={tmp_path}",
                            "--out", str(tmp_path / "s.parquet")])
    assert r.exit_code == 2 and "no trajectory store" in r.output and not (tmp_path / "s.parquet").exists()
