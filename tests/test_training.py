"""GRPO trainer, checkpoints and the run folder, on the micro model."""

import json

import torch
from safetensors.torch import load_file

from cropi.config import load_config
from cropi.runs.run import run_training
from tests.conftest import small_suite_overrides


def _cfg(model_dir, steps=4, **extra):
    sets = small_suite_overrides() + [
        f"model.name={model_dir}", f"train.steps={steps}", "train.prompts_per_step=4", "rollout.group_size=4",
        "rollout.max_new_tokens=6", "eval.max_new_tokens=6", "train.eval_every=2", "train.checkpoint_every=2",
        "train.lr=1e-3", "model.device=cpu", "select.stages=1", "train.selector=full",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, sets)


def test_run_folder_summary_and_report(micro_model_dir, tmp_path):
    summary = run_training(_cfg(micro_model_dir), tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.md", "accuracy.png", "final_model/config.json"):
        assert (run / name).exists(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["schema_version"] == 1
    for key in ("selector", "seed", "steps", "train_seconds", "curve", "best_targeted"):
        assert key in s
    assert "wall_seconds" not in s  # one name for the training seconds, read by compare and the CLI
    assert "training wall time" in (run / "report.md").read_text() and s["train_seconds"] > 0
    assert [c["step"] for c in s["curve"]] == [0, 2, 4]
    assert all(0 <= c["targeted"] <= 1 and 0 <= c["untargeted"] <= 1 for c in s["curve"])
    assert s["steps"] == 4 and summary["best_targeted"] == max(c["targeted"] for c in s["curve"])
    # nothing in the run records the machine it ran on: seconds compare on one machine, which is the lab's business
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("load") for r in rows for k in r)
    assert not {"machine", "host", "load_1min_at_evals"} & set(s)
    # the resolved config reproduces the run
    again = load_config(run / "config.yaml")
    assert again.train.steps == 4 and again.model.name == str(micro_model_dir)


def test_resume_is_bitwise_equal_to_uninterrupted(micro_model_dir, tmp_path):
    run_training(_cfg(micro_model_dir, steps=4, **{"train.ppo_epochs": 2}), tmp_path / "full")
    # "interrupted" after step 2: a run with a 2-step budget, then the same config resumed to 4
    cfg2 = _cfg(micro_model_dir, steps=4, **{"train.ppo_epochs": 2})
    cfg2.train.steps = 2
    run_training(cfg2, tmp_path / "part")
    (tmp_path / "part" / "config.yaml").unlink()  # the budget changed; the rest is identical
    run_training(_cfg(micro_model_dir, steps=4, **{"train.ppo_epochs": 2}), tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "final_model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final_model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "part" / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "step"]
    assert steps == [1, 2, 3, 4]


def test_grpo_learns_a_trivial_preference(micro_model_dir, tmp_path):
    """A one-token bandit (reward iff the response is "7"): mean reward rises within 40 GRPO steps."""
    from cropi.policy import load_policy
    from cropi.tasks.problem import Problem
    from cropi.training.grpo import make_optimizer, grpo_step

    cfg = _cfg(micro_model_dir, **{"train.lr": 3e-3, "rollout.max_new_tokens": 1, "rollout.group_size": 16})
    pol = load_policy(str(micro_model_dir), device="cpu")
    # reward 1 iff the single response token is "7": a bandit the policy can learn in a few steps
    probs = [Problem(f"p{i}", f"count a {'ab' * (i + 1)}=", "7", "count") for i in range(4)]
    opt = make_optimizer(pol.model, cfg.train)
    first = [grpo_step(pol, opt, probs, s, cfg.train, cfg.rollout).reward_mean for s in range(3)]
    for s in range(3, 40):
        last = grpo_step(pol, opt, probs, s, cfg.train, cfg.rollout).reward_mean
    assert last > max(0.5, sum(first) / 3 + 0.3)


def test_step_prompts_are_slices_of_seeded_epoch_permutations():
    import random

    from cropi.tasks.problem import Problem
    from cropi.training.grpo import step_prompts

    probs = [Problem(f"p{i}", "1+1=", "2", "add") for i in range(10)]
    epoch0 = [p.id for s in range(5) for p in step_prompts(probs, s, 2, seed=3)]
    assert sorted(epoch0) == sorted(p.id for p in probs)

    # independently: epoch e is range(10) shuffled by random.Random("seed:e"); step 7 of 4 prompts takes
    # global positions 28..31, i.e. the last two of epoch 2 and the first two of epoch 3
    def order(epoch):
        idx = list(range(10))
        random.Random(f"3:{epoch}").shuffle(idx)
        return idx

    expected = [f"p{order(2)[8]}", f"p{order(2)[9]}", f"p{order(3)[0]}", f"p{order(3)[1]}"]
    assert [p.id for p in step_prompts(probs, 7, 4, 3)] == expected


def test_validation_split_evaluation_for_choosing_settings(micro_model_dir, tmp_path):
    import pytest

    from cropi.errors import ConfigError

    s = run_training(_cfg(micro_model_dir, steps=2, **{"eval.split": "validation"}), tmp_path / "v")
    # validation holds the targeted families only: no untargeted accuracy, and its sizes are the validation sets'
    assert all(c["untargeted"] is None for c in s["curve"])
    assert set(s["per_family_final"]) == {"add", "sub"} and s["eval_n"] == {"add": 8, "sub": 8}
    with pytest.raises(ConfigError, match="eval.split"):
        run_training(_cfg(micro_model_dir, steps=2, **{"eval.split": "tests"}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_a_stored_config_resumes_when_a_key_added_since_has_its_default_and_only_then(micro_model_dir):
    import yaml

    from cropi.config import dump_config
    from cropi.runs.run import same_config

    cfg = _cfg(micro_model_dir)
    older = yaml.safe_load(dump_config(cfg))
    del older["train"]["filter"]["screen_skip_p"]  # as written before the key existed
    older_text = yaml.safe_dump(older, sort_keys=False)
    assert same_config(dump_config(cfg), cfg) and same_config(older_text, cfg)
    cfg.train.filter.screen_skip_p = 0.5  # the new key away from its default: a different run
    assert not same_config(older_text, cfg)
    changed = yaml.safe_load(dump_config(_cfg(micro_model_dir)))
    changed["train"]["lr"] = 0.5
    assert not same_config(yaml.safe_dump(changed), _cfg(micro_model_dir))
    assert not same_config("train: [1, 2]\n", cfg) and not same_config("train:\n  lr: [\n", cfg)


def test_validation_unscored_evaluates_only_the_validation_prompts_no_score_reads(micro_model_dir, tmp_path):
    import pytest

    from cropi.errors import ConfigError
    from cropi.tasks.synthetic import SuiteConfig, build_suite

    cfg = _cfg(micro_model_dir, steps=2, **{"eval.split": "validation_unscored", "select.score.max_val_prompts": 3})
    run_training(cfg, tmp_path / "u")
    items = json.loads((tmp_path / "u" / "final_eval_items.json").read_text())["items"]
    suite = build_suite(SuiteConfig(pool_size=40, val_size=8, test_size_targeted=12, test_size_untargeted=6))
    # the first 3 of each 8-prompt validation set drive the influence scores: only the other 5 are evaluated
    assert set(items) == {p.id for probs in suite.validation.values() for p in probs[3:]}
    too_many = _cfg(micro_model_dir, steps=2, **{"eval.split": "validation_unscored", "select.score.max_val_prompts": 8})
    with pytest.raises(ConfigError, match="no prompts beyond"):
        run_training(too_many, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
