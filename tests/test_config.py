import pytest

from cropi.config import RunConfig, apply_override, dump_config, load_config
from cropi.errors import ConfigError


def test_yaml_roundtrip_and_overrides(tmp_path):
    cfg = load_config(None, ["train.lr=3e-5", "data.suite.targeted=add,mul", "rollout.top_p=0.9",
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
