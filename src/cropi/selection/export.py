"""Influence-guided selection written out (docs/method.md §4): the prompts a scores file (``cropi score``) ranked by
reciprocal-rank fusion — its ``fused_rank`` column, or the same fusion (``scores.ranking.rank``) at another
ratio — as the chosen problems (JSONL or Parquet, cropi's own layout or verl's RL dataset layout) plus their ids.

verl layout, one row per chosen problem (the columns verl's ``RLHFDataset`` and reward managers read)::

    data_source   str    the problem's family (verl groups validation metrics by it)
    prompt        [{"role": "user", "content": prompt}]   (verl applies the tokenizer's chat template)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": JSON text {"answer", "family", "synthetic"}}
    extra_info    {"index": pool id, "id", "split", "fused_rank", "family", "source", "difficulty"}

``ground_truth`` carries what ``cropi.tasks.grade`` needs to pick the grader (a synthetic family's exact
reward, else math-verify), as JSON text so the column stays a string like every other verl dataset's;
``cropi.integrations.verl_reward`` reads it back.  ``index`` is the pool id: verl reads
``extra_info["index"]`` and silently uses 0 where it is missing, so positions would collide across files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from cropi import SCHEMA_VERSION
from cropi.errors import CropiError
from cropi.io import atomic_path, write_json
from cropi.scores.ranking import rank, top_n
from cropi.tasks.problem import Problem
from cropi.tasks.synthetic import FAMILIES

FORMATS = ("jsonl", "parquet")
LAYOUTS = ("plain", "verl")


def read_scores(path: str | Path) -> tuple[pa.Table, dict]:
    """The scores table and its metadata (``CropiError`` when missing or not a scores file)."""
    path = Path(path)
    if not path.is_file():
        raise CropiError(f"{path}: no scores file here (run `cropi score --out {path}` first)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CropiError(f"{path}: not a readable Parquet scores file ({str(exc).splitlines()[0]}); rerun `cropi score --out {path}`") from None
    meta_raw = (table.schema.metadata or {}).get(b"cropi")
    needed = {"prompt_id", "usable"}
    if meta_raw is None or not needed <= set(table.column_names) or not score_columns(table):
        raise CropiError(f"{path}: not a cropi scores file (expected prompt_id, usable, score_<set> columns)")
    return table.replace_schema_metadata(None), json.loads(meta_raw)


def score_columns(scores: pa.Table) -> list[str]:
    return [c for c in scores.column_names if c.startswith("score_")]


def influence_ranking(scores: pa.Table, meta: dict, ratio: float | None = None) -> list[str]:
    """The chosen ids, best first: the file's ``fused_rank`` column when ``ratio`` is None or the one it was
    scored with, else the same fusion of each score_<set> column's top ⌊ratio·rows⌋."""
    if ratio is not None and not 0 < ratio <= 1:
        raise CropiError(f"ratio {ratio}: expected 0 < ratio <= 1")
    ids = scores.column("prompt_id").to_pylist()
    if ratio is None or ratio == meta.get("select_ratio"):
        if "fused_rank" not in scores.column_names:
            raise CropiError("scores file has no fused_rank column; pass --select-ratio")
        ranked_rows = sorted((r, p) for p, r in zip(ids, scores.column("fused_rank").to_pylist()) if r is not None)
        return [p for _, p in ranked_rows]
    per_set = {}
    for col in score_columns(scores):
        per_set[col[len("score_"):]] = {p: s for p, s in zip(ids, scores.column(col).to_pylist()) if s is not None}
    return rank(per_set, top_n(len(ids), ratio)).ids


@dataclass
class Selection:
    ids: list[str]  # best first
    problems: list[Problem]  # in the same order
    ratio: float | None  # the selection ratio the ranking was fused at
    pool_size: int
    scores_meta: dict


def select_from_scores(scores_path: str | Path, pool: Sequence[Problem], ratio: float | None = None) -> Selection:
    """The prompts the scores file chose (or the top ``ratio`` of the pool by the same fusion), as problems of
    ``pool`` (the pool the scores were computed on)."""
    table, meta = read_scores(scores_path)
    ids = influence_ranking(table, meta, ratio)
    by_id = {p.id: p for p in pool}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise CropiError(f"{scores_path}: {len(missing)} chosen prompt ids are not in the pool (e.g. {missing[0]!r}); "
                         "pass the pool the scores were computed on (--pool and its --field options)")
    used = meta.get("select_ratio") if ratio is None else ratio
    return Selection(ids, [by_id[i] for i in ids], used, table.num_rows, meta)


def plain_row(problem: Problem, rank: int) -> dict:
    """cropi's own problem fields (readable back as a pool: ``--pool chosen.jsonl``) and the fused rank."""
    return {**problem.to_dict(), "fused_rank": rank}


# Fixed so that files with and without ranks (train, validation) share one type and verl can concatenate them.
VERL_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", pa.struct([("index", pa.string()), ("id", pa.string()), ("split", pa.string()),
                              ("fused_rank", pa.int64()), ("family", pa.string()), ("source", pa.string()),
                              ("difficulty", pa.int64())])),
])


def verl_ground_truth(problem: Problem) -> str:
    """The ``reward_model.ground_truth`` text of a verl row: the gold answer and how to grade it."""
    synthetic = problem.source == "synthetic" and problem.family in FAMILIES
    record = {"answer": problem.answer, "family": problem.family, "synthetic": synthetic}
    if "style" in problem.metadata:  # a few-shot problem is graded on the response's first line
        record["style"] = problem.metadata["style"]
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def verl_row(problem: Problem, rank: int | None = None, split: str = "train") -> dict:
    """One row of verl's RL dataset layout (module docstring); ``rank`` is the fused rank (None: not ranked)."""
    return {
        "data_source": problem.family,
        "prompt": [{"role": "user", "content": problem.prompt}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": verl_ground_truth(problem)},
        "extra_info": {"index": problem.id, "id": problem.id, "split": split, "fused_rank": rank,
                       "family": problem.family, "source": problem.source, "difficulty": problem.difficulty},
    }


def write_verl_problems(problems: Sequence[Problem], out: str | Path, split: str = "train",
                        ranks: Sequence[int | None] | None = None) -> Path:
    """Problems as a verl RL dataset Parquet file, atomically (the one writer of that layout)."""
    ranks = list(ranks) if ranks is not None else [None] * len(problems)
    rows = [verl_row(p, r, split) for p, r in zip(problems, ranks)]
    meta = {b"cropi": json.dumps({"schema_version": SCHEMA_VERSION, "layout": "verl", "split": split}).encode()}
    with atomic_path(out) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=VERL_SCHEMA).replace_schema_metadata(meta), tmp)
    return Path(out)


def format_of(path: str | Path, fmt: str | None = None) -> str:
    if fmt is None:
        suffix = Path(path).suffix.lower().lstrip(".")
        fmt = {"jsonl": "jsonl", "json": "jsonl", "parquet": "parquet", "pq": "parquet"}.get(suffix)
        if fmt is None:
            raise CropiError(f"{path}: cannot tell the format from the extension; use .jsonl or .parquet or --format")
    if fmt not in FORMATS:
        raise CropiError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def ids_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".ids.json")


def write_selection(selection: Selection, out: str | Path, fmt: str | None = None, layout: str = "plain") -> Path:
    """Write the chosen problems to ``out`` and their ids (best first, with the selection's provenance) to
    ``ids_path(out)``.  Both atomically."""
    fmt = format_of(out, fmt)
    if layout not in LAYOUTS:
        raise CropiError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if layout == "verl" and fmt == "parquet":
        write_verl_problems(selection.problems, out, ranks=range(1, len(selection.problems) + 1))
    else:
        rows = [verl_row(p, i + 1) if layout == "verl" else plain_row(p, i + 1)
                for i, p in enumerate(selection.problems)]
        with atomic_path(out) as tmp:
            if fmt == "jsonl":
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            else:  # free-form metadata dicts have no fixed Parquet type: keep them as JSON text
                rows = [{**r, "metadata": json.dumps(r["metadata"], sort_keys=True)} for r in rows]
                meta = {b"cropi": json.dumps({"schema_version": SCHEMA_VERSION, "layout": layout}).encode()}
                pq.write_table(pa.Table.from_pylist(rows).replace_schema_metadata(meta), tmp)
    write_json(ids_path(out), {"ids": selection.ids, "ratio": selection.ratio, "pool_size": selection.pool_size,
                               "layout": layout, "format": fmt, "scores": selection.scores_meta})
    return Path(out)
