"""GRESO (arXiv 2506.02177) as a per-batch rule: dynamic sampling, but before rollout each prompt whose last
``z`` groups in a row had equal rewards is skipped with probability 1 − p^z.  p is kept apart for all-correct
("easy") and all-wrong ("hard") prompts and moves by ``greso_step`` per step towards the share of equal-reward
groups ``greso_target``, from the end of the first epoch, as in GRESO's code; the generation batch adapts to the
last batch's yield."""

from __future__ import annotations

import math
from typing import Sequence

from cropi.selection.batch import Group, take_kept
from cropi.selection.dapo import DynamicSampling
from cropi.tasks import Problem


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
        return take_kept(problems, extra, n, self.cfg.train.seed, "greso", lambda prompt: self.keep(prompt, extra))

    def keep(self, prompt: Problem, extra: dict) -> float:
        """The probability that ``prompt`` is sampled when the stream reaches it: p^z after z equal-reward groups
        in a row (at least 0.01)."""
        kind, z = extra.setdefault("greso_history", {}).get(prompt.id, ("", 0))  # [kind, equal groups in a row]
        return max(self.probabilities(extra)[kind] ** z, 0.01) if z > 0 else 1.0

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


