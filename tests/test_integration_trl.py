"""TRL's real GRPOTrainer driven by cropi's stages on CPU: what each stage trains on is cropi's own selection for
the weights at the boundary, TRL's groups stay whole, the prompts are tokenized as cropi scores them, and the
optimizer and LR schedule run on across stages."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.extras import MissingExtra
from cropi.integrations.trl import (NEUTRAL_SETTINGS, check_prompt_tokens, live_policy, prompt_value, scoring_config,
                                    trl_prompt_ids)
from cropi.policy import load_policy
from cropi.tasks.loading import load_data
from tests.conftest import small_suite_overrides

GENERATIONS = 8
PROMPTS_PER_STEP = 2
STEPS = 4  # 2 stages x 2 steps: each stage sees 4 prompts, exactly the subset cropi selects
LR = 1e-3


# the tiny chat template the tests put on the tiny tokenizer; ``terse`` (a chat-template kwarg) drops the role
CHAT_TEMPLATE = ("{% for m in messages %}<bos>{% if not terse %}{{ m['role'] }}: {% endif %}{{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture(scope="module")
def tiny():
    """The tiny policy for tests that never train it."""
    return load_policy("tiny", device="cpu")


def _cfg():
    # the embedded tiny policy: influence needs mixed reward groups, which a random model never gets
    return load_config(None, small_suite_overrides() + [
        "data.suite.pool_size=16", "data.suite.val_size=8", "model.device=cpu", "select.stages=2",
        "select.ratio=0.25", "select.candidates=0", "select.size=0", "select.score.batch_size=4",
        "rollout.group_size=6", "select.score.max_val_prompts=4", "select.score.k=64",
    ])


def _args(trl, out, **extra):
    kw = dict(output_dir=str(out), max_steps=STEPS, loss_type="grpo", learning_rate=LR, lr_scheduler_type="linear",
              per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS, num_generations=GENERATIONS,
              max_completion_length=8, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
              report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    kw.update(extra)
    return trl.GRPOConfig(**kw)


class _Watch:
    """A TrainerCallback (made from TRL's base class below) recording, per stage: the optimizer and scheduler
    objects the trainer stepped, the learning rate after each step, the weights at the end, and every prompt
    sequence the model was fed while TRL trained."""

    def __init__(self, model):
        self.optimizers, self.schedulers, self.lrs, self.weights, self.fed = [], [], [], [], []
        self.recording = False
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if self.recording:
            ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
            if ids is not None and ids.shape[1] > 1:
                for row, m in zip(ids.tolist(), (mask if mask is not None else torch.ones_like(ids)).tolist()):
                    self.fed.append(tuple(t for t, keep in zip(row, m) if keep))

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kw):
        self.recording = True
        self.optimizers.append(getattr(optimizer, "optimizer", optimizer))  # under accelerate's wrapper
        self.schedulers.append(lr_scheduler)
        self.lrs.append([])

    def on_step_end(self, args, state, control, lr_scheduler=None, **kw):
        self.lrs[-1].append(lr_scheduler.get_last_lr()[0])

    def on_train_end(self, args, state, control, model=None, **kw):
        self.recording = False
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_trl_stage_trains_on_cropi_selection_with_one_optimizer_and_schedule(tmp_path):
    trl = pytest.importorskip("trl")
    from transformers import TrainerCallback

    from cropi.integrations.trl import train_stages
    from cropi.scores.engine import score_pool
    from cropi.selection.export import select_from_scores

    cfg = _cfg()
    suite = load_data(cfg.data)
    policy = load_policy("tiny", device="cpu")
    start = copy.deepcopy(policy.model.state_dict())
    watch = type("Watch", (_Watch, TrainerCallback), {})(policy.model)
    out = tmp_path / "run"
    result = train_stages(policy.model, policy.tokenizer, suite, _args(trl, tmp_path / "trl"), cfg, out,
                          callbacks=[watch])
    s0, s1 = result.stages

    # the stage-1 subset is cropi's own selection, scored independently from the stage-0-end weights
    boundary = load_policy("tiny", device="cpu")
    boundary.model.load_state_dict(watch.weights[0])
    assert any(not torch.equal(start[k], watch.weights[0][k]) for k in start)  # stage 0 moved the weights
    scored = score_pool(boundary, out / "stores" / "pool", {n: out / "stores" / f"val-{n}" for n in suite.validation},
                        tmp_path / "independent.parquet", result.cfg)
    independent = select_from_scores(tmp_path / "independent.parquet", suite.pool).ids
    assert independent == scored.ranking.ids == s1.selected
    assert set(s1.trained) == set(independent) and len(independent) == PROMPTS_PER_STEP * 2
    assert set(s0.trained) == set(s0.selected)

    # TRL's groups: every prompt num_generations times in a row, whole generation batches
    for rec in (s0, s1):
        assert len(rec.trained) == 2 * PROMPTS_PER_STEP * GENERATIONS
        groups = [rec.trained[i:i + GENERATIONS] for i in range(0, len(rec.trained), GENERATIONS)]
        assert all(len(set(g)) == 1 for g in groups)

    # what TRL fed the model begins with the tokens cropi scores (Policy.encode_prompt)
    by_id = {p.id: p for p in suite.pool}
    for pid in set(s0.trained) | set(s1.trained):
        ids = tuple(policy.encode_prompt(by_id[pid].prompt))
        assert any(seq[:len(ids)] == ids and len(seq) > len(ids) for seq in watch.fed), pid

    # one optimizer and one schedule: Adam's step count and the LR run on from stage 0 into stage 1
    assert watch.optimizers[0] is watch.optimizers[1] is result.optimizer
    assert watch.schedulers[0] is watch.schedulers[1] is result.scheduler
    assert (s0.optimizer_steps, s1.optimizer_steps) == (2, 4)
    linear = [LR * (1 - s / STEPS) for s in range(1, STEPS + 1)]
    assert watch.lrs[0] + watch.lrs[1] == pytest.approx(linear)
    assert s1.lr_first == pytest.approx(s0.lr_after) == pytest.approx(LR / 2)
    assert (out / "stages" / "stage-01" / "selection.json").exists() and (out / "trl_stages.json").exists()

    # a folder that already holds a staged run is refused before anything trains
    with pytest.raises(CropiError, match="new folder"):
        train_stages(policy.model, policy.tokenizer, suite, _args(trl, tmp_path / "trl2"), cfg, out)


def test_a_loss_cropi_cannot_score_is_refused_in_one_line():
    trl = pytest.importorskip("trl")
    with pytest.raises(CropiError) as info:
        scoring_config(_args(trl, "/nonexistent", loss_type="dapo"), _cfg())
    assert "loss_type" in str(info.value) and "\n" not in str(info.value)
    cfg = scoring_config(_args(trl, "/nonexistent", loss_type="dr_grpo", temperature=0.7, num_iterations=2, beta=0.04,
                               epsilon_high=0.2, top_k=0), _cfg())
    assert (cfg.train.aggregation, cfg.rollout.temperature, cfg.rollout.max_new_tokens) == ("dr_grpo", 0.7, 8)
    assert (cfg.train.ppo_epochs, cfg.train.kl_coef) == (2, 0.04)  # TRL's names for them (config.TRL_NAMES)


# one value per setting that changes what TRL samples or the loss it differentiates away from what cropi scores
OTHER_OBJECTIVES = {
    "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "generation_kwargs": {"top_k": 5},
    "top_entropy_quantile": 0.2, "importance_sampling_level": "sequence", "mask_truncated_completions": True,
    "delta": 1.5, "entropy_coef": 0.01, "use_adaptive_entropy": True, "off_policy_mask_threshold": 0.5,
    "reward_weights": [2.0], "multi_objective_aggregation": "normalize_then_sum", "epsilon_high": 0.28,
}


@pytest.mark.parametrize("name", sorted(OTHER_OBJECTIVES))
def test_a_setting_that_changes_trls_sampling_or_loss_is_refused_in_one_line_naming_it(name):
    trl = pytest.importorskip("trl")
    with pytest.raises(CropiError) as info:
        scoring_config(_args(trl, "/nonexistent", **{name: OTHER_OBJECTIVES[name]}), _cfg())
    assert f"GRPOConfig.{name}=" in str(info.value) and "\n" not in str(info.value)


def test_every_neutral_setting_has_a_refusal_test_and_trls_default_is_neutral():
    trl = pytest.importorskip("trl")
    assert set(NEUTRAL_SETTINGS) | {"epsilon_high"} == set(OTHER_OBJECTIVES)
    defaults = trl.GRPOConfig(output_dir="/nonexistent", report_to="none", use_cpu=True)
    assert all(getattr(defaults, n) in NEUTRAL_SETTINGS[n][0] for n in NEUTRAL_SETTINGS)


def test_chat_template_prompts_are_conversations_tokenized_as_cropi_encodes(tiny):
    policy = tiny
    problems = load_data(_cfg().data).pool[:5]
    assert prompt_value(policy.tokenizer, "1+1=") == "1+1="  # the tiny tokenizer has no chat template
    check_prompt_tokens(policy, policy.tokenizer, problems)
    chat = copy.deepcopy(policy.tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    chat_policy = live_policy(policy.model, chat, "tiny")
    values = [prompt_value(chat, p.prompt) for p in problems]
    assert values[0] == [{"role": "user", "content": problems[0].prompt}]
    assert trl_prompt_ids(chat, values) == [chat_policy.encode_prompt(p.prompt) for p in problems]
    check_prompt_tokens(chat_policy, chat, problems)
    with pytest.raises(CropiError, match="tokenize"):  # cropi encoding with a template TRL would not apply
        check_prompt_tokens(chat_policy, policy.tokenizer, problems)

    # TRL renders the template with GRPOConfig.chat_template_kwargs: kwargs that change the tokens are refused
    terse = trl_prompt_ids(chat, values, {"terse": True})
    assert terse != trl_prompt_ids(chat, values) and terse[0] == chat(
        text=f"<bos>{problems[0].prompt}\nassistant: ", add_special_tokens=False)["input_ids"]
    check_prompt_tokens(chat_policy, chat, problems, {"terse": False})
    with pytest.raises(CropiError, match="chat_template_kwargs") as info:
        check_prompt_tokens(chat_policy, chat, problems, {"terse": True})
    assert "\n" not in str(info.value)


def test_chat_template_kwargs_that_change_trls_prompt_tokens_are_refused_before_anything_is_written(tiny, tmp_path):
    trl = pytest.importorskip("trl")
    from cropi.integrations.trl import train_stages

    chat = copy.deepcopy(tiny.tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    args = _args(trl, tmp_path / "trl", chat_template_kwargs={"terse": True})
    with pytest.raises(CropiError, match="chat_template_kwargs"):
        train_stages(tiny.model, chat, load_data(_cfg().data), args, _cfg(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _a_tool(x: str) -> str:
    """Echo x.

    Args:
        x: the text
    """
    return x


@pytest.mark.parametrize("name,value", [("tools", [_a_tool]), ("environment_factory", object),
                                        ("rollout_func", lambda *a, **k: {}), ("peft_config", object()),
                                        ("reward_funcs", [lambda **k: [0.0]])])
def test_trainer_kwargs_under_which_trl_trains_other_completions_are_refused_before_anything_is_written(
        tiny, tmp_path, name, value):
    trl = pytest.importorskip("trl")
    from cropi.integrations.trl import train_stages

    with pytest.raises(CropiError, match=rf"trainer_kwargs\['{name}'\]") as info:
        train_stages(tiny.model, tiny.tokenizer, load_data(_cfg().data), _args(trl, tmp_path / "trl"), _cfg(),
                     tmp_path / "run", trainer_kwargs={name: value})
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_trainer_kwargs_trl_rejects_are_refused_in_one_line_before_anything_is_written(tiny, tmp_path):
    trl = pytest.importorskip("trl")
    from cropi.integrations.trl import train_stages

    with pytest.raises(CropiError, match="GRPOTrainer refused") as info:
        train_stages(tiny.model, tiny.tokenizer, load_data(_cfg().data), _args(trl, tmp_path / "trl"), _cfg(),
                     tmp_path / "run", trainer_kwargs={"not_a_trainer_argument": 1})
    assert "\n" not in str(info.value) and "not_a_trainer_argument" in str(info.value)
    assert not (tmp_path / "run").exists()  # so the same folder is accepted once the settings are fixed


def test_without_trl_the_example_prints_one_line_naming_the_extra_and_exits_2(monkeypatch, capsys, tmp_path):
    import importlib.util
    from pathlib import Path

    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now fails as if it were not installed
    from cropi.integrations.trl import require_trl

    with pytest.raises(MissingExtra, match=r"cropi\[trl\]"):
        require_trl()
    path = Path(__file__).resolve().parents[1] / "examples" / "trl_stages.py"
    spec = importlib.util.spec_from_file_location("trl_stages_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'cropi[trl]'" in err
    assert not (tmp_path / "run").exists()


def test_a_subset_smaller_than_one_generation_batch_is_refused_before_anything_is_written(tiny, tmp_path):
    trl = pytest.importorskip("trl")
    from cropi.integrations.trl import train_stages

    policy = tiny
    args = _args(trl, tmp_path / "trl", per_device_train_batch_size=8 * GENERATIONS)  # 8 prompts per batch > 4
    with pytest.raises(CropiError, match="generation batch") as info:
        train_stages(policy.model, policy.tokenizer, load_data(_cfg().data), args, _cfg(), tmp_path / "run")
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_the_gpu_checks_trained_equals_selected_is_false_when_a_stage_trained_on_part_of_its_selection(monkeypatch,
                                                                                                     tmp_path):
    pytest.importorskip("trl")
    from lab.bench import gpu_check
    from cropi.integrations import trl as cropi_trl

    def staged(trained):  # what train_stages returns, without training: only its records are read
        def run(*args, **kwargs):
            rec = cropi_trl.StageRecord(0, 0, 1, ["a", "b"], trained, 0.0, 0.0, 1, 0.0)
            return cropi_trl.StagesResult([rec], None, None, None)
        return run

    monkeypatch.setattr(cropi_trl, "train_stages", staged(["a"] * GENERATIONS))
    assert gpu_check.check_trl(gpu_check.CheckPlan("cpu", True, tmp_path))["trained_equals_selected"] is False
    monkeypatch.setattr(cropi_trl, "train_stages", staged(["a"] * GENERATIONS + ["b"] * GENERATIONS))
    assert gpu_check.check_trl(gpu_check.CheckPlan("cpu", True, tmp_path))["trained_equals_selected"] is True
