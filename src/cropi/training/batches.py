"""How a GRPO step builds its batch of ``train.prompts_per_step`` groups: plain GRPO, and the batch rules of the
methods users pick instead of data selection (``train.filter.method``).

Every rule hands the update exactly ``prompts_per_step`` groups of G responses, so "equal steps" always means an
equal number of updates of the same size.  What differs is how many responses were sampled to find them, and
every sampled response is charged: the seconds of a step are split into

    rollouts   sampling and grading the groups the update trains on
    refills    sampling and grading groups drawn and then dropped (equal rewards, or past the batch)
    screening  screening samples (online_filter, influence_filter)
    scoring    influence_filter's gradients (candidates and validation means)

The rules (each a re-implementation from its paper; what is simplified is said):

- ``none``: the next ``prompts_per_step`` prompts of the seeded per-epoch order, whatever their rewards.
- ``dapo`` (DAPO dynamic sampling, arXiv 2503.14476; verl's ``algorithm.filter_groups``): sample
  ``gen_batch_prompts`` prompts at a time, keep the groups whose rewards differ, refill until the batch is full,
  drop the surplus.  verl stops with an error after ``max_num_gen_batches``; here the batch is filled with
  equal-reward groups instead (they add no gradient, as in plain GRPO), so a comparison never dies mid-run.
- ``greso`` (GRESO, arXiv 2506.02177): dynamic sampling, but before rollout each prompt whose last ``z`` groups
  in a row had equal rewards is skipped with probability 1 − p^z.  p is kept apart for all-correct ("easy") and
  all-wrong ("hard") prompts and moves by ``greso_step`` per step towards the share of equal-reward groups
  ``greso_target``.  The paper also adapts the generation batch size; here it stays ``gen_batch_prompts``.
- ``online_filter`` (SPEED-RL, arXiv 2506.09016; online difficulty filtering, arXiv 2504.03380): screen each prompt with
  ``screen_samples`` responses, keep those with 0 < pass rate < 1, sample the rest of their G responses and
  train on all G.  The screening responses are the first of the G (sampling is keyed per response), so a kept
  group is exactly the one plain sampling would have drawn.
- ``influence_filter`` (cropi's influence inside the online filter): screen as ``online_filter`` does until
  ``influence_candidates`` × ``prompts_per_step`` prompts have mixed screening rewards, rank them by the cosine of
  their on-policy GRPO gradient (the POPI estimate at θ = β, from the screening responses alone) to each
  validation set's mean gradient, fuse the sets by reciprocal rank (``cropi.scores.ranking``), and complete and
  train on the top ``prompts_per_step``.  The validation means come from fresh samples of the first
  ``select.score.max_val_prompts`` prompts of each set, re-sampled every ``influence_refresh`` steps (a resumed
  run re-samples them with the resumed policy unless it resumes on a refresh step).

Both screening rules can put GRESO's pre-rollout skip in front of the screen (``screen_skip_p`` < 1): a prompt
whose last z screens in a row gave the batch nothing is screened again with probability max(p^z, 0.01), p
fixed.  "Nothing" is equal rewards, and for ``influence_filter`` also a mixed prompt ranked out of the batch
(``screen_skip_ranked_out``), so the screen returns most to the prompts the ranking keeps.  influence_filter
skips by default (p = 0.5, chosen on validation); the online filter does not, as published.

GradAlign (arXiv 2602.21492) is not a batch rule: it re-selects by round, like cropi, from fresh on-policy
rollouts, so it is a curriculum selector (``cropi.selection.variants``).

State that must survive a resume (the prompt-stream cursor, GRESO's and the screen's histories, GRESO's
probabilities, the online filter's queue) lives in
``TrainState.extra`` and is saved with every checkpoint.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import torch

from cropi.config import RolloutConfig, RunConfig
from cropi.errors import CropiError
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


def _take(problems: Sequence[Problem], extra: dict, n: int, seed: int) -> list[Problem]:
    """The next ``n`` prompts of the stream; the cursor is part of the resumable state."""
    start = extra.get("cursor", 0)
    extra["cursor"] = start + n
    return stream_prompts(problems, start, n, seed)


# the screen skip of each screening rule when train.filter.screen_skip_p is unset: influence_filter's was chosen
# on validation (lab/results/probe-validation.md); the online filter screens every prompt, as published
SCREEN_SKIP_P = {"influence_filter": 0.5, "online_filter": 1.0}


def screen_skip_p(cfg: RunConfig) -> float:
    """The screen skip's p in force for ``cfg``'s batch rule."""
    p = cfg.train.filter.screen_skip_p
    return SCREEN_SKIP_P.get(cfg.train.filter.method, 1.0) if p is None else p


def _take_kept(problems: Sequence[Problem], extra: dict, n: int, seed: int, salt: str,
               keep: Callable[[Problem], float]) -> tuple[list[Problem], int]:
    """The next ``n`` prompts of the stream that survive GRESO-style skipping: each is kept with probability
    ``keep(prompt)``, drawn from a key of the stream position, so a resumed run skips the same ones.  Returns them
    and how many were skipped."""
    out: list[Problem] = []
    skipped = 0
    for _ in range(len(problems)):  # at most one epoch ahead, so a stage of skippable prompts still trains
        cursor = extra.get("cursor", 0)
        prompt = _take(problems, extra, 1, seed)[0]
        if random.Random(f"{salt}:{seed}:{cursor}").random() >= keep(prompt):
            skipped += 1
            continue
        out.append(prompt)
        if len(out) == n:
            break
    return out + _take(problems, extra, n - len(out), seed), skipped


def _screen_take(problems: Sequence[Problem], extra: dict, n: int, cfg: RunConfig) -> tuple[list[Problem], int]:
    """The next ``n`` prompts to screen, after GRESO's skip (``screen_skip_p``), and how many were skipped.  A
    prompt's count of screens in a row that gave the batch nothing is in ``extra["screen_history"]``."""
    p, seed = screen_skip_p(cfg), cfg.train.seed
    if p >= 1.0:
        return _take(problems, extra, n, seed), 0
    history = extra.setdefault("screen_history", {})

    def keep(prompt: Problem) -> float:
        z = history.get(prompt.id, 0)
        return max(p ** z, 0.01) if z else 1.0

    return _take_kept(problems, extra, n, seed, "screen-skip", keep)


def _screen_observe(screens: Sequence[Group], extra: dict, cfg: RunConfig, useless: Sequence[str] = ()) -> None:
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


def _fill(kept: list[Group], spare: list[Group], n: int) -> list[Group]:
    return kept + spare[: n - len(kept)]


@dataclass
class DynamicSampling:
    """DAPO's dynamic sampling: refill with generation batches until ``prompts_per_step`` groups have mixed rewards."""

    cfg: RunConfig

    def candidates(self, problems: Sequence[Problem], step: int, extra: dict, n: int) -> tuple[list[Problem], int]:
        """The prompts of the next generation batch and how many were skipped to find them."""
        return _take(problems, extra, n, self.cfg.train.seed), 0

    def observe(self, groups: Sequence[Group], extra: dict) -> None:
        """Record what was sampled (GRESO's reward history)."""

    def end_step(self, groups: Sequence[Group], extra: dict, n_problems: int) -> None:
        """After the step's last generation batch (GRESO adapts its probabilities)."""

    def generation_size(self, kept: int, drawn: Sequence[Group], last: Sequence[Group]) -> int:
        return self.cfg.train.filter.gen_batch_prompts

    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch:
        t, f, g = self.cfg.train, self.cfg.train.filter, self.cfg.rollout.group_size
        n = t.prompts_per_step
        kept: list[Group] = []
        spare: list[Group] = []
        drawn: list[Group] = []
        seconds, skipped = 0.0, 0
        groups: list[Group] = []
        for draw in range(f.max_num_gen_batches):
            prompts, k = self.candidates(problems, step, extra, self.generation_size(len(kept), drawn, groups))
            skipped += k
            t0 = time.perf_counter()
            groups = sample_groups(policy, prompts, (t.seed, "train", step, draw), range(g), self.cfg.rollout)
            seconds += time.perf_counter() - t0
            self.observe(groups, extra)
            drawn += groups
            for grp in groups:
                (kept if grp.mixed and len(kept) < n else spare).append(grp)
            if len(kept) >= n:
                break
        self.end_step(drawn, extra, len(problems))
        batch = Batch(_fill(kept, spare, n), sampled_sequences=len(drawn) * g, skipped_prompts=skipped)
        # the seconds of a generation batch are shared evenly by its groups
        batch.seconds["rollouts"] = seconds * len(batch.groups) / len(drawn)
        batch.seconds["refills"] = seconds - batch.seconds["rollouts"]
        return batch


class Greso(DynamicSampling):
    """Dynamic sampling behind GRESO's pre-rollout filter (this module's docstring)."""

    def generation_size(self, kept: int, drawn: Sequence[Group], last: Sequence[Group]) -> int:
        """GRESO's adaptive generation batch: enough prompts, at the last batch's yield and a 1.25 margin, for
        the groups still missing, between ``greso_min_gen_prompts`` and ``gen_batch_prompts``."""
        f = self.cfg.train.filter
        if not last:
            return f.gen_batch_prompts
        yield_ = sum(g.mixed for g in last) / len(last)
        missing = self.cfg.train.prompts_per_step - kept
        want = math.ceil(missing / max(yield_, 1e-6) * 1.25)
        return max(f.greso_min_gen_prompts, min(want, f.gen_batch_prompts))

    def candidates(self, problems: Sequence[Problem], step: int, extra: dict, n: int) -> tuple[list[Problem], int]:
        history = extra.setdefault("greso_history", {})  # prompt id -> [kind, consecutive equal-reward groups]
        p = self.probabilities(extra)

        def keep(prompt: Problem) -> float:
            kind, z = history.get(prompt.id, ("", 0))
            return max(p[kind] ** z, 0.01) if z > 0 else 1.0

        return _take_kept(problems, extra, n, self.cfg.train.seed, "greso", keep)

    def probabilities(self, extra: dict) -> dict[str, float]:
        f = self.cfg.train.filter
        return extra.setdefault("greso_p", {"easy": f.greso_p_easy, "hard": f.greso_p_hard})

    def observe(self, groups: Sequence[Group], extra: dict) -> None:
        history = extra.setdefault("greso_history", {})
        for grp in groups:
            if grp.mixed:
                history.pop(grp.problem.id, None)
            else:
                kind = "easy" if grp.rewards[0] > 0 else "hard"
                old_kind, z = history.get(grp.problem.id, (kind, 0))
                history[grp.problem.id] = [kind, z + 1 if old_kind == kind else 1]

    def end_step(self, groups: Sequence[Group], extra: dict, n_problems: int) -> None:
        """Move each exploration probability one step: down (skip more) when its kind's share of this step's
        groups reached its target, else up.  Only after the first epoch, when every prompt has a history."""
        f = self.cfg.train.filter
        p = self.probabilities(extra)
        if extra.get("cursor", 0) < n_problems or not groups:
            return
        for kind, target in (("easy", f.greso_target / 3), ("hard", 2 * f.greso_target / 3)):
            share = sum(1 for g in groups if not g.mixed and (g.rewards[0] > 0) == (kind == "easy")) / len(groups)
            move = -f.greso_step if share >= target else f.greso_step
            p[kind] = min(f.greso_p_max, max(f.greso_p_min, p[kind] + move))


@dataclass
class SpeedScreening:
    """SPEED-RL: screen with a few responses, complete the groups with intermediate pass rates.  Qualified prompts
    beyond the batch wait in a queue (in ``extra``) and are completed first at the next step, as SPEED's
    continuation set; their screening responses are then one update old, which the PPO ratio accounts for."""

    cfg: RunConfig

    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch:
        t, f, g = self.cfg.train, self.cfg.train.filter, self.cfg.rollout.group_size
        n, k = t.prompts_per_step, f.screen_samples
        by_id = {p.id: p for p in problems}
        # a stage change can leave queued prompts that this stage does not train on
        queue = [q for q in extra.get("online_filter_queue", []) if q["id"] in by_id]
        batch = Batch([])
        for draw in range(f.max_num_gen_batches + 1):
            if len(queue) < n - len(batch.groups) and draw < f.max_num_gen_batches:
                prompts, skipped = _screen_take(problems, extra, f.gen_batch_prompts, self.cfg)
                t0 = time.perf_counter()
                screens = sample_groups(policy, prompts, (t.seed, "train", step, draw), range(k), self.cfg.rollout)
                batch.seconds["screening"] += time.perf_counter() - t0
                batch.sampled_sequences += len(prompts) * k
                batch.skipped_prompts += skipped
                _screen_observe(screens, extra, self.cfg)
                queue += [_queued(s, (t.seed, "train", step, draw)) for s in screens if s.mixed]
            chosen, queue = queue[: n - len(batch.groups)], queue[n - len(batch.groups):]
            t0 = time.perf_counter()
            # continued with the screening step's keys, so without an update in between a completed group is
            # exactly the one plain sampling would have drawn
            keys = sorted({tuple(q["key"]) for q in chosen}, key=str)
            for key in keys:
                part = [q for q in chosen if tuple(q["key"]) == key]
                rest = sample_groups(policy, [by_id[q["id"]] for q in part], key, range(k, g), self.cfg.rollout)
                batch.groups += [Group(r.problem, _unqueued(q) + r.gens, q["rewards"] + r.rewards) for q, r in zip(part, rest)]
            batch.seconds["rollouts"] += time.perf_counter() - t0
            batch.sampled_sequences += len(chosen) * (g - k)
            if len(batch.groups) == n:
                break
        extra["online_filter_queue"] = queue
        if len(batch.groups) < n:
            # not enough prompts passed the screen: the rest of the batch is plain, unscreened groups
            t0 = time.perf_counter()
            missing = n - len(batch.groups)
            batch.groups += sample_groups(policy, _take(problems, extra, missing, t.seed),
                                          (t.seed, "train", step, "fill"), range(g), self.cfg.rollout)
            batch.seconds["rollouts"] += time.perf_counter() - t0
            batch.sampled_sequences += missing * g
        return batch


def _queued(screen: Group, key: tuple) -> dict:
    """A screened group as JSON (the queue is part of the resumable state)."""
    return {"id": screen.problem.id, "key": list(key), "rewards": list(screen.rewards),
            "gens": [[x.prompt_ids, x.response_ids, x.behavior_logprobs, x.finish_reason] for x in screen.gens]}


def _unqueued(q: dict) -> list[Generation]:
    return [Generation(list(a), list(b), list(c), d) for a, b, c, d in q["gens"]]


def prompt_group(grp: Group, temperature: float) -> PromptGroup:
    """A sampled group as the estimator's input (its behaviour log-probs are the sampling ones: on-policy)."""
    return PromptGroup(grp.problem.id, list(grp.gens[0].prompt_ids), [list(x.response_ids) for x in grp.gens],
                       [list(x.behavior_logprobs) for x in grp.gens], list(grp.rewards), temperature)


def _flat_gradients(estimator, groups: Sequence[PromptGroup]) -> tuple[list[str], list[torch.Tensor]]:
    ids, rows = [], []
    for gb in estimator.gradients(groups).batches:
        for b, pid in enumerate(gb.prompt_ids):
            ids.append(pid)
            rows.append(torch.cat([gb.grads[n][b].reshape(-1) for n in estimator.param_names]))
    return ids, rows


@dataclass
class InfluenceScreening:
    """cropi's influence ranking of the prompts the online filter's screen let through (this module's docstring)."""

    cfg: RunConfig
    validation: Mapping[str, Sequence[Problem]]
    _means: dict = field(default_factory=dict)
    _means_step: int = -1

    def _validation_means(self, policy: Policy, step: int, estimator) -> dict[str, torch.Tensor]:
        f, t, g = self.cfg.train.filter, self.cfg.train, self.cfg.rollout.group_size
        if self._means and step - self._means_step < f.influence_refresh:
            return self._means
        at = step - step % f.influence_refresh
        means = {}
        for name, problems in self.validation.items():
            probs = list(problems)[: self.cfg.select.score.max_val_prompts]
            groups = sample_groups(policy, probs, (t.seed, "validation", at), range(g), self.cfg.rollout)
            _, rows = _flat_gradients(estimator, [prompt_group(x, self.cfg.rollout.temperature) for x in groups if x.mixed])
            if rows:
                means[name] = torch.stack(rows).mean(0)
            else:  # a set without a mean has no scores: say so, as the fusion then ranks without it
                logging.getLogger("cropi").warning(
                    "validation set %r has no prompt with mixed rewards: left out of the fusion", name)
        if not means:
            raise CropiError(f"no validation set ({', '.join(map(repr, self.validation))}) has a prompt with mixed "
                             f"rewards at step {at}: nothing to rank the screened prompts by; use more validation "
                             "prompts (select.score.max_val_prompts) or responses (rollout.group_size)")
        self._means, self._means_step = means, at
        return means

    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch:
        from cropi.scores.engine import make_score_estimator
        from cropi.scores.ranking import cosine_scores, rank

        t, f, g = self.cfg.train, self.cfg.train.filter, self.cfg.rollout.group_size
        n, k = t.prompts_per_step, f.screen_samples
        want = max(n, math.ceil(n * f.influence_candidates))
        batch = Batch([])
        mixed: list[tuple[Group, tuple]] = []
        screened: list[Group] = []
        for draw in range(f.max_num_gen_batches):
            key = (t.seed, "train", step, draw)
            prompts, skipped = _screen_take(problems, extra, f.gen_batch_prompts, self.cfg)
            t0 = time.perf_counter()
            screens = sample_groups(policy, prompts, key, range(k), self.cfg.rollout)
            batch.seconds["screening"] += time.perf_counter() - t0
            batch.sampled_sequences += len(prompts) * k
            batch.skipped_prompts += skipped
            screened += screens
            mixed += [(s, key) for s in screens if s.mixed]
            if len(mixed) >= want:
                break
        t0 = time.perf_counter()
        estimator = make_score_estimator(policy, self.cfg)
        means = self._validation_means(policy, step, estimator)
        ids, rows = _flat_gradients(estimator, [prompt_group(s, self.cfg.rollout.temperature) for s, _ in mixed])
        scores = {}
        if rows:
            stacked = torch.stack(rows)
            scores = {v: dict(zip(ids, cosine_scores(stacked, m).tolist())) for v, m in means.items()}
        order = rank(scores, n).ids if scores else []
        order += [s.problem.id for s, _ in mixed if s.problem.id not in set(order)]
        batch.seconds["scoring"] = time.perf_counter() - t0
        by_id = {s.problem.id: (s, key) for s, key in mixed}
        chosen = [by_id[i] for i in order[:n]]
        _screen_observe(screened, extra, self.cfg, order[n:] if f.screen_skip_ranked_out else ())
        t0 = time.perf_counter()
        done: dict[str, Group] = {}
        for key in sorted({key for _, key in chosen}, key=str):
            part = [s for s, kk in chosen if kk == key]
            rest = sample_groups(policy, [s.problem for s in part], key, range(k, g), self.cfg.rollout)
            done.update({s.problem.id: Group(s.problem, s.gens + r.gens, s.rewards + r.rewards) for s, r in zip(part, rest)})
        batch.groups = [done[s.problem.id] for s, _ in chosen]  # best aligned first
        batch.sampled_sequences += len(chosen) * (g - k)
        if len(batch.groups) < n:  # the screen let too few through: the rest are plain, unscreened groups
            missing = n - len(batch.groups)
            batch.groups += sample_groups(policy, _take(problems, extra, missing, t.seed),
                                          (t.seed, "train", step, "fill"), range(g), self.cfg.rollout)
            batch.sampled_sequences += missing * g
        batch.seconds["rollouts"] = time.perf_counter() - t0
        return batch


def make_batch_builder(cfg: RunConfig, validation: Mapping[str, Sequence[Problem]] | None = None) -> BatchBuilder:
    """The batch rule ``cfg.train.filter.method`` (influence_filter needs the validation sets)."""
    method = cfg.train.filter.method
    if method == "influence_filter":
        if not validation:
            from cropi.errors import CropiError

            raise CropiError("train.filter.method=influence_filter needs validation sets (the embedded suite's, or --val)")
        return InfluenceScreening(cfg, validation)
    return {"none": PlainBatches, "dapo": DynamicSampling, "greso": Greso, "online_filter": SpeedScreening}[method](cfg)
