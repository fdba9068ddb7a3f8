"""Math rewards: correctness on the real benchmark golds, and the hard time limit in every context."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import random
import re
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from cropi.tasks import grading
from cropi.tasks.grading import (
    check_parseable,
    extract_response_answer,
    grade_math,
    grade_math_batch,
    start_grader,
    verify_answers,
)
from cropi.tasks.math_data import load_gsm8k, load_math

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LIMIT_S = 1.5  # wall-clock bound for one grade_math call at the default 1 s timeout

# MATH500 golds that math-verify cannot turn into a sympy object (they still grade by string match).
# Measured with math-verify 0.9 / latex2sympy2_extended 1.11: none.
KNOWN_UNPARSEABLE_MATH500: set[str] = set()

TOWER = "9^{9^{9^9}}"
LONG_LATEX = "x+" * 5000 + "1"  # 10,001 characters
DEEP_FRAC = "\\frac{1}{" * 200 + "2" + "}" * 200
HOSTILE = {
    "tower": "The answer is $\\boxed{" + TOWER + "}$",
    "long": "$\\boxed{" + LONG_LATEX + "}$",
    "deep": "$\\boxed{" + DEEP_FRAC + "}$",
    "long-unboxed": "\\frac{a}{b}" * 1000,
}


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return path


def plus_one(number: str) -> str:
    return str(Decimal(number) + 1)


def bump_first_digit(answer: str) -> str:
    i = re.search(r"\d", answer).start()
    return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1 :]


def drop_last_term(answer: str) -> str | None:
    """Remove the last element of a tuple/interval, or the last +/- term of a sum; None if neither."""
    if "\\begin" in answer:  # matrices: rows and columns are not terms
        return None
    wrapped = answer[:1] in "([" or answer.startswith("\\left")
    level = 1 if wrapped else 0
    depth, cut, end = 0, None, len(answer)
    for i, c in enumerate(answer):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if wrapped and depth == 0 and cut is not None:
                end = i - len("\\right") if answer[:i].endswith("\\right") else i
                break
        elif depth == level and i > 0 and (c == "," or (c in "+-" and answer[:i].rstrip()[-1:] not in "([{,^_")):
            cut = i
    if cut is None:
        return None
    return answer[:cut].rstrip() + answer[end:]


# ---------------------------------------------------------------------------------------------------
# Unit behaviour


@pytest.mark.parametrize(
    "gold, response, score",
    [
        ("18", "so she makes \\boxed{18} dollars", 1.0),
        ("18", "#### $18.00", 1.0),
        ("1000", "It costs $1,000.", 1.0),
        ("-3", "the root is -3", 1.0),
        ("18", "#### 17", 0.0),
        ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
        ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", 1.0),
        ("0.5", "\\boxed{\\frac12}", 1.0),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}", 1.0),
        ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
        ("2\\sqrt{2}", "\\boxed{\\sqrt{7}}", 0.0),
        ("5", "\\boxed{4} ... #### 5", 0.0),  # the box wins over ####
        ("5", "I think \\boxed{5", 0.0),  # unclosed box: no answer
        ("5", "no idea", 0.0),
        ("5", "", 0.0),
        ("", "\\boxed{5}", 0.0),
    ],
)
def test_grade_math_cases(gold, response, score):
    assert grade_math(gold, response) == score


def test_extract_response_answer_order():
    assert extract_response_answer("a \\boxed{1} b #### 2 c 3") == "1"
    assert extract_response_answer("a #### 2 c 3") == "2"
    assert extract_response_answer("1, then 2,500 and 3/4") == "3/4"
    assert extract_response_answer("values 1,2,3") == "3"
    assert extract_response_answer("nothing") is None


def test_batch_matches_single_calls_and_checks_lengths():
    golds = ["1", "\\frac{1}{2}", "x+1", "7"]
    responses = ["\\boxed{1}", "\\boxed{0.5}", "\\boxed{1+x}", "\\boxed{8}"]
    assert grade_math_batch(golds, responses) == [grade_math(g, r) for g, r in zip(golds, responses)]
    assert grade_math_batch(golds, responses) == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        grade_math_batch(["1"], [])


def test_model_output_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"\\boxed{{__import__('os').system('touch {marker}')}}"
    assert grade_math("0", payload) == 0.0
    assert verify_answers(["0"], [payload[len("\\boxed{") : -1]]) == [0.0]
    assert not marker.exists()


def test_concurrent_threads():
    cases = [("\\frac{1}{2}", "\\boxed{0.5}", 1.0), ("3", "\\boxed{\\sqrt{9}}", 1.0), ("x^2", "\\boxed{x^3}", 0.0)]
    errors: list[str] = []

    def worker(k: int) -> None:
        for j in range(6):
            gold, response, want = cases[(k + j) % len(cases)]
            got = grade_math(gold, response)
            if got != want:
                errors.append(f"{gold} vs {response}: {got}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------------------------------------------
# Time limit: pre-checked public path and the hard kill, in the main thread, a thread and a process


def timed_calls() -> list[tuple[str, float, float]]:
    """(case, score, seconds) for each hostile input, then for a raw math-verify tower (no pre-checks,
    so the worker must be killed), then for a normal answer right after the kill."""
    start_grader()  # worker start-up is not part of the per-call bound
    out = []
    for name, response in HOSTILE.items():
        t = time.monotonic()
        score = grade_math("2", response)
        out.append((name, score, time.monotonic() - t))
    t = time.monotonic()
    score = verify_answers(["1"], [TOWER])[0]
    out.append(("raw-tower", score, time.monotonic() - t))
    t = time.monotonic()
    score = grade_math("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}")
    out.append(("after-kill", score, time.monotonic() - t))
    return out


def check_timed(results: list[tuple[str, float, float]]) -> None:
    by_name = {name: (score, secs) for name, score, secs in results}
    for name in [*HOSTILE, "raw-tower"]:
        score, secs = by_name[name]
        assert score == 0.0, name
        assert secs < LIMIT_S, f"{name} took {secs:.2f} s"
    score, secs = by_name["after-kill"]
    assert score == 1.0 and secs < 5.0  # may wait for the replacement worker if no spare is warm


def test_time_limit_main_thread():
    check_timed(timed_calls())


def test_time_limit_in_thread():
    box: list = []
    t = threading.Thread(target=lambda: box.append(timed_calls()))
    t.start()
    t.join(60)
    assert box, "grading thread did not finish"
    check_timed(box[0])


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_time_limit_in_process_pool(start_method):
    start_grader()  # a parent with live workers must not confuse a forked child
    ctx = multiprocessing.get_context(start_method)
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        results = pool.submit(timed_calls).result(timeout=60)
    check_timed(results)
    assert grade_math("1", "\\boxed{1}") == 1.0  # the parent's pool still works


def test_batch_kills_each_stuck_item_and_finishes_the_rest():
    start_grader()
    t = time.monotonic()
    scores = verify_answers(["1", "1", "1", "2"], [TOWER, LONG_LATEX, DEEP_FRAC, "2"], timeout=1.0)
    secs = time.monotonic() - t
    assert scores == [0.0, 0.0, 0.0, 1.0]
    # each stuck item is killed at its limit (unkilled, any one of them runs for minutes); the slack is for a
    # loaded machine
    assert secs < 6 * LIMIT_S, f"took {secs:.2f} s"


def test_recovers_when_idle_workers_die():
    start_grader()
    for w in list(grading._pool().alive):
        w.proc.kill()
        w.proc.wait()
    assert grade_math("\\frac{1}{2}", "\\boxed{\\frac{3}{6}}") == 1.0


def test_worker_that_cannot_start_raises(monkeypatch):
    broken = [sys.executable, "-c", "print('{\"error\": \"no math-verify here\"}')"]
    grading.shutdown_grader()
    monkeypatch.setattr(grading, "_worker_command", lambda: broken)
    try:
        with pytest.raises(grading.GraderError, match="no math-verify here"):
            grade_math("\\frac{1}{2}", "\\boxed{0.5}")
        assert grade_math("2", "\\boxed{2}") == 1.0  # plain numbers never need a worker
    finally:
        grading.shutdown_grader()


# ---------------------------------------------------------------------------------------------------
# Real data


def test_gsm8k_golds_grade_correct_and_perturbed_wrong():
    problems = load_gsm8k(data_file("gsm8k/train.jsonl")) + load_gsm8k(data_file("gsm8k/test.jsonl"))
    golds = [p.answer for p in problems]
    t = time.monotonic()
    scores = grade_math_batch(golds, [p.metadata["solution"] for p in problems])
    wrong = grade_math_batch(golds, [f"#### {plus_one(g)}" for g in golds])
    print(f"\nGSM8K: {int(sum(scores))}/{len(golds)} golds correct, {int(sum(wrong))} gold+1 accepted "
          f"({time.monotonic() - t:.2f} s)")
    assert len(golds) == 8792
    assert [p.id for p, s in zip(problems, scores) if s != 1.0] == []
    assert [p.id for p, s in zip(problems, wrong) if s != 0.0] == []

    # The numbers above take the exact fast path; math-verify itself must agree on a sample of each file.
    sample = random.Random(0).sample(problems[:7473], 200) + random.Random(1).sample(problems[7473:], 200)
    same = verify_answers([p.answer for p in sample], [p.answer for p in sample], timeout=5.0)
    off = verify_answers([p.answer for p in sample], [plus_one(p.answer) for p in sample], timeout=5.0)
    assert sum(same) == len(sample) and sum(off) == 0


def test_math500_golds_grade_correct_and_perturbed_wrong():
    problems = load_math(data_file("math500/test.jsonl"))
    golds = [p.answer for p in problems]
    t = time.monotonic()
    # Generous per-item timeout: this checks the comparison, not the limit (the slowest item takes ~0.2 s).
    scores = grade_math_batch(golds, [p.metadata["solution"] for p in problems], timeout=5.0)
    parsed = check_parseable(golds, timeout=5.0)
    unparseable = {p.id for p, ok in zip(problems, parsed) if not ok}
    failed = [(p.id, p.answer) for p, s in zip(problems, scores) if s != 1.0]
    print(f"\nMATH500: {int(sum(scores))}/{len(problems)} golds correct, {len(unparseable)} unparseable "
          f"({time.monotonic() - t:.2f} s)")
    assert failed == []
    assert unparseable == KNOWN_UNPARSEABLE_MATH500

    with_digits = [g for g in golds if re.search(r"\d", g)]
    sample = random.Random(0).sample(with_digits, 200)
    bumped = [bump_first_digit(g) for g in sample]
    dropped = [(g, d) for g in golds if (d := drop_last_term(g)) is not None and d != g]
    assert len(dropped) >= 40
    all_golds = sample + [g for g, _ in dropped]
    all_preds = bumped + [d for _, d in dropped]
    wrong = grade_math_batch(all_golds, ["\\boxed{" + p + "}" for p in all_preds], timeout=5.0)
    accepted = [(g, p) for g, p, s in zip(all_golds, all_preds, wrong) if s != 0.0]
    print(f"MATH500: {len(accepted)}/{len(all_golds)} perturbed answers accepted "
          f"({len(sample)} changed digit, {len(dropped)} dropped term)")
    assert accepted == []
