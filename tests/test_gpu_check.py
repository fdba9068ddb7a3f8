"""The GPU check script keeps working on machines without a GPU: its dry run on the CPU runs the same code at toy sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_script_dry_run_writes_one_results_json_with_every_check(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "WHEELS": ""}  # this env has the packages
    r = subprocess.run(["bash", str(ROOT / "lab" / "bench" / "gpu_check.sh"), "--device", "cpu", "--quick"],
                       env=env, capture_output=True, text=True, timeout=600)
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = res["checks"]
    assert set(checks) == {"projector", "grpo", "ray", "trl", "trl_rules", "vllm"}, r.stderr
    assert r.returncode == 0, r.stdout + r.stderr  # no check failed (skipped ones say why)
    assert checks["projector"]["status"] == "ok" and checks["projector"]["agrees"]
    assert checks["grpo"]["status"] == "ok" and checks["grpo"]["losses_finite"] and checks["grpo"]["train_steps"] == 2
    for name in ("ray", "trl", "trl_rules", "vllm"):
        assert checks[name]["status"] == "ok" or checks[name]["reason"]
    if checks["trl"]["status"] == "ok":
        assert checks["trl"]["trained_equals_selected"] and checks["trl"]["optimizer_steps"] == [1, 2]
    if checks["trl_rules"]["status"] == "ok":
        assert checks["trl_rules"]["trained_equals_chosen"] and checks["trl_rules"]["steps"] == 2
    if checks["ray"]["status"] == "ok":
        assert checks["ray"]["identical"]
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")


def test_a_rerun_starts_from_an_empty_scratch_folder_not_the_last_runs_checkpoints(tmp_path):
    from lab.bench.gpu_check import CheckPlan, run_checks

    left = tmp_path / "work" / "grpo" / "train" / "checkpoints"
    left.mkdir(parents=True)
    res = run_checks(CheckPlan("cpu", True, tmp_path / "work"), tmp_path, only=["projector"])
    assert res["checks"]["projector"]["status"] == "ok" and not left.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_gpu_check_passes_on_cuda_within_eight_minutes(tmp_path):
    from lab.bench.gpu_check import run_checks, CheckPlan

    res = run_checks(CheckPlan("cuda", False, tmp_path / "work"), tmp_path)
    assert all(c["status"] != "failed" for c in res["checks"].values()), res
    assert res["checks"]["projector"]["agrees"] and res["total_seconds"] < 8 * 60
