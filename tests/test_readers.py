"""read_records / write_records: formats, field mapping, and one test per kind of bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cropi.errors import DataError
from cropi.tasks.math_data import extract_gsm8k_answer
from cropi.tasks.problem import Problem
from cropi.tasks.readers import read_records, write_records

GOOD = {"id": "a", "prompt": "What is 1+1?", "answer": "2"}


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def expect_error(path: Path, prefix_line: int | None, fragment: str, **kwargs) -> DataError:
    """read_records must fail with ``path:line: ...`` mentioning ``fragment`` and write nothing."""
    before = listing(path.parent)
    with pytest.raises(DataError) as e:
        read_records(path, **kwargs)
    prefix = f"{path}:{prefix_line}: " if prefix_line is not None else f"{path}: "
    assert str(e.value).startswith(prefix), str(e.value)
    assert fragment in str(e.value), str(e.value)
    assert e.value.line == prefix_line
    assert listing(path.parent) == before
    return e.value


# ---------------------------------------------------------------------------------------------------
# Bad input, JSONL


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    expect_error(path, None, "empty file")


def test_only_blank_lines(tmp_path):
    path = write_lines(tmp_path / "blank.jsonl", ["", "   ", ""])
    expect_error(path, None, "empty file")


def test_invalid_json_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), '{"id": "b", "prompt": "x",'])
    expect_error(path, 2, "invalid JSON")


def test_line_not_an_object(tmp_path):
    path = write_lines(tmp_path / "list.jsonl", [json.dumps(GOOD), "", "[1, 2]"])
    expect_error(path, 3, "expected a JSON object, got a list")


def test_missing_field(tmp_path):
    path = write_lines(tmp_path / "missing.jsonl", [json.dumps(GOOD), json.dumps({"id": "b", "prompt": "p"})])
    expect_error(path, 2, "missing field 'answer'")


def test_missing_mapped_field_names_the_column(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [json.dumps({"id": "a", "question": "q"})])
    expect_error(path, 1, "missing field 'answer' (column 'solution')", fields={"prompt": "question", "answer": "solution"})


def test_missing_id_when_required(tmp_path):
    path = write_lines(tmp_path / "noid.jsonl", [json.dumps({"prompt": "p", "answer": "1"})])
    expect_error(path, 1, "missing field 'id'")


def test_null_field(tmp_path):
    path = write_lines(tmp_path / "null.jsonl", [json.dumps({**GOOD, "prompt": None})])
    expect_error(path, 1, "null field 'prompt'")


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("prompt", 5, "field 'prompt' must be a string, got an integer"),
        ("prompt", "   ", "field 'prompt' is empty"),
        ("answer", [1, 2], "field 'answer' must be a string or number, got a list"),
        ("answer", {"x": 1}, "field 'answer' must be a string or number, got an object"),
        ("answer", True, "field 'answer' must be a string or number, got a boolean"),
        ("id", 1.5, "field 'id' must be a string or integer, got a float"),
        ("difficulty", "hard", "field 'difficulty' must be an integer, got a string"),
        ("metadata", [1], "field 'metadata' must be an object, got a list"),
        ("family", 3, "field 'family' must be a string, got an integer"),
    ],
)
def test_wrong_type(tmp_path, field, value, fragment):
    path = write_lines(tmp_path / "types.jsonl", [json.dumps(GOOD), "", json.dumps({**GOOD, "id": "b", field: value})])
    expect_error(path, 3, fragment)


def test_non_utf8_line(tmp_path):
    path = write_lines(tmp_path / "latin1.jsonl", [json.dumps(GOOD), '{"id": "b", "prompt": "caf\xe9", "answer": "1"}'.encode("latin-1")])
    expect_error(path, 2, "not valid UTF-8 (byte 0xe9")


def test_duplicate_id_reports_both_lines(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "id": "b"}), json.dumps(GOOD)])
    err = expect_error(path, 3, "duplicate id 'a'")
    assert "first seen on line 1" in str(err)


def test_answer_extractor_failure(tmp_path):
    path = write_lines(tmp_path / "gsm.jsonl", [json.dumps({"id": "a", "prompt": "p", "answer": "no marker"})])
    expect_error(path, 1, "no extractable gold answer", answer_extractor=extract_gsm8k_answer)


def test_missing_file_and_unknown_format(tmp_path):
    expect_error(tmp_path / "nope.jsonl", None, "file not found")
    path = tmp_path / "data.csv"
    path.write_text("id,prompt,answer\n")
    expect_error(path, None, "unsupported format '.csv'")


def test_json_array_reports_element_line(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"id": "a", "prompt": "p", "answer": "1"},\n  {"id": "b",\n   "prompt": 3, "answer": "1"}\n]\n')
    expect_error(path, 3, "field 'prompt' must be a string")
    path.write_text('[\n  {"id": "a", "prompt": "p", "answer": "1"},\n  7\n]\n')
    expect_error(path, 3, "expected a JSON object, got an integer")
    path.write_text('[\n  {"id": "a", "prompt": "p", "answer": "1"},\n  {"id": \n]\n')
    expect_error(path, 4, "invalid JSON")


# ---------------------------------------------------------------------------------------------------
# Bad input, Parquet (line = row index + 1)


def test_parquet_wrong_type_reports_row(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": ["p", "q", "r"], "answer": [["1"], ["2"], []]}), path)
    expect_error(path, 1, "field 'answer' must be a string or number, got a list")


def test_parquet_duplicate_and_missing(tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "a"], "prompt": ["p", "q", "r"], "answer": ["1", "2", "3"]}), path)
    err = expect_error(path, 3, "duplicate id 'a'")
    assert "first seen on line 1" in str(err)
    path = tmp_path / "null.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["p", None], "answer": ["1", "2"]}), path)
    expect_error(path, 2, "null field 'prompt'")


def test_parquet_empty_and_corrupt(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string()),
                             "answer": pa.array([], pa.string())}), path)
    expect_error(path, None, "empty file")
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"this is not parquet")
    expect_error(path, None, "not a readable Parquet file")


def test_hf_without_datasets_installed_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # what an environment without the package sees
    with pytest.raises(DataError, match=r"cropi\[datasets\]"):
        read_records("hf://openai/gsm8k:test")
    folder = tmp_path / "saved"
    folder.mkdir()
    with pytest.raises(DataError, match=r"cropi\[datasets\]"):
        read_records(folder)


def test_a_saved_datasets_folder_reads_like_the_same_records_in_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(5)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "gsm8k_like"))
    (tmp_path / "gsm8k_like.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(fields={"prompt": "question"}, required=("prompt", "answer"), answer_extractor=extract_gsm8k_answer)
    from_folder = read_records(tmp_path / "gsm8k_like", **kw)
    from_jsonl = read_records(tmp_path / "gsm8k_like.jsonl", **kw)
    assert [(p.id, p.prompt, p.answer) for p in from_folder] == [(p.id, p.prompt, p.answer) for p in from_jsonl]
    assert [p.answer for p in from_folder] == [str(i + 1) for i in range(5)]
    assert from_folder[0].id == "gsm8k_like-00000"
    # a DatasetDict with one split is read as that split; several splits must be chosen first
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "one_split"))
    assert len(read_records(tmp_path / "one_split", **kw)) == 5
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "two_splits"))
    with pytest.raises(DataError, match="several splits"):
        read_records(tmp_path / "two_splits", **kw)


def test_hf_spec_with_too_many_parts_is_one_clear_error():
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"hf://NAME\[:CONFIG\]:SPLIT"):
        read_records("hf://a/b:c:d:e")


# ---------------------------------------------------------------------------------------------------
# Good input


def sample_problems() -> list[Problem]:
    return [
        Problem("p1", "What is 2+2?", "4", "arith", "synthetic", 1, {"tags": ["easy"], "n": 2}),
        Problem("p2", "Solve $x^2=4$ for x > 0. \u00e9\u4e2d", "2", "algebra", "user", 3, {}),
        Problem("p3", "Half of one?", "\\frac{1}{2}", "arith", "synthetic", 0, {"note": None}),
    ]


@pytest.mark.parametrize("name", ["round.jsonl", "round.json", "round.parquet"])
def test_round_trip(tmp_path, name):
    path = tmp_path / name
    problems = sample_problems()
    write_records(path, problems)
    assert listing(tmp_path) == [name]  # atomic write leaves no temporary behind
    assert read_records(path) == problems


def test_field_mapping_defaults_and_extras(tmp_path):
    path = write_lines(
        tmp_path / "gsm_mini.jsonl",
        [
            json.dumps({"question": "q0", "answer": "so\n#### 1,000", "level": 2}),
            json.dumps({"question": "q1", "answer": 7}),
            json.dumps({"question": "q2", "answer": 2.5}),
        ],
    )
    rows = read_records(path, {"prompt": "question", "answer": "answer"}, required=("prompt", "answer"))
    assert [r.id for r in rows] == ["gsm_mini-00000", "gsm_mini-00001", "gsm_mini-00002"]
    assert [r.answer for r in rows] == ["so\n#### 1,000", "7", "2.5"]
    assert rows[0].family == "gsm_mini" and rows[0].source == str(path)
    assert rows[0].metadata == {"level": 2}

    extracted = read_records(
        path.with_name("gsm_mini.jsonl"),
        {"prompt": "question"},
        required=("prompt", "answer"),
        answer_extractor=lambda s: extract_gsm8k_answer(s) or s,
        family="gsm8k",
        id_prefix="mini",
    )
    assert extracted[0].answer == "1000" and extracted[0].metadata["solution"] == "so\n#### 1,000"
    assert extracted[0].family == "gsm8k" and extracted[0].id == "mini-00000"


def test_field_mapping_alternative_columns(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [json.dumps({"uid": 10, "problem": "a", "answer": "1"}), json.dumps({"uid": 11, "question": "b", "answer": "2"})],
    )
    rows = read_records(path, {"id": "uid", "prompt": ["problem", "question"]})
    assert [(r.id, r.prompt) for r in rows] == [("10", "a"), ("11", "b")]


def test_unknown_field_in_mapping_is_a_config_error(tmp_path):
    from cropi.errors import ConfigError

    path = write_lines(tmp_path / "ok.jsonl", [json.dumps(GOOD)])
    with pytest.raises(ConfigError):
        read_records(path, {"question": "prompt"})


def test_published_gsm8k_and_math500_files_load_without_an_id_column_with_stable_ids():
    from cropi.config import load_config
    from cropi.tasks.loading import load_data
    from tests.conftest import SHARED_DATA

    train, test, math500 = (SHARED_DATA / "gsm8k" / "train.jsonl", SHARED_DATA / "gsm8k" / "test.jsonl",
                            SHARED_DATA / "math500" / "test.jsonl")
    if not all(p.exists() for p in (train, test, math500)):
        pytest.skip("../shared/data is absent")
    cfg = load_config(None, [f"data.pool_file={train}", f"data.validation_files=[gsm8k={test}]",
                             f"data.test_files=[gsm8k={test}]", "data.fields={prompt: question}",
                             "data.answer_format=gsm8k"])
    suite = load_data(cfg.data)
    assert len(suite.pool) == sum(1 for _ in train.open()) and suite.pool[0].id == "train-00000"
    assert suite.pool[0].answer == "72" and suite.targeted == ["gsm8k"]
    assert [p.id for p in load_data(cfg.data).pool[:3]] == ["train-00000", "train-00001", "train-00002"]
    cfg = load_config(None, [f"data.pool_file={math500}", "data.fields={prompt: question}", "data.answer_format=boxed"])
    assert load_data(cfg.data, need=("pool",)).pool[0].id == "test-00000"


def test_jsonl_lines_that_are_arrays_are_one_line_errors_naming_the_line(tmp_path):
    row = {"id": "a", "prompt": "1+1=", "answer": "2"}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(row) + "\n" + json.dumps([row]) + "\n")
    expect_error(mixed, 2, "expected a JSON object, got a list")
    arrays = tmp_path / "arrays.jsonl"
    arrays.write_text(json.dumps([row]) + "\n" + json.dumps([{**row, "id": "b"}]) + "\n")
    expect_error(arrays, 2, "JSONL needs one JSON object per line")
    single = tmp_path / "single.jsonl"  # one array holding every record is read as the records
    single.write_text(json.dumps([row, {**row, "id": "b"}]) + "\n")
    assert [p.id for p in read_records(single)] == ["a", "b"]
