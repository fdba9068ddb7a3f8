"""Tasks: problem records, the embedded synthetic suite, real math data and verifiable rewards."""

from __future__ import annotations

from typing import Sequence

from cropi.tasks.problem import Problem
from cropi.tasks.synthetic import FAMILIES, reward


def grade(problem: Problem, response: str) -> float:
    """Verifiable reward of ``response``: the family's own exact grader for synthetic problems, math-verify
    (with a hard time limit) for everything else."""
    fam = FAMILIES.get(problem.family)
    if fam is not None and problem.source == "synthetic":
        return reward(problem, response)
    from cropi.tasks.grading import grade_math

    return grade_math(problem.answer, response)


def grade_many(problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
    """Grade pairs; math problems go through one batched call to the time-limited grader."""
    out: list[float | None] = [None] * len(problems)
    math_idx = []
    for i, (p, r) in enumerate(zip(problems, responses)):
        fam = FAMILIES.get(p.family)
        if fam is not None and p.source == "synthetic":
            out[i] = reward(p, r)
        else:
            math_idx.append(i)
    if math_idx:
        from cropi.tasks.grading import grade_math_batch

        scores = grade_math_batch([problems[i].answer for i in math_idx], [responses[i] for i in math_idx])
        for i, s in zip(math_idx, scores):
            out[i] = float(s)
    return [float(x) for x in out]


__all__ = ["Problem", "grade", "grade_many", "FAMILIES"]
