"""How command-line options resolve to the run config, and that bad input fails first: exit code 2, one line,
no progress bar, nothing written."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cropi.cli.main as cli
from cropi.cli import app
from cropi.config import RunConfig, load_config, to_dict

runner = CliRunner()
COMPARE_DEFAULT = Path(__file__).resolve().parents[1] / "lab" / "results" / "compare-peers-config.yaml"


class _Resolved(Exception):
    pass


def _resolved(monkeypatch, args: list[str]) -> RunConfig:
    """The config a command resolves from ``args``; its body does not run."""
    seen = []

    def capture(path, overrides=None):
        if overrides is None:  # a look at --config alone (the stages in force), not the resolution
            return load_config(path)
        seen.append(load_config(path, overrides))
        raise _Resolved

    monkeypatch.setattr(cli, "load_config", capture)
    r = runner.invoke(app, args)
    assert isinstance(r.exception, _Resolved), r.output
    return seen[-1]


def test_train_and_compare_share_the_comparisons_default_budget(monkeypatch):
    from cropi.selection import resolve

    for cmd in ("train", "compare"):
        cfg = _resolved(monkeypatch, [cmd])
        assert (cfg.train.selector, cfg.train.steps, cfg.select.stages, cfg.train.eval_every) == (
            "cropi_harvest", 600, None, 20)
        assert resolve(cfg).train.filter.method == "cropi_harvest"  # the default is a batch rule
        # the curriculum's stages are the authors' 10 steps long unless set
        cfg.train.selector = "cropi"
        assert resolve(cfg).select.stages == 60


def test_the_committed_comparison_config_still_loads_and_differs_only_in_what_the_defaults_moved(monkeypatch):
    committed = yaml.safe_load(COMPARE_DEFAULT.read_text())
    load_config(COMPARE_DEFAULT)  # every key it names still exists and is valid
    resolved = to_dict(_resolved(monkeypatch, ["compare"]))

    def common(a, b):  # keys present in both (the config has gained keys since)
        return {k: common(a[k], b[k]) if isinstance(a[k], dict) and isinstance(b[k], dict) and k != "weights" else a[k]
                for k in a if k in b}

    # what the renaming moved: the default selector, and the stage keys its rule now fills in
    moved = {("train", "selector"), ("select", "stages"), ("select", "size"), ("select", "candidates")}
    a, b = common(resolved, committed), common(committed, resolved)
    for section, key in moved:
        a[section].pop(key, None), b[section].pop(key, None)
    # what the factored scoring default moved (the committed runs scored one prompt per backward)
    for key in ("batch_size", "factored"):
        a["select"]["score"].pop(key, None), b["select"]["score"].pop(key, None)
    assert committed["select"]["score"]["batch_size"] == 1 and not committed["select"]["score"].get("factored", False)
    assert a == b


def test_compare_budget_on_the_command_line_keeps_twenty_evaluations(monkeypatch):
    cfg = _resolved(monkeypatch, ["compare", "--steps", "400"])
    assert (cfg.train.steps, cfg.train.eval_every) == (400, 20)
    cfg = _resolved(monkeypatch, ["compare", "--steps-per-stage", "25", "--stages", "2"])
    assert (cfg.train.steps, cfg.select.stages, cfg.train.eval_every) == (50, 2, 2)
    cfg = _resolved(monkeypatch, ["compare", "--steps", "400", "--set", "train.eval_every=7"])
    assert cfg.train.eval_every == 7  # --set comes last
    assert _resolved(monkeypatch, ["train", "--steps", "400"]).train.eval_every == 20


def test_steps_per_stage_multiplies_the_stages_in_force(monkeypatch, tmp_path):
    cfg = _resolved(monkeypatch, ["train", "--selector", "cropi", "--stages", "4", "--steps-per-stage", "50",
                                  "--select-ratio", "0.2", "--pool-seed", "7"])
    assert (cfg.train.selector, cfg.select.stages, cfg.train.steps, cfg.select.ratio, cfg.data.suite.pool_seed) == \
        ("cropi", 4, 200, 0.2, 7)
    f = tmp_path / "c.yaml"
    f.write_text("select:\n  stages: 3\n")
    assert _resolved(monkeypatch, ["train", "--config", str(f), "--steps-per-stage", "10"]).train.steps == 30


def test_seed_sets_one_key_per_command(monkeypatch):
    cfg = _resolved(monkeypatch, ["train", "--seed", "3"])
    assert (cfg.train.seed, cfg.rollout.seed) == (3, 0)
    cfg = _resolved(monkeypatch, ["collect", "--out", "x", "--seed", "3"])
    assert (cfg.train.seed, cfg.rollout.seed) == (0, 3)
    assert runner.invoke(app, ["score", "--seed", "1", "--pool-store", "p", "--val-store", "v"]).exit_code == 2


def test_score_options_set_score_keys_and_select_ratio(monkeypatch):
    cfg = _resolved(monkeypatch, ["score", "--pool-store", "p", "--val-store", "v", "--k", "64", "--select-ratio", "0.2",
                                  "--mode", "exact", "--chunk-size", "4", "--device", "cpu",
                                  "--set", "select.score.seed=5"])
    s = cfg.select.score
    assert (s.k, s.mode, s.chunk_size, s.seed, cfg.select.ratio, cfg.model.device) == (64, "exact", 4, 5, 0.2, "cpu")


def test_data_options_set_data_keys(monkeypatch):
    cfg = _resolved(monkeypatch, ["eval", "--val", "a=x.jsonl", "--test", "a=y.jsonl", "--test", "b=z.jsonl",
                                  "--field", "prompt=question", "--answer-format", "gsm8k", "--model", "m"])
    d = cfg.data
    assert (d.validation_files, d.test_files, d.fields, d.answer_format, cfg.model.name) == \
        (["a=x.jsonl"], ["a=y.jsonl", "b=z.jsonl"], {"prompt": "question"}, "gsm8k", "m")


def test_trl_names_are_accepted_by_set(monkeypatch):
    cfg = _resolved(monkeypatch, ["train", "--set", "num_generations=16", "--set", "beta=0.01",
                                  "--set", "learning_rate=3e-5", "--set", "loss_type=dr_grpo"])
    assert (cfg.rollout.group_size, cfg.train.kl_coef, cfg.train.lr, cfg.train.aggregation) == (16, 0.01, 3e-5, "dr_grpo")


def test_help_shows_the_config_defaults():
    for cmd in ("train", "compare"):
        out = " ".join(runner.invoke(app, [cmd, "--help"]).output.replace("│", " ").split())
        assert "(train.steps; default 600)" in out and "(select.stages; default null)" in out
    from lab.bench.__main__ import app as bench_app

    out = runner.invoke(bench_app, ["projection", "--help"], terminal_width=200).output
    assert "--projector" in out and "--config" not in out


def test_config_list_prints_every_key_with_default_and_help():
    from cropi.config import settings

    r = runner.invoke(app, ["config", "--list"])
    assert r.exit_code == 0
    lines = {line.split()[0]: line for line in r.output.splitlines()}
    for s in settings():
        assert s.default in lines[s.key] and s.help in lines[s.key]
    r = runner.invoke(app, ["config"])
    assert yaml.safe_load(r.output) == to_dict(RunConfig())


def _rejected(args: list[str], expect: str, *never_written: Path) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expect in lines[0] and lines[0].startswith("error:"), r.output
    for p in never_written:
        assert not p.exists(), p


@pytest.mark.parametrize("option,expect", [
    (["-g", "0"], "rollout.group_size: 0: must be >= 1"),
    (["-g", "-2"], "rollout.group_size: -2: must be >= 1"),
    (["--temperature", "-1"], "rollout.temperature: -1.0: must be > 0"),
    (["--top-p", "0"], "rollout.top_p: 0.0: must be in (0, 1]"),
    (["--top-p", "1.5"], "rollout.top_p: 1.5: must be in (0, 1]"),
    (["--max-new-tokens", "0"], "rollout.max_new_tokens: 0: must be >= 1"),
    (["--limit", "-3"], "--limit -3: must be >= 1"),
    (["--shard", "2/2"], "--shard '2/2': expected I/N"),
    (["--split", "train"], "--split 'train'"),
])
def test_collect_rejects_bad_input_before_writing(tmp_path, option, expect):
    out = tmp_path / "store"
    _rejected(["collect", "--out", str(out), *option], expect, out)


@pytest.mark.parametrize("override,expect", [
    ("select.ratio=1.5", "select.ratio: 1.5: must be in (0, 1]"),
    ("select.ratio=0", "select.ratio: 0.0: must be in (0, 1]"),
    ("select.stages=0", "select.stages: 0: must be >= 1"),
    ("select.refresh_every=-1", "select.refresh_every: -1: must be >= 0"),
    ("select.drift_ess_threshold=-0.5", "select.drift_ess_threshold: -0.5: must be in [0, 1]"),
    ("select.drift_ess_threshold=1.01", "select.drift_ess_threshold: 1.01: must be in [0, 1]"),  # ESS <= 1
    ("select.candidates=-1", "select.candidates: -1: must be >= 0"),
    ("eval.split=train", "eval.split: 'train': must be one of test, validation, validation_unscored"),
    ("train.aggregation=dapo", "train.aggregation: 'dapo': must be one of grpo, dr_grpo"),
    ("loss_type=bnpo", "train.aggregation: 'bnpo': must be one of grpo, dr_grpo"),
    ("train.lr=0", "train.lr: 0.0: must be > 0"),
    ("train.prompts_per_step=0", "train.prompts_per_step: 0: must be >= 1"),
    ("train.micro_batch=0", "train.micro_batch: 0: must be >= 1"),
    ("eval.batch_size=0", "eval.batch_size: 0: must be >= 1"),
    ("select.score.k=0", "select.score.k: 0: must be >= 1"),
    ("select.score.keep=0", "select.score.keep: 0.0: must be in (0, 1]"),
    ("select.score.kind=countsketch", "select.score.kind: 'countsketch': must be one of sjlt, gaussian, rademacher"),
    ("select.score.mode=fast", "select.score.mode: 'fast': must be one of projected, exact, auto"),
    ("train.selector=best", "train.selector: 'best' is not a rule"),
])
@pytest.mark.parametrize("cmd", ["train", "compare"])
def test_run_commands_reject_bad_config_before_any_output(tmp_path, cmd, override, expect):
    out = tmp_path / "run"
    _rejected([cmd, "--out", str(out), "--set", override], expect, out)


@pytest.mark.parametrize("cmd", ["train", "compare"])
def test_more_stages_than_steps_are_refused_only_for_the_selector_that_re_selects_every_stage(tmp_path, cmd):
    from cropi.runs.run import resolve_selector

    out = tmp_path / "run"
    which = ["--selector", "cropi"] if cmd == "train" else ["--selectors", "online_influence,cropi"]
    _rejected([cmd, "--out", str(out), *which, "--set", "select.stages=601"],
              "select.stages: 601: must be at most train.steps (600) for 'cropi'", out)
    for selector in ("full", "online_influence", "static_influence"):  # they choose once: a short run keeps one stage a step
        cfg = resolve_selector(load_config(None, [f"train.selector={selector}", "train.steps=2"]))
        assert (cfg.select.stages, cfg.train.steps) == (2, 2)


def test_compare_rejects_a_bad_selector_before_writing(tmp_path):
    out = tmp_path / "cmp"
    _rejected(["compare", "--out", str(out), "--selectors", "full,best"], "'best' is not a rule", out)
    _rejected(["compare", "--out", str(out), "--select-ratio", "1.5"], "select.ratio: 1.5", out)


def test_score_and_select_reject_bad_config_before_writing(tmp_path):
    out = tmp_path / "s.parquet"
    _rejected(["score", "--pool-store", str(tmp_path), "--val-store", f"a={tmp_path}", "--out", str(out), "--k", "0"],
              "select.score.k: 0", out)
    _rejected(["score", "--pool-store", str(tmp_path), "--val-store", f"a={tmp_path}", "--range", "x:y",
               "--gradients", str(tmp_path / "g")], "--range 'x:y'", tmp_path / "g")
    _rejected(["select", "--scores", str(out), "--out", str(tmp_path / "c.jsonl"), "--select-ratio", "2"],
              "select.ratio: 2.0", tmp_path / "c.jsonl")


def test_bad_value_in_a_config_file_names_its_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\nrollout:\n  group_size: -2\n")
    out = tmp_path / "run"
    _rejected(["train", "--config", str(f), "--out", str(out)], f"c.yaml:4: rollout.group_size: -2: must be >= 1", out)


@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_missing_data_file_stops_train_and_compare_before_any_output(tmp_path, command):
    out = tmp_path / "run"
    missing = str(tmp_path / "nope.jsonl")
    _rejected([command, "--out", str(out), "--pool", missing, "--val", f"a={missing}", "--test", f"a={missing}"], "nope.jsonl", out)


def test_a_selector_variant_that_breaks_the_budget_stops_compare_before_any_output(tmp_path):
    out = tmp_path / "cmp"
    _rejected(["compare", "--out", str(out), "--selectors", "full,cropi+stages700"], "select.stages: 700", out)


def test_steps_per_stage_multiplies_the_stages_set_with_set(monkeypatch):
    cfg = _resolved(monkeypatch, ["train", "--steps-per-stage", "50", "--set", "select.stages=8"])
    assert cfg.select.stages == 8 and cfg.train.steps == 400
