"""Single-digit arithmetic prompts for the fidelity benchmark.

The GGUF-derived SmolLM2-135M is weak: it half-solves single-digit "What is a + b?" questions (mixed reward
groups at G = 4, T = 0.8 for about half of them) and fails almost every two-digit problem, so these are the
prompts whose POPI gradients are non-zero.  Phrasings and three operations multiply the 100 digit pairs into
enough distinct prompts; training and validation are disjoint by (operation, a, b).
"""

from __future__ import annotations

import hashlib

from cropi.tasks.problem import Problem

TEMPLATES = (
    "What is {a} {op} {b}?",
    "Compute {a} {op} {b}.",
    "What is the value of {a} {op} {b}? Answer with a number.",
    "Calculate {a} {op} {b}.",
)
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _h(*key: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little")


def arithmetic_problems(seed: int = 0, val_share: float = 0.2) -> tuple[list[Problem], list[Problem]]:
    """All (template, op, a, b) prompts in a seeded order, split into (train, validation) by (op, a, b).

    Addition comes first in the order (the model's best-solved operation, hence the most mixed groups);
    take prefixes to size a run."""
    train, val = [], []
    rank = {"+": 0, "-": 1, "*": 2}
    items = [(op, a, b, t) for op in OPS for a in range(10) for b in range(10) for t in range(len(TEMPLATES))
             if not (op == "-" and a < b)]
    items.sort(key=lambda it: (rank[it[0]], _h(seed, *it)))
    for op, a, b, t in items:
        p = Problem(id=f"arith-{op}-{a}-{b}-t{t}".replace("*", "x"), prompt=TEMPLATES[t].format(a=a, op=op, b=b),
                    answer=str(OPS[op](a, b)), family="arith", source="bench")
        is_val = _h(seed, "val", op, a, b) % 1000 < val_share * 1000
        (val if is_val else train).append(p)
    return train, val
