"""TRL's ``GRPOTrainer`` trained, stage by stage, on the prompts cropi selects (``pip install 'cropi[trl]'``).

``train_stages`` runs ``select.stages`` stages over ``args.max_steps`` GRPO steps.  At each stage boundary
cropi's curriculum (``training/curriculum.py``: behaviour stores collected once, scoring, drift control,
refresh, re-probes, ``stages/stage-NN/selection.json``) scores the pool with the trainer's *current* weights
and TRL trains the next stage on the chosen subset::

    from trl import GRPOConfig
    from cropi.config import load_config
    from cropi.integrations.trl import train_stages
    from cropi.policy import load_policy
    from cropi.tasks.loading import load_data

    cfg = load_config("run.yaml")                    # data, select (stages, ratio, score), rollout.group_size
    policy = load_policy("tiny")
    args = GRPOConfig(output_dir="out/trl", max_steps=40, loss_type="grpo", num_generations=8, ...)
    result = train_stages(policy.model, policy.tokenizer, load_data(cfg.data), args, cfg, "out")

How (the one mechanism, chosen to rely only on TRL's public surface):

- **One trainer per stage, sharing the model, the optimizer and the LR schedule.**  Each stage builds a
  ``GRPOTrainer`` over the same model object with ``optimizers=(optimizer, scheduler)``.  Both are made once,
  before anything is written, with a first trainer that never trains (so TRL has checked ``args`` and
  ``trainer_kwargs`` before a folder exists): the optimizer by its ``create_optimizer`` (``args.optim`` and
  weight-decay groups are TRL's), the scheduler by ``transformers.get_scheduler`` for the *whole*
  ``max_steps``; ``Trainer`` uses a scheduler it was handed as is and steps it once per optimizer step, so
  Adam's moments and step count and the schedule run on across stages with no warm restart.  Each stage's
  ``train()`` builds its own dataloader with TRL's own ``RepeatSampler`` over the stage's dataset, so the group
  structure (every prompt ``num_generations`` times, whole generation batches) is TRL's own.  Nothing private is
  touched and no trainer attribute is set.
- **Scoring on the live model.**  cropi's ``Policy`` wraps the trainer's model object itself (no copy, no
  save/load): TRL updates its parameters in place, so the curriculum scores exactly the weights the next stage
  starts from.  The model is put in eval mode while scoring (POPI uses ``torch.autograd.grad``, leaving no
  ``.grad`` behind).  The policy keeps its own copy of the tokenizer: a fast tokenizer's padding/truncation state,
  which any call with ``padding=`` or ``truncation=`` changes, is part of cropi's tokenizer fingerprint, which the
  stores are checked against.
- **Same tokens.**  The dataset's ``prompt`` is a one-message conversation when the tokenizer has a chat
  template and the raw prompt otherwise — exactly the two cases of ``Policy.encode_prompt`` — and
  ``train_stages`` checks, before anything trains, that TRL's tokenization of every pool prompt
  (``apply_chat_template(..., add_generation_prompt=True, tokenize=True)`` or ``tokenizer(text=...)``) equals
  ``encode_prompt``, so the influence scores are computed for the token sequences TRL trains on (TRL's
  call includes ``args.chat_template_kwargs``; tools, environments and rollout functions, which change the
  prompt and the completions, are refused).
- **Same loss and rewards.**  Rewards come from cropi's graders (``grade_many``) through ``CropiReward``, a TRL
  reward function ``(prompts, completions, **columns) -> list[float]`` reading the dataset's ``answer`` /
  ``family`` / ``source`` columns.  Scoring differentiates the loss TRL trains with: ``loss_type`` ``grpo`` or
  ``dr_grpo`` (cropi's ``train.aggregation``), group-normalised advantages (``scale_rewards="group"``), and the
  behaviour stores are sampled at TRL's ``temperature``, ``top_p`` and ``max_completion_length``.  Other loss
  types are refused (cropi has no POPI form of them), and so is any setting that changes TRL's sampling or loss
  away from that (``NEUTRAL_SETTINGS``: ``top_k``, ``min_p``, ``repetition_penalty``, ``generation_kwargs``,
  ``top_entropy_quantile``, sequence-level ratios, truncation masks, ``delta``, ``epsilon_high``, entropy
  bonuses, ...).

Outputs under ``out``: ``stores/`` (behaviour trajectories, unless ``select.stores``), ``stages/stage-NN/``
(``selection.json``, scores, TRL's ``trl/`` output folder), ``config.yaml`` (the cropi settings scoring used)
and ``trl_stages.json`` (per stage: steps, chosen ids, how many completions of each prompt TRL graded, learning
rates, optimizer step count).  A run is not resumable mid-way: a folder that already holds stages is refused.
One process only (a distributed launch is refused: each rank would select on its own).  With ``beta > 0`` each
stage's trainer builds TRL's reference model again (TRL 1.16 loads it from the model's source folder: the
starting weights, as in one long run).  Tested on CPU with TRL's own generation; vLLM generation is untested here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import torch

from cropi.config import RunConfig, dump_config, validate
from cropi.errors import CropiError
from cropi.extras import require
from cropi.io import write_json, write_text
from cropi.policy import Policy
from cropi.scores.ranking import selection_size
from cropi.selection import parse_selector, resolve
from cropi.tasks import grade_many
from cropi.tasks.problem import Problem
from cropi.tasks.suite import Suite
from cropi.training.curriculum import Curriculum, behaviour_stores, stage_bounds

# TRL loss_type -> cropi's train.aggregation: the two GRPO losses cropi's POPI estimator differentiates
AGGREGATIONS = {"grpo": "grpo", "dr_grpo": "dr_grpo"}
COLUMNS = ("id", "answer", "family", "source", "difficulty")  # the grading columns the dataset carries


def require_trl() -> ModuleType:
    """The real ``trl`` package, or a one-line ``MissingExtra`` naming ``cropi[trl]``."""
    return require("trl", "trl", "training with TRL (cropi.integrations.trl)")


# ----------------------------------------------------------------------------- prompts and dataset
def prompt_value(tokenizer, prompt: str) -> str | list[dict]:
    """The ``prompt`` column of one problem: a one-message conversation when the tokenizer has a chat template
    (TRL applies it), else the raw prompt — the same two cases as ``Policy.encode_prompt``."""
    if getattr(tokenizer, "chat_template", None):
        return [{"role": "user", "content": prompt}]
    return prompt


def trl_prompt_ids(tokenizer, prompts: Sequence[str | list[dict]],
                   chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """Token ids of ``prompt`` column values by the tokenizer calls TRL's GRPOTrainer makes for them, with
    ``GRPOConfig.chat_template_kwargs`` (TRL passes them to ``apply_chat_template``; plain prompts ignore them)."""
    if not prompts:
        return []
    if isinstance(prompts[0], list):
        out = tokenizer.apply_chat_template(conversation=list(prompts), add_generation_prompt=True, tokenize=True,
                                            return_dict=True, **(chat_template_kwargs or {}))
        return [list(ids) for ids in out["input_ids"]]
    return [list(ids) for ids in tokenizer(text=list(prompts))["input_ids"]]


def check_prompt_tokens(policy: Policy, tokenizer, problems: Sequence[Problem],
                        chat_template_kwargs: dict | None = None) -> None:
    """Refuse a tokenizer (or ``chat_template_kwargs``) for which TRL would train on other prompt tokens than
    cropi scores."""
    values = [prompt_value(tokenizer, p.prompt) for p in problems]
    for p, ids in zip(problems, trl_prompt_ids(tokenizer, values, chat_template_kwargs)):
        if ids != policy.encode_prompt(p.prompt):
            kwargs = (f" and GRPOConfig.chat_template_kwargs={chat_template_kwargs!r} (cropi applies the template "
                      "without them)") if chat_template_kwargs else ""
            raise CropiError(f"prompt {p.id!r}: TRL would tokenize it as {ids[:8]}..., cropi scores "
                             f"{policy.encode_prompt(p.prompt)[:8]}...; the tokenizer's chat template{kwargs} and "
                             "special tokens must agree between the two")


def trl_dataset(problems: Sequence[Problem], tokenizer):
    """A ``datasets.Dataset`` of ``problems`` for GRPOTrainer: ``prompt`` (see ``prompt_value``), the grading
    columns ``id``, ``answer``, ``family``, ``source``, ``difficulty`` and ``metadata`` (JSON text)."""
    datasets = require("datasets", "trl", "training with TRL (cropi.integrations.trl)")
    rows = [{"prompt": prompt_value(tokenizer, p.prompt), "id": p.id, "answer": p.answer, "family": p.family,
             "source": p.source, "difficulty": p.difficulty, "metadata": json.dumps(p.metadata, sort_keys=True)}
            for p in problems]
    return datasets.Dataset.from_list(rows)


# ----------------------------------------------------------------------------- rewards
def _text(value: Any) -> str:
    """A prompt or completion as text: plain, or the last message of a conversation."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        content = value[-1].get("content", "")
        return content if isinstance(content, str) else " ".join(
            part.get("text", "") for part in content if isinstance(part, dict))
    return str(value)


class CropiReward:
    """TRL reward function grading each completion with cropi's grader (``cropi.tasks.grade_many``).

    It also records the prompt ids of every batch it grades, per stage (``seen[stage]``: one id per
    completion, in TRL's order), which is what a stage actually trained on."""

    __name__ = "cropi_reward"  # TRL names the reward's logged metrics after it

    def __init__(self) -> None:
        self.stage = 0
        self.seen: dict[int, list[str]] = {}

    def __call__(self, prompts: list, completions: list, **columns) -> list[float]:
        missing = [c for c in ("id", "answer", "family") if c not in columns]
        if missing:
            raise CropiError(f"the TRL dataset lacks the grading column(s) {', '.join(missing)} "
                             "(build it with cropi.integrations.trl.trl_dataset)")
        n = len(completions)
        sources = columns.get("source") or ["user"] * n
        metadata = [json.loads(m) if m else {} for m in columns.get("metadata") or [""] * n]
        problems = [Problem(str(i), _text(pr), str(a), str(f), str(s), metadata=m) for i, pr, a, f, s, m in
                    zip(columns["id"], prompts, columns["answer"], columns["family"], sources, metadata)]
        self.seen.setdefault(self.stage, []).extend(p.id for p in problems)
        return grade_many(problems, [_text(c) for c in completions])


# ----------------------------------------------------------------------------- settings
_SAMPLING = "changes TRL's sampling, which the behaviour stores (temperature and top_p only) do not reproduce"
# GRPOConfig settings outside what cropi scores: the values (TRL 1.16's defaults and their equivalents) under which
# TRL samples and trains exactly what cropi's loss and behaviour stores assume, and why any other value does not
NEUTRAL_SETTINGS: dict[str, tuple[tuple, str]] = {
    "top_k": ((0, None), _SAMPLING),
    "min_p": ((None, 0.0), _SAMPLING),
    "repetition_penalty": ((1.0,), _SAMPLING),
    "generation_kwargs": ((None, {}), _SAMPLING),
    "top_entropy_quantile": ((1.0,), "TRL would train on the highest-entropy tokens only; cropi scores every token"),
    "importance_sampling_level": (("token",), "TRL would use sequence-level ratios; cropi's loss has token-level "
                                              "ratios"),
    "mask_truncated_completions": ((False,), "TRL would drop truncated completions from its loss; cropi scores them"),
    "delta": ((None,), "TRL would clip the ratio from above for negative advantages too; cropi's loss has no such "
                       "clip"),
    "entropy_coef": ((0.0,), "TRL would add an entropy bonus to its loss; cropi scores the policy-gradient loss alone"),
    "use_adaptive_entropy": ((False,), "TRL would add an entropy bonus to its loss; cropi scores the policy-gradient "
                                       "loss alone"),
    "off_policy_mask_threshold": ((None,), "TRL would mask off-policy sequences out of its loss; cropi scores every "
                                           "sequence"),
    "reward_weights": ((None, [1], [1.0]), "cropi's grader is the one reward, with weight 1"),
    "multi_objective_aggregation": (("sum_then_normalize",), "TRL would normalise advantages over the whole batch; "
                                                             "cropi normalises them per group"),
}
# GRPOTrainer arguments train_stages sets itself, and those under which TRL trains on completions or parameters
# that cropi neither samples nor scores
TRAINER_ARGUMENTS = {
    "model": "pass it as train_stages' model", "args": "pass it as train_stages' args",
    "train_dataset": "train_stages builds each stage's dataset from the selection",
    "processing_class": "pass the tokenizer as train_stages' tokenizer",
    "callbacks": "pass them as train_stages' callbacks", "optimizers": "pass them as train_stages' optimizers",
    "reward_funcs": "the reward is cropi's grader (CropiReward)",
    "tools": "TRL would train on multi-turn tool-calling completions, which cropi does not sample or score",
    "environment_factory": "TRL would train on multi-turn environment completions, which cropi does not sample or "
                           "score",
    "rollout_func": "TRL would train on the rollout function's completions, which cropi does not sample or score",
    "peft_config": "each stage's trainer would wrap the model in new adapters, which the one shared optimizer does "
                   "not hold",
}


def check_trainer_kwargs(trainer_kwargs: dict | None) -> None:
    """Refuse ``GRPOTrainer`` arguments that ``train_stages`` sets itself or under which TRL would train on
    other completions or parameters than cropi scores."""
    for name, value in (trainer_kwargs or {}).items():
        if name in TRAINER_ARGUMENTS and value is not None and not (name == "tools" and not value):
            raise CropiError(f"trainer_kwargs[{name!r}]: {TRAINER_ARGUMENTS[name]}")


def check_scorable(args) -> None:
    """Refuse TRL settings under which cropi's POPI gradient would not be the gradient of the loss TRL trains:
    other loss types or reward scaling, an asymmetric clip (``epsilon_high``), any ``NEUTRAL_SETTINGS`` entry
    away from its neutral values, several processes, or no ``max_completion_length``."""
    if args.loss_type not in AGGREGATIONS:
        raise CropiError(f"GRPOConfig.loss_type={args.loss_type!r}: cropi scores with the {' or '.join(AGGREGATIONS)} "
                         "loss; set loss_type to one of them")
    if str(args.scale_rewards).lower() not in ("group", "true"):
        raise CropiError(f"GRPOConfig.scale_rewards={args.scale_rewards!r}: cropi's advantages are normalised by "
                         "each group's std; set scale_rewards='group'")
    check_one_process(args)
    if args.max_completion_length is None:
        raise CropiError("GRPOConfig.max_completion_length must be set: the behaviour stores sample that many tokens")
    for name, (neutral, why) in NEUTRAL_SETTINGS.items():
        value = getattr(args, name, neutral[0])
        if value not in neutral:
            raise CropiError(f"GRPOConfig.{name}={value!r}: {why}; leave it at {neutral[0]!r}")
    if args.epsilon_high is not None and float(args.epsilon_high) != float(args.epsilon):
        raise CropiError(f"GRPOConfig.epsilon_high={args.epsilon_high!r}: TRL would clip asymmetrically; cropi's "
                         f"clip is symmetric (train.clip_eps = epsilon = {args.epsilon!r}); leave epsilon_high unset")


def check_one_process(args) -> None:
    if getattr(args, "world_size", 1) > 1:
        raise CropiError(f"cropi's TRL integration runs in one process (world size {args.world_size}): every "
                         "process would choose prompts on its own, and differing choices would split TRL's groups")


def with_trl_loss(cfg: RunConfig, args) -> RunConfig:
    """``cfg`` with the loss, sampling and seed TRL's ``args`` train with: ``loss_type`` ->
    ``train.aggregation``, ``epsilon``, ``num_iterations`` -> ``train.ppo_epochs``, ``beta`` -> ``train.kl_coef``,
    ``learning_rate``, ``seed``, ``temperature``, ``top_p``, ``max_completion_length``."""
    return replace(
        cfg,
        train=replace(cfg.train, aggregation=AGGREGATIONS.get(args.loss_type, cfg.train.aggregation),
                      clip_eps=float(args.epsilon), ppo_epochs=int(args.num_iterations), kl_coef=float(args.beta),
                      lr=float(args.learning_rate), seed=int(args.seed)),
        rollout=replace(cfg.rollout, temperature=float(args.temperature), top_p=float(args.top_p),
                        max_new_tokens=int(args.max_completion_length or cfg.rollout.max_new_tokens)),
    )


def scoring_config(args, cfg: RunConfig, selector: str = "cropi") -> RunConfig:
    """``cfg`` with what scoring shares with TRL taken from TRL's ``args`` (``with_trl_loss``), the budget
    (``max_steps``) and the selector; refuses what ``check_scorable`` refuses."""
    check_scorable(args)
    if not args.max_steps or args.max_steps <= 0:
        raise CropiError("GRPOConfig.max_steps must be set (> 0): the stages split that budget")
    out = with_trl_loss(cfg, args)
    out = replace(out, train=replace(out.train, selector=selector, steps=int(args.max_steps)))
    out = resolve(validate(out))
    if out.train.filter.method != "none":  # TRL builds its own batches; cropi acts at stage boundaries
        raise CropiError(f"selector {selector!r} chooses each step's batch: train_stages selects at stage "
                         "boundaries only; use cropi.integrations.trl_rules.CropiGRPOTrainer for a per-step rule")
    return out


def live_policy(model: torch.nn.Module, tokenizer, name: str | None = None) -> Policy:
    """A cropi ``Policy`` around the trainer's model object itself (scores follow the training in place), named
    after the folder or hub id the model was loaded from unless ``name`` is given."""
    device = next(model.parameters()).device
    name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    return Policy(model=model, tokenizer=copy.deepcopy(tokenizer), name=str(name), device=device)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _stage_args(args, stage: int, steps: int, output_dir: Path):
    """TRL's args for one stage: its own step count and output folder, and a seed per stage so that the
    stages do not replay one sampling stream (``Trainer`` reseeds at construction)."""
    stage_args = copy.copy(args)
    stage_args.max_steps = steps
    stage_args.output_dir = str(output_dir)
    stage_args.seed = int(args.seed) + stage
    return stage_args


def _check_subset_size(n: int, per_generation: int, where: str) -> None:
    # RepeatSampler keeps whole generation batches only: fewer prompts would leave a stage without a batch
    if n < per_generation:
        raise CropiError(f"{where}: {n} prompts selected, but one TRL generation batch takes {per_generation} "
                         "prompts (generation_batch_size / num_generations); raise select.ratio or lower the batch size")


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> int | None:
    for state in optimizer.state.values():
        if "step" in state:
            return int(state["step"])
    return None


# ----------------------------------------------------------------------------- the driver
@dataclass
class StageRecord:
    stage: int
    start_step: int
    end_step: int
    selected: list[str]  # what cropi chose, best first
    trained: list[str]  # prompt id of every completion TRL graded in the stage, in order
    lr_first: float  # learning rate of the stage's first step
    lr_after: float  # learning rate after its last step
    optimizer_steps: int | None  # the optimizer's step count after the stage
    selection_seconds: float


@dataclass
class StagesResult:
    stages: list[StageRecord]
    optimizer: torch.optim.Optimizer  # the one optimizer every stage stepped (not accelerate's wrapper)
    scheduler: Any  # the one LR scheduler, over all of max_steps
    cfg: RunConfig  # the cropi settings scoring used
    trainer: Any = field(default=None, repr=False)  # the last stage's GRPOTrainer (earlier ones are let go: each
    # may hold a reference model)


def train_stages(
    model: torch.nn.Module,
    tokenizer,
    suite: Suite,
    args,
    cfg: RunConfig,
    out: str | Path,
    selector: str = "cropi",
    callbacks: Sequence | None = None,
    optimizers: tuple = (None, None),
    on_event: Callable[[dict], None] | None = None,
    trainer_kwargs: dict | None = None,
) -> StagesResult:
    """GRPO with TRL on ``suite.pool``, re-selected by ``selector`` at each of ``cfg.select.stages`` stages.

    ``args`` is a ``trl.GRPOConfig`` (``max_steps`` is the whole budget); ``cfg`` supplies the data-side settings
    (``select``: stages, ratio, scoring, drift/refresh/re-probe; ``rollout.group_size`` and ``rollout.seed`` of the
    behaviour stores); the rest is taken from ``args`` (``scoring_config``).  ``optimizers`` may hand in an
    optimizer and / or scheduler; by default both are made once for the whole run.  ``trainer_kwargs`` go to each
    ``GRPOTrainer``, except those ``check_trainer_kwargs`` refuses (``reward_funcs``: rewards are cropi's grader;
    ``tools``, ``environment_factory``, ``rollout_func``, ``peft_config``).  Per stage, ``args.max_steps``,
    ``output_dir`` (``out/stages/stage-NN/trl``) and ``seed`` (``args.seed + stage``) are replaced."""
    trl = require_trl()
    from transformers import get_scheduler

    cfg = scoring_config(args, cfg, selector)
    out = Path(out)
    if (out / "stages").exists() or (out / "trl_stages.json").exists():
        raise CropiError(f"{out}: already holds a staged TRL run (its selections belong to other weights); "
                         "choose a new folder")
    sel = parse_selector(selector)[0]
    per_generation = args.generation_batch_size // args.num_generations
    _check_subset_size(len(suite.pool) if selector == "full" else
                       selection_size(len(suite.pool), cfg.select.ratio, cfg.select.size),
                       per_generation, "each stage")
    check_trainer_kwargs(trainer_kwargs)
    policy = live_policy(model, tokenizer)
    check_prompt_tokens(policy, tokenizer, suite.pool, args.chat_template_kwargs)
    bounds = stage_bounds(int(args.max_steps), cfg.select.stages)
    reward = CropiReward()

    def stage_trainer(problems: Sequence[Problem], stage_args, stage_callbacks, shared: tuple):
        return trl.GRPOTrainer(model=model, reward_funcs=[reward], args=stage_args,
                               train_dataset=trl_dataset(problems, tokenizer), processing_class=tokenizer,
                               callbacks=list(stage_callbacks or []), optimizers=shared, **(trainer_kwargs or {}))

    # Before anything is written: a first trainer over the pool (in a scratch folder, without the callbacks, which
    # should see training trainers only) lets TRL check args and trainer_kwargs, and makes the one optimizer (by
    # TRL's recipe: args.optim, weight-decay groups) and the one schedule over the whole budget, unless given.
    optimizer, scheduler = optimizers
    with tempfile.TemporaryDirectory(prefix="cropi-trl-") as scratch:
        try:
            first = stage_trainer(suite.pool, _stage_args(args, 0, bounds[1] - bounds[0], Path(scratch)), None,
                                  (optimizer, scheduler))
            if optimizer is None:
                optimizer = first.create_optimizer()
            if scheduler is None:
                scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                                          num_warmup_steps=args.get_warmup_steps(int(args.max_steps)),
                                          num_training_steps=int(args.max_steps),
                                          scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        except (TypeError, ValueError) as exc:
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise CropiError(f"TRL's GRPOTrainer refused the settings: {type(exc).__name__}: {detail}") from exc
        del first  # and any reference model it loaded
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", dump_config(cfg))
    stores = None
    if sel.needs_rollouts:  # from the starting weights, once; every stage scores these trajectories
        with _eval_mode(model):
            stores = behaviour_stores(policy, suite, cfg, Path(cfg.select.stores) if cfg.select.stores
                                      else out / "stores", on_event=on_event)
    curriculum = Curriculum(cfg, sel, suite, policy, out, stores, on_event)
    by_id = {p.id: p for p in suite.pool}
    records: list[StageRecord] = []
    trainer = None
    for stage in range(cfg.select.stages):
        start, end = bounds[stage], bounds[stage + 1]
        with _eval_mode(model):
            choice = curriculum.selection(stage, fresh=True)
        problems = [by_id[i] for i in choice["selected"]]
        stage_args = _stage_args(args, stage, end - start, curriculum.stage_dir(stage) / "trl")
        _check_subset_size(len(problems), per_generation, f"stage {stage}")
        trainer = None  # the previous stage's trainer (and any reference model it loaded) can go
        trainer = stage_trainer(problems, stage_args, callbacks, (optimizer, scheduler))
        reward.stage = stage
        lr_first = float(scheduler.get_last_lr()[0])
        if on_event:
            on_event({"event": "trl_stage", "stage": stage, "steps": end - start, "prompts": len(problems)})
        trainer.train()
        records.append(StageRecord(stage, start, end, list(choice["selected"]), list(reward.seen.get(stage, [])),
                                   lr_first, float(scheduler.get_last_lr()[0]), _optimizer_steps(optimizer),
                                   float(choice.get("seconds", 0.0))))
    # per stage, how many completions of each prompt TRL graded (the full sequence is in the returned records)
    stages_json = [{**{k: v for k, v in r.__dict__.items() if k != "trained"},
                    "trained_counts": dict(Counter(r.trained))} for r in records]
    write_json(out / "trl_stages.json", {"selector": selector, "max_steps": int(args.max_steps),
                                         "trl_version": trl.__version__, "stages": stages_json})
    return StagesResult(records, optimizer, scheduler, cfg, trainer)


__all__ = ["NEUTRAL_SETTINGS", "CropiReward", "StageRecord", "StagesResult", "check_one_process",
           "check_prompt_tokens", "check_scorable", "check_trainer_kwargs", "live_policy", "prompt_value",
           "require_trl", "scoring_config", "train_stages", "trl_dataset", "trl_prompt_ids", "with_trl_loss"]
