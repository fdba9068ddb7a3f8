"""Gold-answer extraction and the GSM8K / MATH loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropi.errors import DataError
from cropi.tasks.math_data import (
    extract_boxed,
    extract_gsm8k_answer,
    extract_math_answer,
    load_gsm8k,
    load_math,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 5 + 13 = 18\n#### 18", "18"),
        ("#### 1,000.", "1000"),
        ("#### $18", "18"),
        ("#### \\$18", "18"),
        ("#### -7", "-7"),
        ("#### \u22127", "-7"),
        ("#### 3.25", "3.25"),
        ("#### .5", ".5"),
        ("#### 12 dollars", "12"),
        ("#### +4", "4"),
        ("first #### 3\nthen #### 4", "4"),
        ("#### 1,234,567", "1234567"),
        ("no marker 18", None),
        ("#### ", None),
        ("#### seven", None),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{5}$.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{\\left(2+\\frac{1}{x}\\right)}} end", "\\frac{\\sqrt{3}}{\\left(2+\\frac{1}{x}\\right)}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed 42$ done", "42"),
        ("\\boxed 42.", "42"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed {3}", "3"),
        ("\\boxed{1} and a truncated \\boxed{\\frac{1}{2}", None),
        ("\\boxed{", None),
        ("nothing here", None),
        ("\\boxedfoo{3}", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_math_answer_falls_back_to_answer_is():
    assert extract_math_answer("so it is 4.The answer is: 4") == "4"
    assert extract_math_answer("$\\boxed{4}$.The answer is: 4") == "4"
    assert extract_math_answer("no answer at all") is None


def test_load_gsm8k_real_files():
    train = load_gsm8k(data_file("gsm8k/train.jsonl"))
    test = load_gsm8k(data_file("gsm8k/test.jsonl"))
    assert (len(train), len(test)) == (7473, 1319)
    p = test[12]
    assert p.id == "gsm8k-test-00012"
    assert p.family == "gsm8k" and p.source.endswith("gsm8k/test.jsonl")
    assert p.prompt.startswith("Carlos is planting a lemon tree.")
    assert extract_gsm8k_answer(p.metadata["solution"]) == p.answer
    assert test[0].answer == "18"
    for q in train + test:  # every gold is a plain number after extraction
        float(q.answer)
        assert "," not in q.answer and "$" not in q.answer
    assert load_gsm8k(data_file("gsm8k/test.jsonl"), split_name="eval")[0].id == "gsm8k-eval-00000"


def test_load_math_real_file():
    problems = load_math(data_file("math500/test.jsonl"))
    assert len(problems) == 500
    assert problems[12].id == "math-00012"
    assert problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    # The file states each answer a second time; the boxed extraction must agree with it everywhere.
    for p in problems:
        assert p.family == "math"
        assert p.metadata["solution"].rsplit("The answer is: ", 1)[1].strip() == p.answer


def test_load_math_original_format(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [
        {"problem": "1+1?", "solution": "It is $\\boxed{2}$.", "level": "Level 3", "type": "Algebra",
         "unique_id": "test/algebra/1.json"},
        {"problem": "2+2?", "solution": "$\\boxed{4}$", "level": 5, "subject": "Prealgebra"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_math(path)
    assert (a.id, a.answer, a.difficulty, a.metadata["subject"]) == ("test/algebra/1.json", "2", 3, "Algebra")
    assert (b.id, b.answer, b.difficulty, b.metadata["subject"]) == ("math-00001", "4", 5, "Prealgebra")
    assert a.metadata["solution"] == "It is $\\boxed{2}$."


def test_loader_reports_line_without_gold(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(
        json.dumps({"question": "q1", "answer": "x\n#### 3"}) + "\n"
        + json.dumps({"question": "q2", "answer": "forgot the marker"}) + "\n"
    )
    with pytest.raises(DataError) as e:
        load_gsm8k(path)
    assert str(e.value).startswith(f"{path}:2: ")
    assert "gold answer" in str(e.value)
