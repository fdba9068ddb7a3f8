"""vLLM log-prob parity: are the behaviour log-probs vLLM stores those of the distribution cropi scores with?

    python -m lab.bench.vllm_parity [--quick] [--model tiny] [--out DIR]
                                                       [--dtype bfloat16 --dtype float32] [--temperature 0.7]

Needs a CUDA GPU and the ``vllm`` extra.  For each vLLM engine dtype and sampling temperature T: collect a
trajectory store of the embedded suite's pool with ``rollout.backend=vllm`` (same weights as the policy), then
compare its stored log β with cropi's teacher-forced log π at T (``objective.response_logprobs``, the policy in
fp32 on the GPU) over the same stored responses: mean and max |Δ| per token, and the normalised ESS of the
sequence-level importance weights per prompt group (``cropi.rollouts.parity``).  A built-in (``hf``) store
collected and scored on the same GPU is the control row: it shows what |Δ| cropi's own sampler has.

Targets, for the bf16 engine: mean |Δ| <= 0.02 nats and mean ESS >= 0.98 (a policy sampled by vLLM in bf16 and
scored in fp32 must look on-policy to the importance ratios).

``--quick`` (the tiny policy, 64 prompts x G = 8, T = 0.7, eager engines; its time on a GPU is not yet measured)
writes to runs/bench-quick/ unless --out is given.  Without it: 256 prompts, T in {0.7, 1.0}, written to
lab/results/vllm_parity.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback
from pathlib import Path

from lab.bench.common import QUICK_DIR, RESULTS_DIR
from lab.machines import machine_description
from cropi.io import write_json, write_text
from cropi.policy import load_policy
from cropi.rollouts.backend import HFBackend
from cropi.rollouts.parity import store_parity
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.tasks.synthetic import SuiteConfig, build_suite

MEAN_DELTA_TARGET = 0.02  # nats per token, bf16 engine vs fp32 teacher forcing
ESS_TARGET = 0.98
NAME = "vllm_parity"
WORK_DIR = Path("runs") / "bench-vllm-parity"


def _case(policy, problems, store: Path, backend, temperature: float, group_size: int, max_new_tokens: int) -> dict:
    cfg = CollectConfig(group_size=group_size, temperature=temperature, max_new_tokens=max_new_tokens, seed=0)
    t0 = time.perf_counter()
    collect(policy, problems, store, cfg, backend=backend)
    seconds = time.perf_counter() - t0
    return {**store_parity(policy, store), "collect_seconds": round(seconds, 2)}


def vllm_parity(out: Path, model: str = "tiny", dtypes=("bfloat16", "float32"), temperatures=(0.7,),
                prompts: int = 64, group_size: int = 8, max_new_tokens: int = 10, quick: bool = False,
                work: Path = WORK_DIR) -> dict:
    """Run every (backend, dtype, T) case, write ``out/vllm_parity.json`` and ``.md``, and return the result.
    The stores are collected afresh under ``work`` (emptied first).  A case that fails is recorded with its
    error and the others still run."""
    import torch

    from cropi.rollouts import vllm_backend as vb

    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = load_policy(model, device=device, dtype="float32")
    problems = build_suite(SuiteConfig(pool_size=prompts)).pool[:prompts]
    engine = {"enforce_eager": True} if quick else {}
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    cases = [("hf", "float32", t) for t in temperatures] + [("vllm", d, t) for d in dtypes for t in temperatures]
    for backend_name, dtype, temperature in cases:
        store = work / f"{backend_name}-{dtype}-T{temperature}"
        row = {"backend": backend_name, "engine_dtype": dtype, "temperature": temperature}
        try:
            backend = (HFBackend(policy) if backend_name == "hf"
                       else vb.vllm_backend(policy, dtype=dtype, **engine))
            row.update(_case(policy, problems, store, backend, temperature, group_size, max_new_tokens))
        except Exception as exc:  # a failed engine is a result too; the other cases still run
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            traceback.print_exc()
        rows.append(row)
    vb.close_engine()
    bf16 = [r for r in rows if r["backend"] == "vllm" and r["engine_dtype"] == "bfloat16" and "error" not in r]
    result = {
        "benchmark": NAME, "model": model, "machine": machine_description(), "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "vllm_version": _vllm_version(), "prompts": prompts, "group_size": group_size,
        "max_new_tokens": max_new_tokens, "teacher_dtype": "float32",
        "targets": {"bf16_mean_abs_delta_max": MEAN_DELTA_TARGET, "bf16_mean_ess_min": ESS_TARGET},
        "meets_targets": bool(bf16) and all(r["mean_abs_delta"] <= MEAN_DELTA_TARGET and r["mean_ess"] >= ESS_TARGET
                                            for r in bf16),
        "seconds": round(time.perf_counter() - t_start, 1), "cases": rows,
    }
    write_json(out / f"{NAME}.json", result)
    write_text(out / f"{NAME}.md", parity_markdown(result))
    return result


def _vllm_version() -> str | None:
    try:
        import vllm

        return vllm.__version__
    except ImportError:
        return None


def parity_markdown(result: dict) -> str:
    lines = [f"# vLLM behaviour log-prob parity ({result['model']})", "",
             f"- machine: {result['machine']}; GPU: {result['gpu']}; vLLM {result['vllm_version']}",
             f"- {result['prompts']} prompts x G = {result['group_size']}, up to {result['max_new_tokens']} tokens; "
             f"teacher forcing in {result['teacher_dtype']}",
             f"- targets (bf16 engine): mean |Δ| <= {MEAN_DELTA_TARGET} nats, mean ESS >= {ESS_TARGET}: "
             f"**{'met' if result['meets_targets'] else 'not met'}**", "",
             "| backend | engine dtype | T | tokens | mean abs Δ | max abs Δ | mean ESS | min ESS | collect s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["cases"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['engine_dtype']} | {r['temperature']} | error: {r['error']} "
                         "| | | | | |")
            continue
        lines.append(f"| {r['backend']} | {r['engine_dtype']} | {r['temperature']} | {r['tokens']} | "
                     f"{r['mean_abs_delta']:.2e} | {r['max_abs_delta']:.2e} | {r['mean_ess']:.5f} | "
                     f"{r['min_ess']:.5f} | {r['collect_seconds']} |")
    lines += ["", "ESS: per prompt group, (Σ w)² / (G Σ w²) with w_i = exp(Σ_t log π − Σ_t log β) over response i's "
              "tokens (1 = all weights equal).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run: 64 prompts, T = 0.7, eager engines")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--dtype", action="append", default=None, help="vLLM engine dtype (repeatable)")
    ap.add_argument("--temperature", action="append", type=float, default=None, help="sampling T (repeatable)")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--work", type=Path, default=WORK_DIR, help="scratch folder of the stores (emptied first)")
    args = ap.parse_args(argv)
    out = args.out or (QUICK_DIR if args.quick else RESULTS_DIR)
    result = vllm_parity(out, args.model, tuple(args.dtype or ("bfloat16", "float32")),
                         tuple(args.temperature or ((0.7,) if args.quick else (0.7, 1.0))),
                         prompts=args.prompts or (64 if args.quick else 256), quick=args.quick, work=args.work)
    print(parity_markdown(result))
    return 1 if any("error" in r for r in result["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
