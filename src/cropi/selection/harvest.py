"""cropi harvested: influence read from the GRPO step's own backward, used to choose the next batches.

No rollout is sampled and no backward is run in order to score a training prompt.
- **Harvest.** While the trainer's update runs its backward (``training.grpo``), hooks on every module
  (``projection.factored.SketchHooks``) leave each trained prompt's gradient of its own GRPO loss behind, projected
  factor by factor (``select.score.factor_k`` on each side of a weight).  Its cosine (``harvest_score``) to each
  validation set's mean projected gradient is the prompt's score, stamped with the step.
- **Target.** The validation means are POPI gradients at the current θ of stored validation groups (the first
  ``select.score.max_val_prompts`` of each set), recomputed every ``harvest_val_every`` steps without sampling.
  The groups themselves are sampled afresh only every ``harvest_val_resample`` steps.
- **Choice.** Each generation batch of GRESO's dynamic sampling takes up to ``harvest_share`` of its prompts from
  the top ``harvest_top`` of the harvested ranking (scores fused across validation sets by reciprocal rank in
  ``scores.ranking``; a prompt waits ``harvest_gap`` steps after training, and a score older than
  ``harvest_max_age`` is forgotten).  The rest come from the stream behind GRESO's skip, which explores the
  prompts never scored.  A prompt whose group comes back with equal rewards loses its score: its gradient is zero
  now.
- **Pooled by family** (``harvest_family_decay`` < 1): one group's score is noisy (G responses), a family's running
  mean much less.  The stream then keeps a prompt of the family ranked r-th with probability decay^(r-1), at
  least 0.05, on top of GRESO's skip: a skip before rollout, so it costs nothing.

The trained groups are written as behaviour rows (``RUN/trained/``, as ``select.reuse_rollouts`` writes them), so
the behaviour data refreshes itself with every step.

What it charges: the validation groups' sampling and their POPI means go to ``scoring``; the hooks and the
cosines run inside the update and are part of its seconds.  A resumed run recomputes the means (and, off a
resampling step, samples the validation groups) with the resumed policy, so it can differ from an
uninterrupted run after the resume point.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from cropi.errors import CropiError
from cropi.policy import Policy
from cropi.projection.factored import FactoredSJLT, SketchHooks
from cropi.scores.engine import make_score_estimator, make_score_projector
from cropi.scores.in_memory import group_means
from cropi.scores.ranking import cosine_scores, rank
from cropi.selection.batch import Batch, Group, GroupSampler, prompt_group, sample_groups
from cropi.selection.greso import Greso
from cropi.tasks import Problem

log = logging.getLogger("cropi")

HARVEST = "harvest"  # extra[HARVEST]: prompt id -> [step trained, {validation set: score}]
FAMILIES = "harvest_families"  # extra[FAMILIES]: family -> {validation set: running mean of its harvested scores}
FAMILY_RATE = 0.1  # weight of a step's family mean in the running mean (about the last 10 steps)
FAMILY_FLOOR = 0.05  # the least keep probability of a family, so every family is still explored


@dataclass
class HarvestedInfluence(Greso):
    """GRESO's dynamic sampling, with part of each generation batch chosen by harvested influence (module doc)."""

    validation: Mapping[str, Sequence[Problem]] = field(default_factory=dict)
    # samples and grades the validation groups; their responses need the behaviour log-probs POPI reweights
    validation_sampler: GroupSampler = field(default=sample_groups, kw_only=True)
    _sketch: FactoredSJLT | None = None
    _val_groups: dict = field(default_factory=dict)
    _val_step: int = -1
    _means: dict = field(default_factory=dict)
    _means_step: int = -1
    _drawn: set = field(default_factory=set)  # drawn so far this step
    _extra: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- the harvest (called by the trainer)
    def sketch(self, policy: Policy) -> FactoredSJLT:
        if self._sketch is None:
            self._sketch = make_score_projector(policy, dataclasses.replace(self.cfg.select.score,
                                                                            kind=FactoredSJLT.kind))
        return self._sketch

    def hooks(self, policy: Policy, n_groups: int) -> SketchHooks:
        return SketchHooks(self.sketch(policy), policy.model, n_groups)

    def harvested(self, policy: Policy, step: int, batch: Batch, projected: torch.Tensor) -> None:
        """Score the trained groups against the validation means in force; a group with equal rewards (a
        filled batch) carries no gradient and loses its score."""
        scores = self._extra.setdefault(HARVEST, {})
        mixed = [i for i, grp in enumerate(batch.groups) if grp.mixed]
        for grp in batch.groups:
            scores.pop(grp.problem.id, None)
        if not mixed or not self._means:
            return
        rows = projected[mixed]
        by_set = {v: self._score(rows, m).tolist() for v, m in self._means.items()}
        by_family: dict[str, list[int]] = {}
        for j, i in enumerate(mixed):
            scores[batch.groups[i].problem.id] = [step, {v: s[j] for v, s in by_set.items()}]
            by_family.setdefault(batch.groups[i].problem.family, []).append(j)
        running = self._extra.setdefault(FAMILIES, {})
        for fam, js in by_family.items():
            old = running.setdefault(fam, {})
            for v, s in by_set.items():
                mean = sum(s[j] for j in js) / len(js)
                old[v] = mean if v not in old else (1 - FAMILY_RATE) * old[v] + FAMILY_RATE * mean

    def _score(self, rows: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.filter.harvest_score == "dot":
            return rows.float() @ mean.float()
        return cosine_scores(rows, mean)

    # ---------------------------------------------------------------- the target
    def validation_means(self, policy: Policy, step: int) -> dict[str, torch.Tensor]:
        """ḡ_v at θ from the stored validation groups: POPI, no sampling, except every ``harvest_val_resample``
        steps (and on a resumed run's first step), when the groups are sampled afresh."""
        f, t, g = self.cfg.train.filter, self.cfg.train, self.cfg.rollout.group_size
        if not self._val_groups or step - self._val_step >= f.harvest_val_resample:
            at = step - step % f.harvest_val_resample
            self._val_groups = {}
            for name, problems in self.validation.items():
                probs = list(problems)[: self.cfg.select.score.max_val_prompts]
                sampled = self.validation_sampler(policy, probs, (t.seed, "validation", at), range(g), self.cfg.rollout)
                self._val_groups[name] = [prompt_group(x, self.cfg.rollout.temperature) for x in sampled if x.mixed]
            self._val_step, self._means_step = at, -1
        if not self._means or self._means_step < 0 or step - self._means_step >= f.harvest_val_every:
            estimator = make_score_estimator(policy, self.cfg, projector=self.sketch(policy))
            try:
                self._means = group_means(estimator, self._val_groups)
            except CropiError as e:  # no validation group has mixed rewards now: no new direction to score against
                log.warning("cropi_harvest at step %d: %s; %s", step, e,
                            "the previous validation means stay in force" if self._means else
                            "nothing is harvested until a validation group has mixed rewards")
            self._means_step = step
        return self._means

    # ---------------------------------------------------------------- the choice
    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch:
        self._extra, self._drawn = extra, set()
        t0 = time.perf_counter()
        self.validation_means(policy, step)
        seconds = time.perf_counter() - t0
        batch = super().build(policy, problems, step, extra)
        batch.seconds["scoring"] += seconds
        return batch

    def ranked(self, problems: Sequence[Problem], step: int, extra: dict) -> list[str]:
        """Harvested prompts that may be drawn now, best first: in the top ``harvest_top`` of every score held
        (fused across validation sets), trained at least ``harvest_gap`` steps ago, and scored at most
        ``harvest_max_age`` steps ago (older scores are dropped here)."""
        f = self.cfg.train.filter
        scores = extra.setdefault(HARVEST, {})
        for pid in [p for p, (s, _) in scores.items() if step - s > f.harvest_max_age]:
            del scores[pid]
        allowed = {p.id for p in problems}
        held = {p: v for p, (_, v) in scores.items() if p in allowed}
        if not held:
            return []
        sets = sorted({v for vals in held.values() for v in vals})
        top = rank({v: {p: vals[v] for p, vals in held.items() if v in vals} for v in sets},
                   max(1, math.ceil(f.harvest_top * len(held)))).ids
        return [p for p in top if step - scores[p][0] >= f.harvest_gap and p not in self._drawn]

    def candidates(self, problems: Sequence[Problem], step: int, extra: dict, n: int) -> tuple[list[Problem], int]:
        by_id = {p.id: p for p in problems}
        chosen = [by_id[p] for p in self.ranked(problems, step, extra)[: round(self.cfg.train.filter.harvest_share * n)]]
        self._drawn.update(p.id for p in chosen)
        if len(chosen) >= n:
            return chosen, 0
        stream, skipped = super().candidates(problems, step, extra, n - len(chosen))
        fresh = [p for p in stream if p.id not in self._drawn]  # never two groups of one prompt in a step
        self._drawn.update(p.id for p in fresh)
        return chosen + fresh, skipped

    def keep(self, prompt: Problem, extra: dict) -> float:
        """GRESO's keep probability, times the prompt's family weight (``harvest_family_decay``)."""
        return super().keep(prompt, extra) * self._family_weights(extra).get(prompt.family, 1.0)

    def _family_weights(self, extra: dict) -> dict[str, float]:
        decay = self.cfg.train.filter.harvest_family_decay
        running = extra.get(FAMILIES) or {}
        if decay >= 1.0 or len(running) < 2:
            return {}
        sets = sorted({v for per in running.values() for v in per})
        order = rank({v: {f: per[v] for f, per in running.items() if v in per} for v in sets}, len(running)).ids
        return {f: max(decay ** r, FAMILY_FLOOR) for r, f in enumerate(order)}

    def observe(self, groups: Sequence[Group], extra: dict) -> None:
        super().observe(groups, extra)
        scores = extra.setdefault(HARVEST, {})
        for grp in groups:
            if not grp.mixed:
                scores.pop(grp.problem.id, None)
