import re

import pytest

from cropi.config import RunConfig, apply_override, dump_config, load_config
from cropi.errors import ConfigError


def test_yaml_roundtrip_and_overrides(tmp_path):
    cfg = load_config(None, ["train.lr=3e-5", "data.suite.targeted=add,mul", "rollout.temperature=0.9",
                             "data.suite.weights={add: 2}", "train.betas=[0.9, 0.95]"])
    assert cfg.train.lr == 3e-5 and cfg.data.suite.targeted == ["add", "mul"]
    assert cfg.data.suite.weights == {"add": 2.0} and cfg.train.betas == (0.9, 0.95)
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert dump_config(again) == dump_config(cfg)


@pytest.mark.parametrize("override,match", [
    ("train.nope=1", "unknown key"),
    ("nosection.x=1", "no section"),
    ("train.steps=abc", "expected int"),
    ("train.steps", "section.key=value"),
])
def test_bad_overrides_are_clear(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_override(RunConfig(), override)


def test_bad_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+"):
        load_config(p)
    p.write_text("train:\n  bogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(p)


def test_every_config_key_has_a_one_line_help():
    from cropi.config import settings

    for s in settings():
        assert s.help and "\n" not in s.help, s.key


def test_defaults_are_valid_and_validation_names_key_value_and_expectation():
    from cropi.config import validate

    validate(RunConfig())
    cfg = RunConfig()
    cfg.rollout.group_size = -2
    with pytest.raises(ConfigError, match=r"^rollout.group_size: -2: must be >= 1$"):
        validate(cfg)


def test_bad_value_from_a_file_names_file_and_line_unless_overridden(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  steps: 5\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: train.lr: -1.0: must be > 0"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"^train.lr: -2.0"):
        load_config(p, ["train.lr=-2"])
    assert load_config(p, ["train.lr=1e-3"]).train.lr == 1e-3
    p.write_text("train:\n  steps: abc\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: train.steps: expected int"):
        load_config(p)


def test_trl_names_map_to_existing_keys_and_unsupported_loss_types_fail():
    from cropi.config import TRL_NAMES, settings

    keys = {s.key for s in settings()}
    assert set(TRL_NAMES.values()) <= keys
    cfg = load_config(None, ["num_generations=16", "max_completion_length=32", "epsilon=0.3", "num_iterations=2",
                             "max_steps=50", "seed=4", "top_p=1.0", "temperature=0.7"])
    assert (cfg.rollout.group_size, cfg.rollout.max_new_tokens, cfg.train.clip_eps, cfg.train.ppo_epochs) == (16, 32, 0.3, 2)
    assert (cfg.train.steps, cfg.train.seed, cfg.rollout.top_p, cfg.rollout.temperature) == (50, 4, 1.0, 0.7)
    mapped = RunConfig()  # a top_p below 1 maps too, and is then refused by validation
    assert apply_override(mapped, "top_p=0.9") == "rollout.top_p" and mapped.rollout.top_p == 0.9
    with pytest.raises(ConfigError, match="train.aggregation: 'dapo': must be one of grpo, dr_grpo"):
        load_config(None, ["loss_type=dapo"])


def test_docs_list_every_key_and_trl_name_as_the_code_declares_them():
    from pathlib import Path

    from cropi.config import TRL_NAMES, settings_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    listing = doc.split("<!-- cropi config --list -->\n```text\n", 1)[1].split("\n```", 1)[0]
    assert listing == settings_table(), "docs/config.md is stale: paste `cropi config --list` into it"
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `") for line in doc.splitlines()
            if line.startswith("| `")}
    assert rows == TRL_NAMES


@pytest.mark.parametrize("backend", ["hf", "vllm"])
@pytest.mark.parametrize("name", ["rollout.top_p", "top_p"])
def test_top_p_below_one_is_refused_for_every_backend(backend, name):
    expect = "rollout.top_p: 0.9: must be 1.0: behaviour log-probs for influence scoring are of the full softmax"
    with pytest.raises(ConfigError, match=re.escape(expect)):
        load_config(None, [f"rollout.backend={backend}", f"{name}=0.9"])
    assert load_config(None, [f"rollout.backend={backend}", f"{name}=1.0"]).rollout.top_p == 1.0


@pytest.mark.parametrize("override,expect", [
    ("data.suite.pool_size=-1", "data.suite.pool_size: -1: must be >= 1"),
    ("data.suite.val_size=0", "data.suite.val_size: 0: must be >= 1"),
    ("data.suite.targeted=zzz", "data.suite.targeted: ['zzz']: must be among data.suite.families"),
    ("data.suite.families=[]", "data.suite.families: []: must be a non-empty list"),
    ("data.suite.difficulty_weights=0,0,0,0,0", "data.suite.difficulty_weights"),
    ("model.device=gpu7", "model.device: 'gpu7': must be auto, cpu, cuda, cuda:N or mps"),
])
def test_suite_composition_and_device_are_validated_at_load(override, expect):
    from cropi.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(expect)):
        load_config(None, [override])
