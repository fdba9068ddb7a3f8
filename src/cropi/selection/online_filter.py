"""The online filter (SPEED-RL, arXiv 2506.09016; online difficulty filtering, arXiv 2504.03380) as a per-batch
rule: screen each prompt with ``screen_samples`` responses, keep those with 0 < pass rate < 1, sample the rest of
their G responses and train on all G.  The screening responses are the first of the G (sampling is keyed per
response), so a kept group is exactly the one plain sampling would have drawn.  GRESO's pre-rollout skip can
stand in front of the screen (``train.filter.screen_skip_p``); as published, it does not."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from cropi.config import RunConfig
from cropi.policy import Policy
from cropi.selection.batch import Batch, Group, GroupSampler, queued, sample_groups, screen_observe, screen_take, take, unqueued
from cropi.tasks import Problem


@dataclass
class SpeedScreening:
    """SPEED-RL: screen with a few responses, complete the groups with intermediate pass rates.  Qualified prompts
    beyond the batch wait in a queue (in ``extra``) and are completed first at the next step, as SPEED's
    continuation set; their screening responses are then one update old, which the PPO ratio accounts for."""

    cfg: RunConfig
    sampler: GroupSampler = field(default=sample_groups, kw_only=True)  # samples and grades screens and groups

    def build(self, policy: Policy, problems: Sequence[Problem], step: int, extra: dict) -> Batch:
        t, f, g = self.cfg.train, self.cfg.train.filter, self.cfg.rollout.group_size
        n, k = t.prompts_per_step, f.screen_samples
        by_id = {p.id: p for p in problems}
        # a stage change can leave queued prompts that this stage does not train on
        queue = [q for q in extra.get("online_filter_queue", []) if q["id"] in by_id]
        batch = Batch([])
        for draw in range(f.max_num_gen_batches + 1):
            if len(queue) < n - len(batch.groups) and draw < f.max_num_gen_batches:
                prompts, skipped = screen_take(problems, extra, f.gen_batch_prompts, self.cfg)
                t0 = time.perf_counter()
                screens = self.sampler(policy, prompts, (t.seed, "train", step, draw), range(k), self.cfg.rollout)
                batch.seconds["screening"] += time.perf_counter() - t0
                batch.sampled_sequences += len(prompts) * k
                batch.skipped_prompts += skipped
                screen_observe(screens, extra, self.cfg)
                queue += [queued(s, (t.seed, "train", step, draw)) for s in screens if s.mixed]
            chosen, queue = queue[: n - len(batch.groups)], queue[n - len(batch.groups):]
            t0 = time.perf_counter()
            # continued with the screening step's keys, so without an update in between a completed group is
            # exactly the one plain sampling would have drawn
            keys = sorted({tuple(q["key"]) for q in chosen}, key=str)
            for key in keys:
                part = [q for q in chosen if tuple(q["key"]) == key]
                rest = self.sampler(policy, [by_id[q["id"]] for q in part], key, range(k, g), self.cfg.rollout)
                batch.groups += [Group(r.problem, unqueued(q) + r.gens, q["rewards"] + r.rewards) for q, r in zip(part, rest)]
            batch.seconds["rollouts"] += time.perf_counter() - t0
            batch.sampled_sequences += len(chosen) * (g - k)
            if len(batch.groups) == n:
                break
        extra["online_filter_queue"] = queue
        if len(batch.groups) < n:
            # not enough prompts passed the screen: the rest of the batch is plain, unscreened groups
            t0 = time.perf_counter()
            missing = n - len(batch.groups)
            batch.groups += self.sampler(policy, take(problems, extra, missing, t.seed),
                                          (t.seed, "train", step, "fill"), range(g), self.cfg.rollout)
            batch.seconds["rollouts"] += time.perf_counter() - t0
            batch.sampled_sequences += missing * g
        return batch


