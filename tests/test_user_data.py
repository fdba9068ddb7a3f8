"""The user's data as it comes: never mixed with the embedded suite unasked, one store per validation set, loud
warnings where settings made for the synthetic suite meet real text, and the README's GSM8K recipe as written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cropi.cli import app
from tests.conftest import SHARED_DATA, small_suite_overrides

runner = CliRunner()
CPU = ["--set", "model.device=cpu"]


def _pool(tmp_path, n=4):
    pool = tmp_path / "mine.jsonl"
    pool.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(n)))
    return pool


def test_a_user_pool_without_validation_sets_stops_naming_the_missing_options(micro_model_dir, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--pool", str(_pool(tmp_path)), "--field", "prompt=question", "--answer-format",
                            "gsm8k", "--model", str(micro_model_dir), "--out", str(out), *CPU])
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "--pool given" in msg and "--val NAME=PATH" in msg and "--test NAME=PATH" in msg and "embedded" in msg
    assert not out.exists()


def test_a_user_pool_with_its_own_validation_and_test_sets_is_accepted_by_compare_checks(tmp_path):
    from cropi.config import load_config
    from cropi.runs.compare import check_compare

    pool = _pool(tmp_path)
    cfg = load_config(None, [f"data.pool_file={pool}", f"data.validation_files=[mine={pool}]",
                             "data.fields={prompt: question}", "data.answer_format=gsm8k"])
    with pytest.raises(Exception, match="--test NAME=PATH"):
        check_compare(cfg, ["full"], [0], tmp_path / "cmp")
    cfg = load_config(None, [f"data.pool_file={pool}", f"data.validation_files=[mine={pool}]",
                             f"data.test_files=[mine={pool}]", "data.fields={prompt: question}",
                             "data.answer_format=gsm8k"])
    suite = check_compare(cfg, ["full"], [0], tmp_path / "cmp")
    assert [p.id for p in suite.pool] == ["mine-00000", "mine-00001", "mine-00002", "mine-00003"]
    assert list(suite.validation) == ["mine"] and suite.targeted == ["mine"]


def test_each_validation_set_is_collected_into_its_own_store(micro_model_dir, tmp_path):
    from cropi.rollouts.trajectory_store import pass_rates
    from cropi.tasks.loading import load_data
    from cropi.config import load_config

    common = ["--model", str(micro_model_dir), "-g", "2", "--max-new-tokens", "3", *CPU]
    small = [x for o in small_suite_overrides() for x in ("--set", o)]
    r = runner.invoke(app, ["collect", "--split", "validation", "--out", str(tmp_path / "v"), *common, *small])
    assert r.exit_code == 2 and "validation:NAME" in " ".join(r.output.split())
    assert not (tmp_path / "v").exists()
    suite = load_data(load_config(None, small_suite_overrides()).data)
    for name, problems in suite.validation.items():
        r = runner.invoke(app, ["collect", "--split", f"validation:{name}", "--out", str(tmp_path / name), *common, *small])
        assert r.exit_code == 0, r.output
        assert sorted(pass_rates(tmp_path / name)) == sorted(p.id for p in problems)
    r = runner.invoke(app, ["collect", "--split", "validation:nope", "--out", str(tmp_path / "n"), *common, *small])
    assert r.exit_code == 2 and "no validation set 'nope'" in r.output


def test_real_text_on_the_tiny_policy_and_short_caps_are_warned_about(micro_model_dir, tmp_path):
    pool = tmp_path / "caps.jsonl"
    pool.write_text(json.dumps({"question": "Natalia sold 48 clips in April.", "answer": "#### 48"}) + "\n")
    r = runner.invoke(app, ["collect", "--pool", str(pool), "--field", "prompt=question", "--answer-format", "gsm8k",
                            "--out", str(tmp_path / "s"), "--model", str(micro_model_dir), "-g", "2", *CPU])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "warning: rollout.max_new_tokens=10" in out and "eval.max_new_tokens" not in out  # collect never evaluates
    assert "maps text of 1 of 1 prompts checked to <unk>" in out and "'AN'" in out
    # the embedded suite itself gets no warning
    r = runner.invoke(app, ["collect", "--out", str(tmp_path / "e"), "--model", str(micro_model_dir), "-g", "2",
                            "--limit", "2", *CPU, *[x for o in small_suite_overrides() for x in ("--set", o)]])
    assert r.exit_code == 0 and "warning" not in r.output


def test_a_byte_level_tokenizer_has_no_vocabulary_gaps():
    from cropi.policy import vocabulary_gaps

    class ByteTokenizer:  # the shape of a tokenizer without an unknown token (byte-level BPE)
        unk_token_id = None

    assert vocabulary_gaps(ByteTokenizer(), ["Natalia"]) == (1, 0, "")


def _gsm8k_recipe(tmp_path, model: str, fast: list[str]):
    """The README's recipe: collect the pool and each validation set into its own store, score, select."""
    train, test = SHARED_DATA / "gsm8k" / "train.jsonl", SHARED_DATA / "gsm8k" / "test.jsonl"
    if not (train.exists() and test.exists()):
        pytest.skip("../shared/data is absent")
    data = ["--field", "prompt=question", "--answer-format", "gsm8k"]
    r = runner.invoke(app, ["collect", "--pool", str(train), *data, "--out", str(tmp_path / "pool"), "--model", model, *fast])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["collect", "--val", f"gsm8k={test}", "--split", "validation:gsm8k", *data,
                            "--out", str(tmp_path / "val-gsm8k"), "--model", model, *fast])
    assert r.exit_code == 0, r.output
    score = runner.invoke(app, ["score", "--pool-store", str(tmp_path / "pool"), "--val-store",
                                f"gsm8k={tmp_path / 'val-gsm8k'}", "--model", model,
                                "--out", str(tmp_path / "scores.parquet"), *CPU])
    select = ["select", "--scores", str(tmp_path / "scores.parquet"), "--pool", str(train), *data,
              "--select-ratio", "0.5", "--out", str(tmp_path / "chosen.jsonl")]
    return score, select


def test_the_gsm8k_recipe_on_an_untrained_model_stops_at_scoring_with_one_line(micro_model_dir, tmp_path):
    """A random model solves no GSM8K problem, so every group has zero variance; scoring says so in one line."""
    score, _ = _gsm8k_recipe(tmp_path, str(micro_model_dir), ["-g", "2", "--max-new-tokens", "8", "--limit", "6", *CPU])
    assert score.exit_code == 2
    assert "has no usable gradient" in score.output and "Traceback" not in score.output
    assert not (tmp_path / "scores.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool", "val-gsm8k"]  # nothing half-written


@pytest.mark.slow  # SmolLM2 writing 256-token GSM8K answers on CPU: minutes
def test_the_readmes_gsm8k_recipe_runs_as_written_with_smollm2(tmp_path):
    from cropi.policy.fetch import is_complete, smollm2_dir

    if not is_complete(smollm2_dir()):
        pytest.skip("SmolLM2 is not fetched (cropi model fetch smollm2)")
    score, select = _gsm8k_recipe(tmp_path, "smollm2", ["-g", "4", "--max-new-tokens", "256", "--limit", "16", *CPU])
    assert score.exit_code == 0, score.output
    r = runner.invoke(app, select)
    assert r.exit_code == 0, r.output
    from cropi.rollouts.trajectory_store import pass_rates

    chosen = [json.loads(l) for l in (tmp_path / "chosen.jsonl").read_text().splitlines()]
    rates = pass_rates(tmp_path / "pool")
    # only groups with mixed rewards carry a gradient, so the chosen half is drawn from those
    usable = [pid for pid, p in rates.items() if 0 < p < 1]
    assert 1 <= len(chosen) <= 8 and all(c["id"] in usable for c in chosen), (len(chosen), len(usable))
