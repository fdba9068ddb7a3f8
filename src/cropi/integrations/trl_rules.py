"""cropi's per-step batch rules inside TRL's ``GRPOTrainer``, on the user's own dataset and reward functions
(``pip install 'cropi[trl]'``)::

    from trl import GRPOConfig
    from cropi.integrations.trl_rules import CropiGRPOTrainer

    trainer = CropiGRPOTrainer(rule="greso", model=model, reward_funcs=accuracy_reward, args=GRPOConfig(...),
                               train_dataset=dataset)
    trainer.train()

``rule`` is one of ``RULES``: ``cropi_harvest`` (cropi's influence, read from TRL's own backward; it needs
``validation={name: Dataset}``, the sets whose gradient direction it steers towards), ``greso``,
``online_filter`` (SPEED-RL's screen) or ``dapo``.  Each is the rule cropi's own trainer runs
(``cropi.selection``), with its sampling swapped for TRL's:

- **What TRL trains on is the rule's batch.**  At every generation, the rule draws prompts of ``train_dataset`` by
  index and has them sampled by TRL's own generation (``GRPOTrainer._generate``: transformers or vLLM) and graded
  by the user's ``reward_funcs`` (``_calculate_rewards``, weighted as ``reward_weights`` say).  It keeps, drops and
  refills as it does in cropi.  The chosen groups' completions and rewards are then handed to TRL's
  ``_generate_and_score_completions`` in place of a fresh generation, so TRL computes the advantages, log-probs
  and loss itself, for ``generation_batch_size / num_generations`` whole groups of ``num_generations``.  The
  dataloader's own batch only paces the steps.  A sampler cannot carry these rules: accelerate fetches the next
  batch before the current one is graded, and dynamic sampling refills within the step.
- **Rewards as the rule sees them.**  A completion's reward is TRL's weighted sum; a group is *mixed* when those
  differ, which is exactly when TRL's group advantages are not all zero (under its default
  ``multi_objective_aggregation='sum_then_normalize'``).  GRESO calls an equal group "easy" when
  its reward is above 0.  Each sampled completion is graded once; TRL reuses those rewards for the chosen groups.
- **Harvest.**  With ``cropi_harvest``, cropi's sketch hooks (``projection.factored.SketchHooks``) are open
  during the first pass of TRL's ``compute_loss`` and backward over each generation batch; every row is captured
  on its own and summed into its group (TRL shuffles rows before splitting micro-batches), then scaled to the
  gradient of the group's own loss.  The validation means are POPI gradients of validation groups sampled by
  cropi at TRL's temperature (POPI needs the behaviour log-probs), graded by the same reward functions; that
  requires TRL's loss to be one cropi scores (``cropi.integrations.trl.check_scorable``).
- **Records** go under the user's ``output_dir``: ``cropi_rule.json`` (each step's chosen prompt indices, what
  was sampled and skipped, seconds by kind) and, in every checkpoint, ``cropi_rule_state.json`` (the rule's
  state: GRESO's history, the harvested scores, the stream cursor), which ``train(resume_from_checkpoint=...)``
  reads back.

Limits: one process; no tools, environments or ``rollout_func``; ``train_dataset`` must be a ``datasets.Dataset``
(the rule draws rows by index); ``online_filter`` screens with fewer than ``num_generations`` completions per
prompt, which TRL's vLLM path does not generate, so it is refused with ``use_vllm``.  Screened prompts queued for a
later step are trained on with their screening completions one update old, and TRL (``num_iterations=1``) has no
ratio to correct for that.  Tested on CPU with TRL's transformers generation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from cropi.config import load_config, to_dict, validate
from cropi.errors import CropiError
from cropi.io import read_json, write_json
from cropi.policy import Policy
from cropi.rollouts.sampler import Generation, SamplingParams, generate
from cropi.selection import resolve
from cropi.selection.batch import Batch, Group
from cropi.selection.registry import make_batch_builder
from cropi.tasks.problem import Problem
from cropi.integrations.trl import _text, check_one_process, check_scorable, live_policy, require_trl, with_trl_loss

RULES = ("cropi_harvest", "greso", "online_filter", "dapo")
GROUP = "cropi_group"  # the column TRL's shuffle and split carry: which group of the generation batch a row is
RECORD, STATE = "cropi_rule.json", "cropi_rule_state.json"
SCHEMA_VERSION = 1
# Settings in cropi's defaults that are sized for 32 prompts a step: scaled to TRL's prompts per generation batch
# unless the user sets them (cropi's ratios: generation batches of 3x, GRESO's smallest of 1/2x)
SCALED = {"train.filter.gen_batch_prompts": 3.0, "train.filter.greso_min_gen_prompts": 0.5}


def rule_config(args, rule: str, settings: Sequence[str] = ()):
    """The cropi config a rule runs under inside TRL: ``settings`` (``a.b=c`` overrides of cropi's config), then
    TRL's batch shape (``train.prompts_per_step`` = generation batch / ``num_generations``, ``rollout.group_size``),
    loss, sampling and seed (``with_trl_loss``), resolved for ``rule``."""
    if rule not in RULES:
        raise CropiError(f"rule={rule!r}: choose one of {', '.join(RULES)}")
    n = args.generation_batch_size // args.num_generations
    named = {s.split("=", 1)[0].strip() for s in settings}
    scaled = [f"{k}={max(1, round(r * n))}" for k, r in SCALED.items() if k not in named]
    if "train.filter.screen_samples" not in named:  # cropi's default screens with half the group (4 of 8)
        scaled.append(f"train.filter.screen_samples={max(1, args.num_generations // 2)}")
    cfg = load_config(None, [f"train.selector={rule}", *scaled, *settings])
    cfg = with_trl_loss(cfg, args)
    cfg.train.prompts_per_step, cfg.rollout.group_size = n, int(args.num_generations)
    cfg.train.steps = int(args.max_steps) if args.max_steps and args.max_steps > 0 else cfg.train.steps
    return resolve(validate(cfg))


def dataset_problems(dataset, family_column: str | None, prefix: str = "") -> tuple[list[Problem], dict[str, dict]]:
    """The rows of a ``datasets.Dataset`` as cropi problems (id: the row index, family: ``family_column`` or one
    family for all), and each row by id."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise CropiError(f"{type(dataset).__name__}: the rule draws prompts by index; pass a datasets.Dataset")
    if family_column is not None and family_column not in dataset.column_names:
        raise CropiError(f"family_column={family_column!r}: the dataset has no such column "
                         f"(it has {', '.join(dataset.column_names)})")
    problems, rows = [], {}
    table = dataset.to_list() if hasattr(dataset, "to_list") else [dataset[i] for i in range(len(dataset))]
    for i, row in enumerate(table):
        pid = f"{prefix}{i}"
        family = str(row[family_column]) if family_column else "all"
        problems.append(Problem(pid, _text(row["prompt"]), "", family, "trl"))
        rows[pid] = row
    return problems, rows


def output_layer_names(model: torch.nn.Module) -> list[str]:
    """The names of the output layer's parameters (a tied input embedding included).  TRL computes its loss with a
    fused LM head (``add_fused_lm_head``) that never calls the output layer as a module, so no hook sees its
    per-row gradient: the harvest, and the validation means it is compared with, leave these parameters out."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return []
    owned = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in owned]


def _trainer_class():
    trl = require_trl()
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class CropiGRPOTrainer(trl.GRPOTrainer):
        """TRL's ``GRPOTrainer`` whose batches a cropi rule chooses (``cropi.integrations.trl_rules``).

        Extra arguments: ``rule`` (one of ``RULES``), ``validation`` (a ``Dataset`` or ``{name: Dataset}``, for
        ``cropi_harvest``), ``family_column`` (a column grouping the prompts, for the harvest's family pooling)
        and ``rule_settings`` (``a.b=c`` overrides of cropi's config, e.g. ``train.filter.harvest_top=0.2``)."""

        def __init__(self, *args, rule: str = "cropi_harvest", validation=None, family_column: str | None = None,
                     rule_settings: Sequence[str] = (), **kwargs):
            if rule not in RULES:  # before TRL loads anything
                raise CropiError(f"rule={rule!r}: choose one of {', '.join(RULES)}")
            if rule == "cropi_harvest" and validation is None:
                raise CropiError("rule='cropi_harvest' steers towards validation sets: pass validation="
                                 "{name: Dataset} (prompts and the columns your reward functions read)")
            super().__init__(*args, **kwargs)
            a = self.args
            check_one_process(a)
            for name in ("tools", "environment_factories", "rollout_func"):
                if getattr(self, name, None):
                    raise CropiError(f"{name}: a cropi rule samples plain completions; it cannot drive TRL's "
                                     "multi-turn or custom rollouts")
            if a.steps_per_generation != a.gradient_accumulation_steps:
                raise CropiError(f"GRPOConfig.steps_per_generation={a.steps_per_generation}: a cropi rule chooses one "
                                 "batch per optimizer step; leave it at gradient_accumulation_steps "
                                 f"({a.gradient_accumulation_steps})")
            if rule == "online_filter" and a.use_vllm:
                raise CropiError("rule='online_filter' screens with fewer completions than num_generations, which "
                                 "TRL's vLLM generation does not produce; use greso or cropi_harvest with vLLM")
            if rule == "cropi_harvest":
                check_scorable(a)
            self.cropi_cfg = rule_config(a, rule, rule_settings)
            if rule == "cropi_harvest":
                score = self.cropi_cfg.select.score
                score.exclude = [*score.exclude, *output_layer_names(self.model)]
            self.cropi_rule_name = rule
            self._cropi_problems, self._cropi_rows = dataset_problems(self.train_dataset, family_column)
            val = validation if isinstance(validation, Mapping) or validation is None else {"validation": validation}
            val_problems = {}
            for name, ds in (val or {}).items():
                probs, rows = dataset_problems(ds, None, f"{name}:")  # a set is one target: no families
                val_problems[name] = probs
                self._cropi_rows.update(rows)
            self.cropi_rule = make_batch_builder(self.cropi_cfg, val_problems)
            self.cropi_rule.sampler = self._cropi_sample
            if hasattr(self.cropi_rule, "validation_sampler"):
                self.cropi_rule.validation_sampler = self._cropi_sample_with_logprobs
            self.cropi_state: dict = {}  # the rule's resumable state (cropi's TrainState.extra)
            self.cropi_steps: list[dict] = []  # per generation: what the rule chose and what it cost
            self._cropi_policy: Policy = live_policy(self.model, self.processing_class)
            # (prompt ids, completion ids) -> (the completion as the reward functions saw it, rewards per function)
            self._cropi_graded: dict[tuple, tuple[Any, torch.Tensor]] = {}
            self._cropi_replay: list[Generation] | None = None
            self._cropi_batch: Batch | None = None
            self._cropi_hooks = None
            self._cropi_owners: list[int] = []

        # ------------------------------------------------------------ sampling for the rule
        def _cropi_grade(self, rows: list[dict], prompts: list, prompt_ids, completion_ids,
                         completions: list | None = None) -> torch.Tensor:
            """Grade completions (TRL's own, or decoded as TRL does) with the user's reward functions, as TRL does;
            remember each grade."""
            if completions is None:
                completions = self._cropi_decode(prompts, completion_ids)
            per_func = self._calculate_rewards(rows, prompts, completions, [list(c) for c in completion_ids])
            self._pending_extra_logs.clear()  # reward logs of dropped rows would misalign TRL's completions table
            for p, c, text, r in zip(prompt_ids, completion_ids, completions, per_func):
                self._cropi_graded[(tuple(p), tuple(c))] = (text, r.detach().cpu())
            weights = self.reward_weights.to(per_func.device)
            return torch.nan_to_num((per_func * weights).nansum(dim=1), nan=0.0).cpu()

        def _cropi_decode(self, prompts: list, completion_ids) -> list:
            """Completions as TRL's plain decoding gives them: text, or one assistant message for a conversation."""
            texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            return [[{"role": "assistant", "content": t}] for t in texts] if isinstance(prompts[0], list) else texts

        def _cropi_replayed(self) -> list | None:
            """What the replayed completions were graded with, or None where one is not among the grades kept."""
            keys = [(tuple(g.prompt_ids), tuple(g.response_ids)) for g in self._cropi_replay]
            return [self._cropi_graded[k] for k in keys] if all(k in self._cropi_graded for k in keys) else None

        def _cropi_groups(self, problems, samples: range, gens: list[Generation], rewards) -> list[Group]:
            k = len(samples)
            r = [float(x) for x in rewards]
            return [Group(p, gens[i * k:(i + 1) * k], r[i * k:(i + 1) * k]) for i, p in enumerate(problems)]

        def _cropi_sample(self, policy, problems, key, samples, rollout) -> list[Group]:
            """The rule's groups, sampled by TRL's own generation and graded by the user's reward functions."""
            if not problems or len(samples) == 0:
                return [Group(p, [], []) for p in problems]
            rows = [self._cropi_rows[p.id] for p in problems for _ in samples]
            prompts = [r["prompt"] for r in rows]
            self.model.train()  # the mode TRL generates its training completions in
            out = trl.GRPOTrainer._generate(self, prompts)
            prompt_ids, completion_ids, logprobs = out[0], out[1], out[4]
            gens = [Generation(list(p), list(c), list(logprobs[i]) if logprobs is not None else [],
                               "length" if len(c) >= self.args.max_completion_length else "stop")
                    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids))]
            return self._cropi_groups(problems, samples, gens, self._cropi_grade(rows, prompts, prompt_ids,
                                                                                  completion_ids, out[3]))

        def _cropi_sample_with_logprobs(self, policy, problems, key, samples, rollout) -> list[Group]:
            """Validation groups for POPI: sampled by cropi at TRL's temperature (recording the behaviour
            log-probs POPI reweights by), from TRL's own prompt tokens, graded by the user's reward functions."""
            if not problems or len(samples) == 0:
                return [Group(p, [], []) for p in problems]
            rows = [self._cropi_rows[p.id] for p in problems for _ in samples]
            prompts = [r["prompt"] for r in rows]
            prompt_ids = self._tokenize_prompts(prompts)[0]
            params = SamplingParams(temperature=rollout.temperature, top_p=rollout.top_p,
                                    max_new_tokens=rollout.max_new_tokens)
            keys = [(*key, p.id, s) for p in problems for s in samples]
            policy.model.eval()  # and so it stays for the POPI means that follow, as in cropi's own trainer
            gens = generate(policy, prompt_ids, params, keys=keys, batch_size=rollout.batch_size)
            rewards = self._cropi_grade(rows, prompts, [g.prompt_ids for g in gens], [g.response_ids for g in gens])
            return self._cropi_groups(problems, samples, gens, rewards)

        # ------------------------------------------------------------ TRL's generation, replayed
        def _generate(self, prompts: list):
            if self._cropi_replay is None:
                return super()._generate(prompts)
            gens, graded = self._cropi_replay, self._cropi_replayed()
            completions = [text for text, _ in graded] if graded else \
                self._cropi_decode(prompts, [g.response_ids for g in gens])
            logprobs = [list(g.behavior_logprobs) for g in gens] if all(g.behavior_logprobs for g in gens) else None
            if not self.use_vllm:
                logprobs = None  # TRL's transformers generation records none; cropi's are at TRL's temperature
            return ([list(g.prompt_ids) for g in gens], [list(g.response_ids) for g in gens], None, completions,
                    logprobs, {}, None, [])

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            graded = self._cropi_replayed() if self._cropi_replay is not None else None
            if graded:  # graded when drawn: TRL trains on those rewards
                return torch.stack([r for _, r in graded]).to(self.accelerator.device)
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

        def _generate_and_score_completions(self, inputs):
            if not self.model.training:
                return super()._generate_and_score_completions(inputs)
            step = int(self.state.global_step)
            t0 = time.perf_counter()
            self._cropi_forget_grades()
            self._cropi_close_hooks()
            self.model.eval()  # the validation means (POPI) in eval mode; TRL's draws switch back to train mode
            batch = self.cropi_rule.build(self._cropi_policy, self._cropi_problems, step, self.cropi_state)
            self.model.train()
            rule_seconds = time.perf_counter() - t0
            g = self.num_generations
            if any(len(grp.gens) != g for grp in batch.groups):
                raise CropiError(f"the rule built groups of {sorted({len(x.gens) for x in batch.groups})} "
                                 f"completions; TRL trains groups of num_generations={g}")
            rows = [self._cropi_rows[grp.problem.id] for grp in batch.groups for _ in grp.gens]
            self._cropi_replay = [x for grp in batch.groups for x in grp.gens]
            try:
                out = super()._generate_and_score_completions(rows)
            finally:
                self._cropi_replay = None
            out[GROUP] = torch.arange(len(batch.groups), device=out["advantages"].device).repeat_interleave(g)
            self._cropi_batch = batch
            self._cropi_record(step, batch, rule_seconds)
            if hasattr(self.cropi_rule, "hooks"):
                self._cropi_hooks = self.cropi_rule.hooks(self._cropi_policy, len(rows)).__enter__()
                self._cropi_owners = []
            return out

        def _cropi_close_hooks(self) -> None:
            if self._cropi_hooks is not None:  # a generation whose first pass did not finish (an error, the end)
                self._cropi_hooks.__exit__(None, None, None)
                self._cropi_hooks = None

        def _cropi_forget_grades(self) -> None:
            # keep only the grades of screened completions still queued for a later step (the online filter's)
            queued = {(tuple(g[0]), tuple(g[1])) for q in self.cropi_state.get("online_filter_queue", [])
                      for g in q["gens"]}
            self._cropi_graded = {k: v for k, v in self._cropi_graded.items() if k in queued}

        def _cropi_record(self, step: int, batch: Batch, seconds: float) -> None:
            self.cropi_steps.append({
                "step": step, "prompts": [int(grp.problem.id) for grp in batch.groups],
                "mixed": sum(grp.mixed for grp in batch.groups), "sampled_sequences": batch.sampled_sequences,
                "skipped_prompts": batch.skipped_prompts, "rule_seconds": round(seconds, 3),
                "seconds": {k: round(v, 3) for k, v in batch.seconds.items()}})
            metrics = self._metrics["train"]
            metrics["cropi/sampled_sequences"].append(float(batch.sampled_sequences))
            metrics["cropi/mixed_groups"].append(float(sum(grp.mixed for grp in batch.groups)))

        # ------------------------------------------------------------ the harvest, from TRL's own backward
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            owners = inputs.pop(GROUP, None)
            if self._cropi_hooks is not None and owners is not None:
                first = len(self._cropi_owners)
                self._cropi_hooks.rows([1] * len(owners), first)  # every row its own example, summed per group
                self._cropi_owners += owners.tolist()
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def training_step(self, model, inputs, num_items_in_batch):
            out = super().training_step(model, inputs, num_items_in_batch)
            hooks = self._cropi_hooks
            if hooks is not None and len(self._cropi_owners) == len(hooks.out):  # the generation's first pass ran
                hooks.__exit__(None, None, None)
                self._cropi_hooks = None
                batch = self._cropi_batch
                groups = torch.zeros(len(batch.groups), hooks.out.shape[1])
                groups.index_add_(0, torch.tensor(self._cropi_owners), hooks.out)
                # TRL weighs each row 1 / (micro-batch rows x accumulation); a group's own loss is its rows' mean
                scale = self.args.per_device_train_batch_size * self.current_gradient_accumulation_steps / \
                    self.num_generations
                self.cropi_rule.harvested(self._cropi_policy, self.cropi_steps[-1]["step"], batch, groups * scale)
            return out

        # ------------------------------------------------------------ records and resuming
        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if folder.is_dir():
                write_json(folder / STATE, {"schema_version": SCHEMA_VERSION, "rule": self.cropi_rule_name,
                                            "state": self.cropi_state, "steps": self.cropi_steps})
            self._cropi_write_record()

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            path = resume_from_checkpoint
            if path is True:
                from transformers.trainer_utils import get_last_checkpoint
                path = get_last_checkpoint(self.args.output_dir)
            if path and (Path(path) / STATE).exists():
                saved = read_json(Path(path) / STATE)
                if saved.get("rule") != self.cropi_rule_name:
                    raise CropiError(f"{Path(path) / STATE}: the checkpoint's rule is {saved.get('rule')!r}, "
                                     f"this trainer's is {self.cropi_rule_name!r}")
                self.cropi_state, self.cropi_steps = dict(saved["state"]), list(saved["steps"])
            try:
                out = super().train(resume_from_checkpoint, *args, **kwargs)
            finally:
                self._cropi_close_hooks()
            self._cropi_write_record()
            return out

        def _cropi_write_record(self) -> None:
            write_json(Path(self.args.output_dir) / RECORD, {
                "schema_version": SCHEMA_VERSION, "rule": self.cropi_rule_name,
                "trl_version": trl.__version__, "config": to_dict(self.cropi_cfg), "steps": self.cropi_steps})

    return CropiGRPOTrainer


def __getattr__(name: str) -> Any:
    # the class subclasses TRL's trainer: built on first use, so importing this module never needs TRL
    if name == "CropiGRPOTrainer":
        cls = globals()["CropiGRPOTrainer"] = _trainer_class()
        return cls
    raise AttributeError(name)


__all__ = ["RULES", "CropiGRPOTrainer", "dataset_problems", "output_layer_names", "rule_config"]
