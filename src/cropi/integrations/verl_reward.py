"""The verifiable reward of cropi's problems for verl: ``reward.custom_reward_function.path`` names this file.

verl loads it by file path in its reward workers (possibly another interpreter and environment than the one
that runs cropi) and calls ``compute_score(data_source=..., solution_str=..., ground_truth=...,
extra_info=..., **kwargs)`` once per response.  So the module imports nothing from cropi at load time, and
when ``cropi`` is not importable there it falls back to the source tree this file sits in.

``ground_truth`` is the JSON text written by ``cropi.selection.export.verl_ground_truth`` (the gold answer, the
family, and whether the family's own exact grader applies); plain text is taken as a math answer, so
parquet files from elsewhere (e.g. verl's GSM8K preprocessing) are graded too.  Grading is
``cropi.tasks.grade``, the same call cropi's own trainer makes: synthetic families by their exact reward,
everything else by math-verify under a hard time limit (which needs ``math-verify`` in verl's environment).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cropi_tasks():
    try:
        import cropi.tasks as tasks
    except ImportError:
        # loaded by path from a source checkout in an environment without cropi installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        import cropi.tasks as tasks
    return tasks


def parse_ground_truth(ground_truth, data_source: str = "") -> dict:
    """``{"answer", "family", "synthetic"}`` (and ``"style"`` where the problem has one) from cropi's JSON text,
    a dict with those keys, or a plain answer."""
    if isinstance(ground_truth, dict):
        record = dict(ground_truth)
    else:
        text = str(ground_truth)
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "answer" not in record:
            record = {"answer": text}
    out = {"answer": str(record["answer"]), "family": str(record.get("family") or data_source or "math"),
           "synthetic": bool(record.get("synthetic", False))}
    if record.get("style"):
        out["style"] = str(record["style"])
    return out


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """1.0 when ``solution_str`` answers the problem of ``ground_truth`` correctly, else 0.0."""
    tasks = _cropi_tasks()
    gold = parse_ground_truth(ground_truth, data_source)
    problem = tasks.Problem(id=str((extra_info or {}).get("index", "")), prompt="", answer=gold["answer"],
                            family=gold["family"], source="synthetic" if gold["synthetic"] else "verl",
                            metadata={"style": gold["style"]} if "style" in gold else {})
    return float(tasks.grade(problem, solution_str))
