"""cropi's batch rules inside TRL's real GRPOTrainer on CPU, the way a TRL user runs it: their own
``datasets.Dataset`` and reward function.  What TRL fed its loss (read from the model's own forwards) is exactly
the rule's choice, whole groups of num_generations; the harvest equals each trained group's gradient formed and
projected; the user's output_dir holds TRL's checkpoints and cropi's records; a run resumes with the rule's state."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.policy import load_policy
from cropi.tasks.loading import load_data
from cropi.tasks.synthetic import FAMILIES
from tests.conftest import small_suite_overrides
from tests.popi_helpers import formed_group_gradient

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from cropi.integrations.trl_rules import CropiGRPOTrainer, rule_config  # noqa: E402

G = 8
ROWS = 32  # one generation batch: 4 prompts x 8
RULES = ["cropi_harvest", "online_filter", "greso"]


@pytest.fixture(scope="module")
def user_data():
    """The user's data as a TRL user has it: plain prompts and their own answer column (``solution``: the text
    the tiny policy should write, e.g. sums least significant digit first), and validation sets alike."""
    suite = load_data(load_config(None, small_suite_overrides() + ["data.suite.val_size=24"]).data)

    def table(problems):
        return datasets.Dataset.from_list([{"prompt": p.prompt, "solution": FAMILIES[p.family].target_text(p.answer),
                                            "topic": p.family} for p in problems])

    return table(suite.pool), {name: table(v) for name, v in suite.validation.items()}


def exact_match(completions, solution, **kwargs):
    """The user's reward: 1 when the completion, spaces removed, is the solution."""
    return [1.0 if "".join(c.split()) == s else 0.0 for c, s in zip(completions, solution)]


def _args(out, **extra):
    kw = dict(output_dir=str(out), max_steps=3, loss_type="grpo", learning_rate=1e-3, per_device_train_batch_size=16,
              gradient_accumulation_steps=2, num_generations=G, max_completion_length=8, temperature=1.0,
              use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
              logging_steps=1, disable_tqdm=True, seed=0)
    kw.update(extra)
    return trl.GRPOConfig(**kw)


def _trainer(rule, data, out, reward=exact_match, **extra):
    pool, val = data
    policy = load_policy("tiny", device="cpu")
    return CropiGRPOTrainer(rule=rule, model=policy.model, processing_class=policy.tokenizer,
                            reward_funcs=reward, args=_args(out, **extra), train_dataset=pool,
                            validation=val if rule == "cropi_harvest" else None, family_column="topic",
                            rule_settings=["select.score.max_val_prompts=24"]), policy


class _Fed:
    """Every sequence the model was fed with gradients on (TRL's loss forwards; generation and TRL's no-grad
    log-prob passes are left out), as (prompt index, rows)."""

    def __init__(self, model, prompts: dict[tuple, int]):
        self.calls: list[list[int]] = []
        self.prompts = prompts
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if ids is None or not torch.is_grad_enabled() or not module.training:
            return
        call = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            seq = tuple(t for t, keep in zip(row, m) if keep)
            hits = [i for p, i in self.prompts.items() if seq[:len(p)] == p]
            assert len(hits) == 1, seq
            call.append(hits[0])
        self.calls.append(call)


@pytest.mark.parametrize("rule", RULES)
def test_trl_trains_on_exactly_the_groups_the_rule_chose(rule, user_data, tmp_path):
    graded = []

    def counted(completions, **kwargs):
        graded.append(len(completions))
        return exact_match(completions, **kwargs)

    trainer, policy = _trainer(rule, user_data, tmp_path / "out", reward=counted)
    prompts = {tuple(policy.encode_prompt(p)): i for i, p in enumerate(user_data[0]["prompt"])}
    assert len(prompts) == len(user_data[0])
    fed = _Fed(trainer.model, prompts)
    trainer.train()

    steps = trainer.cropi_steps
    assert [s["step"] for s in steps] == [0, 1, 2]
    for s, (first, second) in zip(steps, zip(fed.calls[0::2], fed.calls[1::2])):  # 2 micro-batches a step
        assert len(first) == len(second) == ROWS // 2
        # TRL's loss saw each chosen prompt num_generations times (a prompt drawn twice: twice that), nothing else
        assert Counter(first + second) == Counter({p: G * n for p, n in Counter(s["prompts"]).items()})
        assert len(s["prompts"]) == ROWS // G
    assert len(fed.calls) == 2 * len(steps)
    # the rule kept groups with mixed rewards, so TRL saw no group whose advantages are all zero
    logged = [h for h in trainer.state.log_history if "frac_reward_zero_std" in h]
    for s, h in zip(steps, logged):
        assert h["frac_reward_zero_std"] == pytest.approx(1 - s["mixed"] / len(s["prompts"]))
    assert sum(s["mixed"] for s in steps) > 0
    # every sampled completion was graded once: TRL trained on the grades the rule saw, without grading again
    validation = 0 if rule != "cropi_harvest" else 2 * 24 * G  # the harvest's validation groups, sampled once
    assert sum(graded) == sum(s["sampled_sequences"] for s in steps) + validation
    # each rule's own state moved: GRESO's history, the screen's queue or stream, the harvested scores
    state = trainer.cropi_state
    assert state["cursor"] > 0
    if rule == "greso":
        assert state["greso_history"]
    if rule == "cropi_harvest":
        assert state["harvest"] and set(state["harvest_families"]) <= {"add", "sub", "mul", "cmp", "count", "sort",
                                                                        "mod", "word"}
    # the user's output_dir: cropi's record beside TRL's files
    record = json.loads((tmp_path / "out" / "cropi_rule.json").read_text())
    assert record["rule"] == rule and record["steps"] == steps and record["schema_version"] == 1
    assert trainer.args.output_dir == str(tmp_path / "out")


@pytest.mark.parametrize("checkpointing", [False, True])  # TRL's default recomputes activations in the backward
def test_the_harvest_is_each_trained_groups_gradient_of_trls_loss_projected(user_data, tmp_path, checkpointing):
    trainer, policy = _trainer("cropi_harvest", user_data, tmp_path / "out", max_steps=1,
                               gradient_checkpointing=checkpointing)
    start = copy.deepcopy(trainer.model.state_dict())
    seen = {}
    harvested = trainer.cropi_rule.harvested

    def spy(policy_, step, batch, projected):
        seen["batch"], seen["projected"] = batch, projected.clone()
        return harvested(policy_, step, batch, projected)

    trainer.cropi_rule.harvested = spy
    trainer.train()
    assert trainer.model.is_gradient_checkpointing == checkpointing  # Trainer switches it on in train()
    batch, got = seen["batch"], seen["projected"]
    assert got.shape[0] == ROWS // G and any(g.mixed for g in batch.groups)
    # TRL's fused LM head never calls the output layer (tied here to the input embedding): left out of the sketch
    assert trainer.cropi_cfg.select.score.exclude == ["model.embed_tokens.weight"]
    assert "model.embed_tokens.weight" not in trainer.cropi_rule.sketch(policy).names

    reference = load_policy("tiny", device="cpu")
    reference.model.load_state_dict(start)
    sketch = trainer.cropi_rule.sketch(reference)
    model = reference.model
    for grp, row in zip(batch.groups, got):
        # the group's loss as TRL writes it at the weights it was sampled from (ratio 1), formed, then projected
        ref = sketch.project(formed_group_gradient(model, grp, behaviour=False))
        if not grp.mixed:
            assert float(row.norm()) < 1e-6
            continue
        assert float((row - ref).norm()) / float(ref.norm()) < 1e-4


def test_a_resumed_run_restores_the_rules_state_from_the_checkpoint(user_data, tmp_path):
    out = tmp_path / "out"
    trainer, _ = _trainer("greso", user_data, out, save_strategy="steps", save_steps=2)
    trainer.train()
    saved = json.loads((out / "checkpoint-2" / "cropi_rule_state.json").read_text())
    assert saved["rule"] == "greso" and [s["step"] for s in saved["steps"]] == [0, 1]
    resumed, _ = _trainer("greso", user_data, out, save_strategy="steps", save_steps=2)
    seen = {}
    build = resumed.cropi_rule.build

    def spy(policy, problems, step, extra):
        seen.setdefault("first", (step, json.loads(json.dumps(extra))))
        return build(policy, problems, step, extra)

    resumed.cropi_rule.build = spy
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert seen["first"] == (2, saved["state"])  # the third step starts from the state after the second
    assert [s["step"] for s in resumed.cropi_steps] == [0, 1, 2]
    with pytest.raises(CropiError, match="rule is 'greso'"):
        _trainer("dapo", user_data, out)[0].train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_settings_a_rule_cannot_honour_are_refused_in_one_line(user_data, tmp_path):
    with pytest.raises(CropiError, match="validation="):
        _trainer("cropi_harvest", (user_data[0], None), tmp_path / "a")
    with pytest.raises(CropiError, match="loss_type"):
        _trainer("cropi_harvest", user_data, tmp_path / "b", loss_type="dapo")
    with pytest.raises(CropiError, match="choose one of"):
        _trainer("cropi", user_data, tmp_path / "c")
    with pytest.raises(CropiError, match="steps_per_generation=4"):  # one batch per optimizer step
        _trainer("greso", user_data, tmp_path / "f", steps_per_generation=4)
    with pytest.raises(CropiError, match="family_column"):
        pool, _ = user_data
        policy = load_policy("tiny", device="cpu")
        CropiGRPOTrainer(rule="greso", model=policy.model, processing_class=policy.tokenizer, reward_funcs=exact_match,
                         args=_args(tmp_path / "d"), train_dataset=pool, family_column="nope")
    # any TRL loss is fine for a rule that does not score gradients
    trainer, _ = _trainer("greso", user_data, tmp_path / "e", loss_type="dapo")
    assert trainer.cropi_cfg.train.prompts_per_step == ROWS // G


def test_the_rule_config_scales_cropis_batch_settings_to_trls_batch(tmp_path):
    args = _args(tmp_path)
    cfg = rule_config(args, "online_filter")
    assert (cfg.train.prompts_per_step, cfg.rollout.group_size) == (4, G)
    assert (cfg.train.filter.gen_batch_prompts, cfg.train.filter.greso_min_gen_prompts) == (12, 2)
    assert cfg.train.filter.screen_samples == G // 2 and cfg.train.filter.method == "online_filter"
    assert rule_config(args, "greso", ["train.filter.gen_batch_prompts=20"]).train.filter.gen_batch_prompts == 20
    assert (cfg.rollout.temperature, cfg.rollout.max_new_tokens, cfg.train.seed) == (1.0, 8, 0)


def _example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "trl_rules.py"
    spec = importlib.util.spec_from_file_location("trl_rules_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_the_example_trains_with_a_rule_and_prints_each_steps_choice(capsys, tmp_path):
    assert _example().main(["--out", str(tmp_path / "run"), "--rule", "cropi_harvest", "--steps", "2"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    record = json.loads((tmp_path / "run" / "cropi_rule.json").read_text())
    assert len(lines) == len(record["steps"]) == 2
    assert all(f"trained prompts {s['prompts']}" in x for s, x in zip(record["steps"], lines))


def test_without_trl_the_trainer_and_the_example_stop_in_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    import importlib.util
    import sys

    from cropi.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now fails as if it were not installed
    spec = importlib.util.find_spec("cropi.integrations.trl_rules")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)  # the module itself imports without TRL
    with pytest.raises(MissingExtra, match=r"cropi\[trl\]"):
        fresh.CropiGRPOTrainer
    assert _example().main(["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'cropi[trl]'" in err
    assert not (tmp_path / "run").exists()
