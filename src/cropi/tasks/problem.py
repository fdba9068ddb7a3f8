"""The problem record every task, reader and store shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One verifiable problem.

    ``answer`` is the gold answer in the task's canonical form (what the grader compares against);
    ``family`` names the grader family (a synthetic family, ``gsm8k``, ``math`` ...); ``source`` says where
    the problem came from (``synthetic``, a file path ...).
    """

    id: str
    prompt: str
    answer: str
    family: str
    source: str = "synthetic"
    difficulty: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Problem":
        return Problem(
            id=str(d["id"]),
            prompt=str(d["prompt"]),
            answer=str(d["answer"]),
            family=str(d.get("family", "generic")),
            source=str(d.get("source", "user")),
            difficulty=int(d.get("difficulty", 0) or 0),
            metadata=dict(d.get("metadata") or {}),
        )
