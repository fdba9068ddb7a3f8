"""GSM8K and MATH: gold-answer extraction and loaders that turn the files into ``Problem`` records.

Extraction is plain string scanning (no sympy), so it is cheap and safe on arbitrary model output; the
grader (``cropi.tasks.grading``) reuses it to pick the candidate answer out of a response.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from cropi.tasks.problem import Problem
from cropi.tasks.readers import read_records

_NUMBER_START = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
# \boxed / \fbox as a whole control word: "\boxedx" is some other macro.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS = re.compile(r"The answer is:?\s*(.+?)\s*$", re.DOTALL)


def extract_gsm8k_answer(text: str) -> str | None:
    """The number after the last ``####`` in ``text``, normalised (``#### $1,000.`` -> ``1000``).

    Commas, dollar signs and spaces inside the number are dropped, as is a trailing full stop; a unicode
    minus becomes ``-`` and a leading ``+`` is dropped.  Returns None when there is no ``####`` or no
    number follows it.
    """
    pos = text.rfind("####")
    if pos < 0:
        return None
    tail = text[pos + 4 :].strip()
    if not tail:
        return None
    first_line = tail.splitlines()[0]
    cleaned = first_line.replace("\u2212", "-").replace(",", "").replace("$", "").replace(" ", "")
    cleaned = cleaned.replace("\\", "")  # "\$18" in LaTeX-flavoured answers
    m = _NUMBER_START.match(cleaned)
    if m is None:
        return None
    return m.group(0).lstrip("+")


def _balanced_group(text: str, open_pos: int) -> int | None:
    """Index just past the ``}`` that closes the ``{`` at ``open_pos``; None if it never closes.

    Escaped braces (``\\{``, ``\\}``) do not count, so ``\\boxed{\\{1,2\\}}`` keeps its set braces.
    """
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed X``) in ``text``.

    Nested braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``.  Returns None when
    there is no box or the last one is never closed (a truncated generation), rather than guessing.
    """
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    i = end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _balanced_group(text, i)
        if close is None:
            return None
        return text[i + 1 : close - 1].strip()
    if i == end:  # "\boxed" glued to something that is neither a space nor a brace
        return None
    # "\boxed 5$": the argument runs to the next space, "$" or end of line.
    m = re.match(r"[^\s$]+", text[i:])
    if m is None:
        return None
    arg = m.group(0).rstrip(".,;")
    return arg or None


def extract_math_answer(solution: str) -> str | None:
    """Gold answer of a MATH solution: the last ``\\boxed{}``, else a trailing ``The answer is: X``."""
    boxed = extract_boxed(solution)
    if boxed:
        return boxed
    m = _ANSWER_IS.search(solution)
    if m:
        return m.group(1).strip().rstrip(".") or None
    return None


def load_gsm8k(path: str | os.PathLike, split_name: str | None = None) -> list[Problem]:
    """Read a GSM8K JSONL/Parquet file (``question``, ``answer`` ending ``#### N``) into Problems.

    Ids are ``gsm8k-<split>-<index>`` (split defaults to the file stem) unless rows carry an ``id``;
    the gold answer is the normalised number after ``####``; the full solution is kept in
    ``metadata["solution"]``.
    """
    split = split_name or Path(path).stem
    return read_records(
        path,
        {"prompt": ("question", "prompt"), "answer": ("answer", "solution")},
        required=("prompt", "answer"),
        answer_extractor=extract_gsm8k_answer,
        family="gsm8k",
        id_prefix=f"gsm8k-{split}",
    )


_LEVEL_NUMBER = re.compile(r"(\d+)")


def load_math(path: str | os.PathLike) -> list[Problem]:
    """Read a MATH-style file (``question``/``problem``, ``answer``/``solution`` with ``\\boxed{}``).

    Ids come from a ``unique_id`` or ``id`` column when present, else ``math-<index>``.  The gold answer
    is the last boxed expression of the solution; the solution itself goes to ``metadata["solution"]``.
    A ``level`` column (``"Level 3"`` or ``3``) becomes ``difficulty``; ``type``/``subject`` becomes
    ``metadata["subject"]``.
    """
    problems = read_records(
        path,
        {
            "id": ("unique_id", "id"),
            "prompt": ("problem", "question", "prompt"),
            "answer": ("solution", "answer"),
        },
        required=("prompt", "answer"),
        answer_extractor=extract_math_answer,
        family="math",
        id_prefix="math",
    )
    out = []
    for p in problems:
        meta = dict(p.metadata)
        difficulty = p.difficulty
        level = meta.get("level")
        if level is not None and not isinstance(level, bool):
            m = _LEVEL_NUMBER.search(str(level))
            if m:
                difficulty = int(m.group(1))
        subject = meta.get("subject", meta.get("type"))
        if isinstance(subject, str):
            meta["subject"] = subject
        out.append(replace(p, difficulty=difficulty, metadata=meta))
    return out
