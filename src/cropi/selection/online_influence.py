"""The online influence rule: the influence ranking of cropi applied inside the online filter's screen, a
per-batch rule.  It samples fresh responses in order to score, so it is a variant of its own, not cropi.

Screen as the online filter does until ``influence_candidates`` × ``prompts_per_step`` prompts have mixed
screening rewards; rank them by the cosine of their on-policy GRPO gradient (the POPI estimate at θ = β, from the
screening responses alone) to each validation set's mean gradient, fused by reciprocal rank
(``cropi.scores.in_memory.rank_groups``); complete and train on the top ``prompts_per_step``.  The validation means
come from fresh samples of the first ``select.score.max_val_prompts`` prompts of each set, re-sampled every
``influence_refresh`` steps (a resumed run re-samples them with the resumed policy unless it resumes on a
refresh step).  GRESO's pre-rollout skip stands in front of the screen (p = 0.5 unless set, chosen on
validation), and a mixed prompt ranked out of the batch counts as a screen that gave the batch nothing
(``screen_skip_ranked_out``), so the screen returns most to the prompts the ranking keeps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from cropi.config import RunConfig
from cropi.policy import Policy
from cropi.scores.engine import make_score_estimator
from cropi.scores.in_memory import group_means, rank_groups
from cropi.selection.batch import Batch, Group, prompt_group, sample_groups, screen_observe, screen_take, take
from cropi.tasks import Problem


@dataclass
class InfluenceScreening:
    """The influence ranking of the prompts the online filter's screen let through (this module's docstring)."""

    cfg: RunConfig
    validation: Mapping[str, Sequence[Problem]]
    _means: dict = field(default_factory=dict)
    _means_step: int = -1

    def _validation_means(self, policy: Policy, step: int, estimator) -> dict[str, torch.Tensor]:
        f, t, g = self.cfg.train.filter, self.cfg.train, self.cfg.rollout.group_size
        if self._means and step - self._means_step < f.influence_refresh:
            return self._means
        at = step - step % f.influence_refresh
        groups = {}
        for name, problems in self.validation.items():
            probs = list(problems)[: self.cfg.select.score.max_val_prompts]
            sampled = sample_groups(policy, probs, (t.seed, "validation", at), range(g), self.cfg.rollout)
            groups[name] = [prompt_group(x, self.cfg.rollout.temperature) for x in sampled if x.mixed]
        self._means, self._means_step = group_means(estimator, groups), at
        return self._means

    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch:
        t, f, g = self.cfg.train, self.cfg.train.filter, self.cfg.rollout.group_size
        n, k = t.prompts_per_step, f.screen_samples
        want = max(n, math.ceil(n * f.influence_candidates))
        batch = Batch([])
        mixed: list[tuple[Group, tuple]] = []
        screened: list[Group] = []
        for draw in range(f.max_num_gen_batches):
            key = (t.seed, "train", step, draw)
            prompts, skipped = screen_take(problems, extra, f.gen_batch_prompts, self.cfg)
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
        order = rank_groups(estimator, [prompt_group(s, self.cfg.rollout.temperature) for s, _ in mixed], means, n).ids
        order += [s.problem.id for s, _ in mixed if s.problem.id not in set(order)]
        batch.seconds["scoring"] = time.perf_counter() - t0
        by_id = {s.problem.id: (s, key) for s, key in mixed}
        chosen = [by_id[i] for i in order[:n]]
        screen_observe(screened, extra, self.cfg, order[n:] if f.screen_skip_ranked_out else ())
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
            batch.groups += sample_groups(policy, take(problems, extra, missing, t.seed),
                                          (t.seed, "train", step, "fill"), range(g), self.cfg.rollout)
            batch.sampled_sequences += missing * g
        batch.seconds["rollouts"] = time.perf_counter() - t0
        return batch
