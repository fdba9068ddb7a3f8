"""The built-in GRPO trainer: one readable, top-down loop (CPU and GPU).

What it keeps from GRPO, and why:
- G fresh samples per prompt from the current policy at temperature T, graded by the task's verifiable reward
  (no reward model, no value function: the group mean is the baseline).
- Group-normalised advantages A_i = (r_i − mean r)/(std r + 1e-4), shared with influence scoring through
  ``cropi.objective`` so the trainer and the influence estimator optimise / differentiate the same loss.
- Token-level importance ratio against the log-probs recorded while sampling (at temperature T), with the PPO
  clip ε = 0.2.  With ``ppo_epochs = 1`` the ratio is exactly 1 on the only update, so the loss is plain
  REINFORCE with a group baseline; more epochs make the clip matter.
- Aggregation ``grpo`` (per-sequence token mean) or ``dr_grpo`` (constant normaliser, no length bias).
- Optional KL(π_θ‖π_ref) to the starting policy (k3 estimator), off by default as in Dr. GRPO / DAPO: with
  verifiable rewards it mostly slows learning, and it costs a second model.
- AdamW, global grad-norm clipping, gradient accumulation over micro-batches; no entropy bonus.

A batch rule that harvests influence (``cropi.selection.harvest``) hooks the update's own backward: the same pass
that forms the summed gradient leaves each trained prompt's projected gradient behind, at no extra pass.

Everything is a deterministic function of (seed, step): the prompts of step s come from a seeded permutation,
and sampling is keyed by (seed, step, prompt id, sample index).  A run resumed from a checkpoint therefore
continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Protocol, Sequence

import torch

from cropi.objective import group_advantages, kl_penalty, loss_spec, policy_loss, response_logprobs
from cropi.policy import Policy
from cropi.rollouts.batch import pack
from cropi.tasks import Problem
from cropi.config import RolloutConfig, TrainConfig
from cropi.training import checkpoint
from cropi.selection.batch import Batch, BatchBuilder, sample_groups, step_prompts  # noqa: F401


@dataclass
class StepStats:
    step: int
    reward_mean: float
    mixed_groups: float  # share of the trained groups with non-zero reward variance (the ones that carry gradient)
    loss: float
    grad_norm: float
    response_tokens: int
    rollout_seconds: float  # sampling and grading the trained groups
    train_seconds: float  # the update
    refill_seconds: float = 0.0  # groups sampled and dropped (cropi.selection.batch)
    screen_seconds: float = 0.0
    score_seconds: float = 0.0  # online_influence's gradients
    sampled_sequences: int = 0
    skipped_prompts: int = 0


class Harvester(Protocol):
    """A batch rule that reads each trained prompt's gradient from the update's own backward."""

    def hooks(self, policy: Policy, n_groups: int) -> ContextManager:
        """Open around the update's first epoch; ``.rows(rows_per_example, first)`` before each forward, and
        ``.out`` [n_groups, k] holds the groups' projected gradients of the update's loss afterwards."""

    def harvested(self, policy: Policy, step: int, batch: Batch, projected: torch.Tensor) -> None:
        """The groups' projected gradients, each of its own group loss (the mean over its responses)."""


def row_runs(owners: Sequence[int]) -> tuple[list[int], int]:
    """Consecutive rows of the same owner as (rows per owner, first owner): ``[3, 3, 4, 4, 4]`` -> ([2, 3], 3)."""
    counts: list[int] = []
    for i, o in enumerate(owners):
        if i and o == owners[i - 1]:
            counts[-1] += 1
        else:
            if i and o != owners[i - 1] + 1:
                raise ValueError("the rows' owners must be consecutive")
            counts.append(1)
    return counts, (owners[0] if owners else 0)


def grpo_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    problems: Sequence[Problem],
    step: int,
    train: TrainConfig,
    rollout: RolloutConfig,
    ref_model: torch.nn.Module | None = None,
) -> StepStats:
    """One plain GRPO step on ``problems``: sample G responses each, grade, normalise, update."""
    return grpo_update(policy, optimizer, plain_batch(policy, problems, step, train, rollout), step, train, rollout,
                       ref_model)


def plain_batch(policy: Policy, problems: Sequence[Problem], step: int, train: TrainConfig,
                rollout: RolloutConfig) -> Batch:
    """Plain GRPO's batch: G fresh responses for each of ``problems``, graded."""
    t0 = time.perf_counter()
    groups = sample_groups(policy, problems, (train.seed, "train", step), range(rollout.group_size), rollout)
    batch = Batch(groups, sampled_sequences=len(problems) * rollout.group_size)
    batch.seconds["rollouts"] = time.perf_counter() - t0
    return batch


def grpo_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    step: int,
    train: TrainConfig,
    rollout: RolloutConfig,
    ref_model: torch.nn.Module | None = None,
    harvester: Harvester | None = None,
) -> StepStats:
    """The GRPO update on a built batch: group-normalised advantages, the shared policy loss, AdamW.  With a
    ``harvester``, its hooks see the first epoch's backward (where every ratio is 1: the on-policy gradient)."""
    model, dev = policy.model, policy.device
    gens = [x for grp in batch.groups for x in grp.gens]
    rewards = torch.tensor([grp.rewards for grp in batch.groups])
    advantages = group_advantages(rewards).view(-1)
    t1 = time.perf_counter()

    model.train()
    packed = pack([x.prompt_ids for x in gens], [x.response_ids for x in gens],
                  [x.behavior_logprobs for x in gens], policy.pad_token_id)
    n = len(gens)
    spec = loss_spec(train, rollout)
    loss_total, grad_norm = 0.0, 0.0
    owners = [i for i, grp in enumerate(batch.groups) for _ in grp.gens]
    hooks = harvester.hooks(policy, len(batch.groups)) if harvester is not None else None
    for epoch in range(train.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        harvesting = hooks is not None and epoch == 0
        with hooks if harvesting else contextlib.nullcontext():
            loss_total = _accumulate(policy, packed, advantages, spec, train, rollout, ref_model, owners,
                                     hooks if harvesting else None, loss_total)
        if harvesting:
            # the loss is the mean over all n responses, so a group's share of it is (its size / n) times its own
            sizes = torch.tensor([len(grp.gens) for grp in batch.groups], dtype=torch.float32)
            harvester.harvested(policy, step, batch, hooks.out * (n / sizes).unsqueeze(1))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm))
        optimizer.step()
    model.eval()
    t2 = time.perf_counter()
    mixed = float((rewards.std(dim=1) > 0).float().mean())
    c = batch.seconds
    return StepStats(step, float(rewards.mean()), mixed, loss_total, grad_norm,
                     sum(len(x.response_ids) for x in gens), c["rollouts"], t2 - t1, c["refills"], c["screening"],
                     c["scoring"], batch.sampled_sequences, batch.skipped_prompts)


def _accumulate(policy: Policy, packed, advantages: torch.Tensor, spec, train: TrainConfig, rollout: RolloutConfig,
                ref_model, owners: Sequence[int], hooks, loss_total: float) -> float:
    """One epoch's forward and backward passes over the micro-batches (the summed gradient accumulates in
    ``.grad``); returns ``loss_total`` plus this epoch's share of the reported loss."""
    model, dev = policy.model, policy.device
    n = len(owners)
    for start in range(0, n, train.micro_batch):
        sl = slice(start, start + train.micro_batch)
        if hooks is not None:
            hooks.rows(*row_runs(owners[sl]))
        ids, att = packed.input_ids[sl].to(dev), packed.attention_mask[sl].to(dev)
        resp, blp = packed.response_mask[sl].to(dev), packed.behavior_logprobs[sl].to(dev)
        # Trim the shared left padding of this micro-batch (pure speed; positions follow the mask).
        first = int(att.any(0).float().argmax())
        ids, att, resp, blp = ids[:, first:], att[:, first:], resp[:, first:], blp[:, first:]
        lp = response_logprobs(model, ids, att, resp, rollout.temperature)
        loss = policy_loss(lp, blp, advantages[sl].to(dev), resp, spec)
        if ref_model is not None and train.kl_coef > 0:
            with torch.no_grad():
                ref_lp = response_logprobs(ref_model, ids, att, resp, rollout.temperature)
            loss = loss + train.kl_coef * kl_penalty(lp, ref_lp, resp)
        weight = (min(start + train.micro_batch, n) - start) / n
        (loss * weight).backward()
        loss_total += float(loss.detach()) * weight / train.ppo_epochs
    return loss_total


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                             betas=tuple(train.betas))


@dataclass
class TrainState:
    """What a resumed run needs besides weights and optimizer state."""

    step: int = 0
    train_seconds: float = 0.0  # every second the trainer spends (all kinds below but selection), evaluation excluded
    select_seconds: float = 0.0  # collection + scoring + selection seconds charged to this run (curriculum)
    rollout_seconds: float = 0.0  # sampling the trained groups
    response_tokens: int = 0
    refill_seconds: float = 0.0  # sampling groups that were dropped (dynamic sampling, GRESO)
    screen_seconds: float = 0.0  # screening samples (online_filter, online_influence)
    step_score_seconds: float = 0.0  # online_influence's per-step gradients
    update_seconds: float = 0.0
    sampled_sequences: int = 0
    skipped_prompts: int = 0
    extra: dict = field(default_factory=dict)  # the batch rule's resumable state (cropi.selection.batch)


@dataclass
class Session:
    """What carries over between calls of ``train_grpo``: optimizer, counters, and the KL reference."""

    optimizer: torch.optim.Optimizer
    state: TrainState
    ref_model: torch.nn.Module | None = None
    batches: BatchBuilder | None = None  # how each step's batch is built (plain GRPO when None)


def start_session(policy: Policy, train: TrainConfig, run_dir: Path) -> Session:
    """A fresh optimizer and counters, restored from the latest checkpoint in ``run_dir`` when there is one
    (the policy's weights are loaded from it too)."""
    torch.manual_seed(train.seed)
    optimizer = make_optimizer(policy.model, train)
    state = TrainState()
    ckpt_dir = Path(run_dir) / "checkpoints"
    latest = checkpoint.latest(ckpt_dir)
    if latest is not None:
        state = checkpoint.load(latest, policy.model, optimizer, TrainState)
    ref_model = None
    if train.kl_coef > 0:
        import copy

        ref_model = copy.deepcopy(policy.model).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        if latest is not None:
            ref_model.load_state_dict(checkpoint.load_initial(ckpt_dir), strict=True)
        else:
            checkpoint.save_initial(ckpt_dir, policy.model)
    return Session(optimizer, state, ref_model)


def train_grpo(
    policy: Policy,
    problems: Sequence[Problem],
    train: TrainConfig,
    rollout: RolloutConfig,
    run_dir: Path,
    evaluate_fn: Callable[[Policy, int], dict] | None = None,
    on_step: Callable[[StepStats], None] | None = None,
    steps: int | None = None,
    log: Callable[[dict], None] | None = None,
    session: "Session | None" = None,
    on_batch: Callable[[int, Batch], None] | None = None,
) -> TrainState:
    """Run GRPO until global step ``steps`` (default ``train.steps``) on ``problems``, resuming from the latest
    checkpoint in ``run_dir`` if there is one.  ``evaluate_fn(policy, step)`` is called at step 0, every
    ``train.eval_every`` steps and at the end; its dict is passed to ``log`` with the step stats.

    A curriculum calls this once per stage with the stage's problems and end step, passing the same
    ``session`` (optimizer, counters, reference model) so that nothing restarts at a stage boundary.
    ``on_batch(step, batch)`` sees each step's batch before the update (the groups the policy of that step
    sampled)."""
    if not problems:
        raise ValueError("no training problems")
    steps = train.steps if steps is None else steps
    ckpt_dir = run_dir / "checkpoints"
    if session is None:
        session = start_session(policy, train, run_dir)
    optimizer, state, ref_model = session.optimizer, session.state, session.ref_model

    def maybe_eval(step: int) -> None:
        if evaluate_fn is None:
            return
        row = {"step": step, "event": "eval", "seconds": round(state.train_seconds + state.select_seconds, 3),
               **evaluate_fn(policy, step)}
        if log:
            log(row)

    if state.step == 0:
        maybe_eval(0)
    while state.step < steps:
        step = state.step
        if session.batches is None:
            batch = plain_batch(policy, step_prompts(problems, step, train.prompts_per_step, train.seed), step, train,
                                rollout)
        else:
            batch = session.batches.build(policy, problems, step, state.extra)
        if on_batch:
            on_batch(step, batch)
        harvester = session.batches if hasattr(session.batches, "harvested") else None
        stats = grpo_update(policy, optimizer, batch, step, train, rollout, ref_model, harvester)
        state.step = step + 1
        state.train_seconds += (stats.rollout_seconds + stats.train_seconds + stats.refill_seconds
                                + stats.screen_seconds + stats.score_seconds)
        state.rollout_seconds += stats.rollout_seconds
        state.refill_seconds += stats.refill_seconds
        state.screen_seconds += stats.screen_seconds
        state.step_score_seconds += stats.score_seconds
        state.update_seconds += stats.train_seconds
        state.sampled_sequences += stats.sampled_sequences
        state.skipped_prompts += stats.skipped_prompts
        state.response_tokens += stats.response_tokens
        if log:
            log({"event": "step", **stats.__dict__, "step": state.step,
                 "seconds": round(state.train_seconds + state.select_seconds, 3)})
        if on_step:
            on_step(stats)
        if state.step % train.eval_every == 0 or state.step == steps:
            maybe_eval(state.step)
        if state.step % train.checkpoint_every == 0 or state.step == steps:
            checkpoint.save(ckpt_dir, state.step, policy.model, optimizer, state)
    return state

