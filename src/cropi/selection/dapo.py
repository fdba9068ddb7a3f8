"""DAPO's dynamic sampling (arXiv 2503.14476; verl's ``algorithm.filter_groups``) as a per-batch rule: sample
``gen_batch_prompts`` prompts at a time, keep the groups whose rewards differ, refill until the batch is full,
drop the surplus.  verl stops with an error after ``max_num_gen_batches``; here the batch is filled with
equal-reward groups instead (they add no gradient, as in plain GRPO), so a comparison never dies mid-run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from cropi.config import RunConfig
from cropi.policy import Policy
from cropi.selection.batch import Batch, Group, GroupSampler, fill, sample_groups, take
from cropi.tasks import Problem


@dataclass
class DynamicSampling:
    """DAPO's dynamic sampling: refill with generation batches until ``prompts_per_step`` groups have mixed rewards."""

    cfg: RunConfig
    sampler: GroupSampler = field(default=sample_groups, kw_only=True)  # samples and grades the drawn prompts

    def candidates(self, problems: Sequence[Problem], step: int, extra: dict, n: int) -> tuple[list[Problem], int]:
        """The prompts of the next generation batch and how many were skipped to find them."""
        return take(problems, extra, n, self.cfg.train.seed), 0

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
            groups = self.sampler(policy, prompts, (t.seed, "train", step, draw), range(g), self.cfg.rollout)
            seconds += time.perf_counter() - t0
            self.observe(groups, extra)
            drawn += groups
            for grp in groups:
                (kept if grp.mixed and len(kept) < n else spare).append(grp)
            if len(kept) >= n:
                break
        self.end_step(drawn, extra, len(problems))
        batch = Batch(fill(kept, spare, n), sampled_sequences=len(drawn) * g, skipped_prompts=skipped)
        # the seconds of a generation batch are shared evenly by its groups
        batch.seconds["rollouts"] = seconds * len(batch.groups) / len(drawn)
        batch.seconds["refills"] = seconds - batch.seconds["rollouts"]
        return batch


