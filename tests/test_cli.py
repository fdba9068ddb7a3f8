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


def _tiny_train_args(micro_model_dir, out):
    args = ["train", "--model", str(micro_model_dir), "--selector", "full", "--steps", "2", "--stages", "1",
            "--out", str(out)]
    for s in small_suite_overrides() + ["train.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=3",
                                        "eval.max_new_tokens=3", "model.device=cpu", "train.eval_every=1"]:
        args += ["--set", s]
    return args


def test_a_second_process_on_a_live_run_folder_stops_naming_it(micro_model_dir, tmp_path):
    """One writer per run folder: while another live process holds it, `train` (with or without --resume) stops
    with one line naming that process, and writes nothing."""
    import subprocess
    import sys

    out = tmp_path / "r"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(other.pid))
        for extra in ([], ["--resume"]):
            r = runner.invoke(app, _tiny_train_args(micro_model_dir, out) + extra)
            lines = [x for x in r.output.splitlines() if x.strip()]
            assert r.exit_code == 2 and len(lines) == 1 and f"pid {other.pid}" in lines[0], r.output
            assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        other.kill()
        other.wait()
    # its holder gone, the folder is free: the run goes through and leaves no lock behind
    r = runner.invoke(app, _tiny_train_args(micro_model_dir, out))
    assert r.exit_code == 0, r.output
    assert not (out / ".lock").exists()


def test_the_summary_counts_every_kind_of_second_and_ctrl_c_says_how_to_resume(micro_model_dir, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "r"
    r = runner.invoke(app, _tiny_train_args(micro_model_dir, out))
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    line = next(x for x in r.output.splitlines() if " s charged (" in x)
    total = sum(summary["seconds_by_kind"].values())
    assert line.startswith(f"2 GRPO steps, {total:.0f} s charged (") and "training" in line and "rollouts" in line

    import cropi.runs.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cropi.runs.run, "run_training", interrupted)
    r = runner.invoke(app, _tiny_train_args(micro_model_dir, tmp_path / "r2"))
    assert r.exit_code == 130 and "--resume" in r.output and str(tmp_path / "r2") in " ".join(r.output.split())


def test_train_help_lists_every_selector_on_one_line_each():
    from cropi.selection import RULES

    out = runner.invoke(app, ["train", "--help"], terminal_width=80).output
    lines = [x.strip() for x in out.splitlines()]
    for name in RULES:
        line = next(x for x in lines if x.split(" ")[0] == name)
        assert RULES[name].help in line, line
