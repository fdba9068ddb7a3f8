"""The shared machinery of the per-batch rules: how a GRPO step's batch of ``train.prompts_per_step`` groups is
sampled, and what it cost to find.

Every rule hands the update exactly ``prompts_per_step`` groups of G responses, so "equal steps" always means an
equal number of updates of the same size.  What differs is how many responses were sampled to find them, and
every sampled response is charged: the seconds of a step are split into

    rollouts   sampling and grading the groups the update trains on
    refills    sampling and grading groups drawn and then dropped (equal rewards, or past the batch)
    screening  screening samples (online_filter, online_influence)
    scoring    online_influence's gradients (candidates and validation means)

``PlainBatches`` is plain GRPO: the next ``prompts_per_step`` prompts of the seeded per-epoch order, whatever
their rewards.  The other rules each have a module of their own in this package (``dapo``, ``greso``,
``online_filter``, ``online_influence``) and are registered in ``cropi.selection.registry``.

State that must survive a resume (the prompt-stream cursor, GRESO's and the screen's histories, GRESO's
probabilities, the online filter's queue) lives in ``TrainState.extra`` and is saved with every checkpoint.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from cropi.config import RolloutConfig, RunConfig
from cropi.policy import Policy
from cropi.rollouts.sampler import Generation, SamplingParams, generate
from cropi.rollouts.trajectory_store import PromptGroup
from cropi.tasks import Problem, grade_many

COST_KINDS = ("rollouts", "refills", "screening", "scoring")


@dataclass
class Group:
    """One prompt's sampled responses and their rewards."""

    problem: Problem
    gens: list[Generation]
    rewards: list[float]

    @property
    def mixed(self) -> bool:
        """Rewards differ, so the group's advantages are not all zero."""
        return max(self.rewards) > min(self.rewards)


@dataclass
class Batch:
    """What one step trains on, with what it cost to find."""

    groups: list[Group]
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COST_KINDS, 0.0))
    sampled_sequences: int = 0  # every response sampled this step, screening and refills included
    skipped_prompts: int = 0  # prompts passed over before rollout (greso, screen_skip_p)


def step_prompts(problems: Sequence[Problem], step: int, n: int, seed: int) -> list[Problem]:
    """The ``n`` prompts of ``step``: consecutive slices of seeded per-epoch permutations (no replacement
    within an epoch)."""
    return stream_prompts(problems, step * n, n, seed)


def stream_prompts(problems: Sequence[Problem], start: int, n: int, seed: int) -> list[Problem]:
    """Positions ``start .. start + n - 1`` of the endless stream of seeded per-epoch permutations."""
    size = len(problems)
    out = []
    for j in range(start, start + n):
        epoch, pos = divmod(j, size)
        out.append(problems[_epoch_order(seed, epoch, size)[pos]])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, size: int) -> tuple[int, ...]:
    order = list(range(size))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)


def sample_groups(policy: Policy, problems: Sequence[Problem], key: tuple, samples: range,
                  rollout: RolloutConfig) -> list[Group]:
    """Responses ``samples`` (indices into the group) for each problem, keyed by ``(*key, prompt id, index)``, so
    a response does not depend on what else is sampled with it."""
    if not problems or len(samples) == 0:
        return [Group(p, [], []) for p in problems]
    r = rollout
    policy.model.eval()
    tokens = [policy.encode_prompt(p.prompt) for p in problems]
    rows = [tokens[i] for i in range(len(problems)) for _ in samples]
    keys = [(*key, p.id, s) for p in problems for s in samples]
    params = SamplingParams(temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens)
    gens = generate(policy, rows, params, keys=keys, batch_size=r.batch_size)
    rewards = grade_many([p for p in problems for _ in samples], [policy.decode_response(x.response_ids) for x in gens])
    k = len(samples)
    return [Group(p, gens[i * k:(i + 1) * k], rewards[i * k:(i + 1) * k]) for i, p in enumerate(problems)]


# How a rule gets its groups sampled and graded: ``sample_groups`` in cropi's own trainer; a trainer plug-in
# (``cropi.integrations.trl_rules``) hands in one that samples with the trainer's generation and rewards
GroupSampler = Callable[[Policy, Sequence[Problem], tuple, range, RolloutConfig], list[Group]]


class BatchBuilder(Protocol):
    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch: ...


@dataclass
class PlainBatches:
    """Plain GRPO: the step's slice of the seeded order."""

    cfg: RunConfig

    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch:
        t = self.cfg.train
        t0 = time.perf_counter()
        prompts = step_prompts(problems, step, t.prompts_per_step, t.seed)
        groups = sample_groups(policy, prompts, (t.seed, "train", step), range(self.cfg.rollout.group_size), self.cfg.rollout)
        batch = Batch(groups, sampled_sequences=len(prompts) * self.cfg.rollout.group_size)
        batch.seconds["rollouts"] = time.perf_counter() - t0
        return batch


def take(problems: Sequence[Problem], extra: dict, n: int, seed: int) -> list[Problem]:
    """The next ``n`` prompts of the stream; the cursor is part of the resumable state."""
    start = extra.get("cursor", 0)
    extra["cursor"] = start + n
    return stream_prompts(problems, start, n, seed)


def screen_skip_p(cfg: RunConfig) -> float:
    """The screen skip's p in force: ``train.filter.screen_skip_p``, which resolving a run's rule sets where it
    was unset (``cropi.selection.registry.resolve``); 1 (screen every prompt) in a config not resolved."""
    p = cfg.train.filter.screen_skip_p
    return 1.0 if p is None else p


def take_kept(problems: Sequence[Problem], extra: dict, n: int, seed: int, salt: str,
               keep: Callable[[Problem], float]) -> tuple[list[Problem], int]:
    """The next ``n`` prompts of the stream that survive GRESO-style skipping: each is kept with probability
    ``keep(prompt)``, drawn from a key of the stream position, so a resumed run skips the same ones.  Returns them
    and how many were skipped."""
    out: list[Problem] = []
    skipped = 0
    if n <= 0:
        return out, skipped
    for _ in range(len(problems)):  # at most one epoch ahead, so a stage of skippable prompts still trains
        cursor = extra.get("cursor", 0)
        prompt = take(problems, extra, 1, seed)[0]
        if random.Random(f"{salt}:{seed}:{cursor}").random() >= keep(prompt):
            skipped += 1
            continue
        out.append(prompt)
        if len(out) == n:
            break
    return out + take(problems, extra, n - len(out), seed), skipped


def screen_take(problems: Sequence[Problem], extra: dict, n: int, cfg: RunConfig) -> tuple[list[Problem], int]:
    """The next ``n`` prompts to screen, after GRESO's skip (``screen_skip_p``), and how many were skipped.  A
    prompt's count of screens in a row that gave the batch nothing is in ``extra["screen_history"]``."""
    p, seed = screen_skip_p(cfg), cfg.train.seed
    if p >= 1.0:
        return take(problems, extra, n, seed), 0
    history = extra.setdefault("screen_history", {})

    def keep(prompt: Problem) -> float:
        z = history.get(prompt.id, 0)
        return max(p ** z, 0.01) if z else 1.0

    return take_kept(problems, extra, n, seed, "screen-skip", keep)


def screen_observe(screens: Sequence[Group], extra: dict, cfg: RunConfig, useless: Sequence[str] = ()) -> None:
    """Count each screened prompt's screens in a row that gave the batch nothing: equal rewards, or the ids in
    ``useless`` (mixed, but ranked out); a prompt that made it starts again at 0."""
    if screen_skip_p(cfg) >= 1.0:
        return
    history = extra.setdefault("screen_history", {})
    out = set(useless)
    for s in screens:
        if s.mixed and s.problem.id not in out:
            history.pop(s.problem.id, None)
        else:
            history[s.problem.id] = history.get(s.problem.id, 0) + 1


def fill(kept: list[Group], spare: list[Group], n: int) -> list[Group]:
    return kept + spare[: n - len(kept)]


def queued(screen: Group, key: tuple) -> dict:
    """A screened group as JSON (the queue is part of the resumable state)."""
    return {"id": screen.problem.id, "key": list(key), "rewards": list(screen.rewards),
            "gens": [[x.prompt_ids, x.response_ids, x.behavior_logprobs, x.finish_reason] for x in screen.gens]}


def unqueued(q: dict) -> list[Generation]:
    return [Generation(list(a), list(b), list(c), d) for a, b, c, d in q["gens"]]


def prompt_group(grp: Group, temperature: float) -> PromptGroup:
    """A sampled group as the estimator's input (its behaviour log-probs are the sampling ones: on-policy)."""
    return PromptGroup(grp.problem.id, list(grp.gens[0].prompt_ids), [list(x.response_ids) for x in grp.gens],
                       [list(x.behavior_logprobs) for x in grp.gens], list(grp.rewards), temperature)


