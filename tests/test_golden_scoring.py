"""Scoring is pinned bit for bit: fixed small scoring runs (micro model, seeded stores) must reproduce the committed
golden values exactly: projected SJLT k=64 through the per-prompt loop and the batched per-example path
(``golden/scoring``), and the default scoring (``golden/scoring-default``).

The golden files were written by ``write_golden`` below and are never regenerated to make this test pass: a
change that alters one changes what an existing scoring mode computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cropi.config import RunConfig, ScoreConfig
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.scores.engine import score_pool
from cropi.scores.gradient_store import read_gradient_store
from cropi.tasks.problem import Problem

GOLDEN = Path(__file__).parent / "golden" / "scoring"
# each pinned file and its runs (ScoreConfig settings); "default" is ScoreConfig's defaults (k only sizes the side
# store of projected vectors), pinned when factored batched scoring became the default
RUNS = {
    "scoring": {"loop": dict(k=64, chunk_size=4, batch_size=1, mode="projected", factored=False),
                "batched": dict(k=64, chunk_size=4, batch_size=3, mode="projected", factored=False)},
    "scoring-default": {"default": dict(k=64, chunk_size=4)},
}


def _problems(prefix, n):
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


def _run(policy, tmp: Path, runs: dict[str, dict]) -> tuple[dict[str, torch.Tensor], dict]:
    cfg = CollectConfig(group_size=32, max_new_tokens=1, chunk_size=5, temperature=6.0)
    pool = collect(policy, _problems("p", 14), tmp / "pool", cfg)
    impossible = [Problem("z0", "1+1=", "999999", "add")]
    val_a = collect(policy, impossible + _problems("va", 8), tmp / "val-a", cfg)
    val_b = collect(policy, _problems("vb", 8), tmp / "val-b", cfg)
    tensors, columns = {}, {}
    for tag, settings in runs.items():
        run = RunConfig()
        run.select.ratio = 0.3
        run.select.score = ScoreConfig(**settings)
        grads = tmp / f"grads-{tag}"
        table = score_pool(policy, pool, {"a": val_a, "b": val_b}, tmp / f"scores-{tag}.parquet", run,
                           gradients=grads).table
        cols = table.to_pydict()
        columns[tag] = {k: v for k, v in cols.items() if k in ("prompt_id", "usable", "fused_rank")}
        for name in ("ess", "max_abs_log_ratio", "grad_norm", "score_a", "score_b"):
            tensors[f"{tag}/{name}"] = torch.tensor([float("nan") if v is None else v for v in cols[name]],
                                                    dtype=torch.float64)
        for store in ("pool", "pool-exact", "val-a", "val-b"):
            if not (grads / store).exists():
                continue
            g = read_gradient_store(grads / store)
            tensors[f"{tag}/{store}/vectors"] = g.vectors.contiguous()
            tensors[f"{tag}/{store}/norm"] = torch.tensor(
                [float("nan") if v is None else v for v in g.index.column("norm").to_pylist()], dtype=torch.float32)
            columns[tag][f"{store}/prompt_id"] = g.index.column("prompt_id").to_pylist()
            columns[tag][f"{store}/usable"] = g.index.column("usable").to_pylist()
    return tensors, columns


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def write_golden(policy, tmp: Path, name: str) -> None:  # pragma: no cover - run once, by hand, before a refactor
    tensors, columns = _run(policy, tmp, RUNS[name])
    folder = GOLDEN.parent / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "values.safetensors"))
    (folder / "columns.json").write_text(json.dumps(columns, indent=1, sort_keys=True) + "\n")
    (folder / "machine.json").write_text(json.dumps({"cpu": _cpu_model()}) + "\n")


@pytest.mark.parametrize("name", list(RUNS))
def test_scoring_reproduces_its_golden_run_bit_for_bit(micro_policy, tmp_path, name):
    folder = GOLDEN.parent / name
    if not (folder / "values.safetensors").exists():
        pytest.fail(f"golden scoring values are missing: {folder}")
    tensors, columns = _run(micro_policy, tmp_path, RUNS[name])
    golden = load_file(str(folder / "values.safetensors"))
    assert sorted(tensors) == sorted(golden)
    # Bits are pinned on the CPU model that wrote the file; another one (another vendor's SIMD kernels) rounds
    # fp32 sums differently, so there the values must agree to fp32 rounding and the columns (usable flags,
    # ranking) exactly.
    same_cpu = _cpu_model() == json.loads((folder / "machine.json").read_text())["cpu"]
    for key, want in golden.items():
        got = tensors[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        if same_cpu:
            assert torch.equal(torch.nan_to_num(got, nan=-7.0), torch.nan_to_num(want, nan=-7.0)), key
        else:
            assert torch.equal(torch.isnan(got), torch.isnan(want)), key
            torch.testing.assert_close(torch.nan_to_num(got), torch.nan_to_num(want), rtol=1e-4, atol=1e-7, msg=key)
    assert columns == json.loads((folder / "columns.json").read_text())
    # the run is not degenerate: every path scored usable and zero-variance prompts, and chose some
    for tag in RUNS[name]:
        assert 0 < sum(columns[tag]["usable"]) < len(columns[tag]["usable"])
        assert sum(r is not None for r in columns[tag]["fused_rank"]) == 4


def test_the_default_golden_run_is_the_default_scoring():
    """The pinned default run sets nothing that changes what is computed: k only sizes the side store."""
    assert set(RUNS["scoring-default"]["default"]) == {"k", "chunk_size"}
