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

Everything is a deterministic function of (seed, step): the prompts of step s come from a seeded permutation,
and sampling is keyed by (seed, step, prompt id, sample index).  A run resumed from a checkpoint therefore
continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from cropi.objective import group_advantages, kl_penalty, loss_spec, policy_loss, response_logprobs
from cropi.policy import Policy
from cropi.rollouts.batch import pack
from cropi.rollouts.sampler import SamplingParams, generate
from cropi.tasks import Problem, grade_many
from cropi.config import RolloutConfig, TrainConfig
from cropi.training import checkpoint


@dataclass
class StepStats:
    step: int
    reward_mean: float
    mixed_groups: float  # share of groups with non-zero reward variance (the ones that carry gradient)
    loss: float
    grad_norm: float
    response_tokens: int
    rollout_seconds: float
    train_seconds: float


def step_prompts(problems: Sequence[Problem], step: int, n: int, seed: int) -> list[Problem]:
    """The ``n`` prompts of ``step``: consecutive slices of seeded per-epoch permutations (no replacement
    within an epoch)."""
    size = len(problems)
    out = []
    for j in range(step * n, step * n + n):
        epoch, pos = divmod(j, size)
        out.append(problems[_epoch_order(seed, epoch, size)[pos]])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    order = list(range(size))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


def grpo_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    problems: Sequence[Problem],
    step: int,
    train: TrainConfig,
    rollout: RolloutConfig,
    ref_model: torch.nn.Module | None = None,
) -> StepStats:
    """One GRPO step on ``problems``: sample, grade, normalise, update."""
    model, g, dev = policy.model, rollout.group_size, policy.device
    t0 = time.perf_counter()
    model.eval()
    prompt_tokens = [policy.encode_prompt(p.prompt) for p in problems]
    rows = [prompt_tokens[i] for i in range(len(problems)) for _ in range(g)]
    keys = [(train.seed, "train", step, p.id, s) for p in problems for s in range(g)]
    params = SamplingParams(temperature=rollout.temperature, top_p=rollout.top_p,
                            max_new_tokens=rollout.max_new_tokens)
    gens = generate(policy, rows, params, keys=keys, batch_size=rollout.batch_size)
    texts = [policy.decode_response(x.response_ids) for x in gens]
    rewards = torch.tensor(grade_many([p for p in problems for _ in range(g)], texts)).view(len(problems), g)
    advantages = group_advantages(rewards).view(-1)
    t1 = time.perf_counter()

    model.train()
    batch = pack([x.prompt_ids for x in gens], [x.response_ids for x in gens],
                 [x.behavior_logprobs for x in gens], policy.pad_token_id)
    n = len(gens)
    spec = loss_spec(train, rollout)
    loss_total, grad_norm = 0.0, 0.0
    for _ in range(train.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, n, train.micro_batch):
            sl = slice(start, start + train.micro_batch)
            ids, att = batch.input_ids[sl].to(dev), batch.attention_mask[sl].to(dev)
            resp, blp = batch.response_mask[sl].to(dev), batch.behavior_logprobs[sl].to(dev)
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
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm))
        optimizer.step()
    model.eval()
    t2 = time.perf_counter()
    mixed = float((rewards.std(dim=1) > 0).float().mean())
    return StepStats(step, float(rewards.mean()), mixed, loss_total, grad_norm,
                     sum(len(x.response_ids) for x in gens), t1 - t0, t2 - t1)


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                             betas=tuple(train.betas))


@dataclass
class TrainState:
    """What a resumed run needs besides weights and optimizer state."""

    step: int = 0
    train_seconds: float = 0.0  # rollout + update seconds, evaluation excluded
    select_seconds: float = 0.0  # collection + scoring + selection seconds charged to this run (curriculum)
    rollout_seconds: float = 0.0
    response_tokens: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class Session:
    """What carries over between calls of ``train_grpo``: optimizer, counters, and the KL reference."""

    optimizer: torch.optim.Optimizer
    state: TrainState
    ref_model: torch.nn.Module | None = None


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
) -> TrainState:
    """Run GRPO until global step ``steps`` (default ``train.steps``) on ``problems``, resuming from the latest
    checkpoint in ``run_dir`` if there is one.  ``evaluate_fn(policy, step)`` is called at step 0, every
    ``train.eval_every`` steps and at the end; its dict is passed to ``log`` with the step stats.

    A curriculum calls this once per stage with the stage's problems and end step, passing the same
    ``session`` (optimizer, counters, reference model) so that nothing restarts at a stage boundary."""
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
        stats = grpo_step(policy, optimizer, step_prompts(problems, step, train.prompts_per_step, train.seed),
                          step, train, rollout, ref_model)
        state.step = step + 1
        state.train_seconds += stats.rollout_seconds + stats.train_seconds
        state.rollout_seconds += stats.rollout_seconds
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

