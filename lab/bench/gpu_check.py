"""``python -m lab.bench gpu`` / ``lab/bench/gpu_check.sh``: every check that needs a GPU, in one run sized for 8 minutes on
one GPU (a check starts only while that budget is not spent), with the embedded tiny policy, into one results JSON.

Checks, each timed and recorded on its own (one failing or skipped check never stops the others):

* ``projector`` — the CUDA path of the SJLT projector at SmolLM2's real parameter shapes (d = 134,515,008,
  built on the meta device, so no model file travels): seconds per gradient on the GPU and on the CPU kernel,
  and their agreement (max |P_gpu x − P_cpu x| / ‖P_cpu x‖);
* ``grpo`` — cropi's own loop on CUDA: collect a small behaviour store with the tiny policy, score it (POPI
  gradients, exact and projected), take GRPO steps, and a few steps of cropi's default batch rule
  (``online_influence``); records the seconds of each and that the losses are finite;
* ``ray`` — a 2-worker Ray scoring smoke test, bit-identical to a single process;
* ``trl`` — a short TRL ``GRPOTrainer`` run whose stages are chosen by cropi;
* ``trl_rules`` — ``cropi_harvest`` choosing every step's prompts inside TRL's trainer (``CropiGRPOTrainer``):
  that TRL's loss was fed exactly the chosen prompts, and the seconds;
* ``vllm`` — the parity of vLLM's stored log-probs with cropi's teacher-forced ones (mean and max |Δ| per
  token, sequence-level ESS).

The engines' checks run only where the engine imports (for a machine without network, ``lab/bench/gpu_wheels.sh``
downloads the small ones as wheels), and are recorded as skipped, with the reason, where it does not.
``--device cpu --quick`` runs the same code on a CPU at toy sizes: the tests run it, so the script keeps working
on machines without a GPU.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from cropi import SCHEMA_VERSION
from cropi.io import write_json, write_text

RESULTS_NAME = "gpu_check"
BUDGET_SECONDS = 8 * 60


@dataclass
class CheckPlan:
    device: str = "cuda"  # where the checks run; "cpu" (with quick) exercises the script without a GPU
    quick: bool = False  # toy sizes: the tiny model's shapes for the projector, fewer prompts and steps
    work: Path = Path("runs") / "gpu-check"  # scratch folder (stores, runs)


class Skipped(Exception):
    """A check that cannot run here (its engine is not installed); the message says why."""


def _engine(module: str, why: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skipped(f"{module} is not importable ({exc}); {why}") from None


# ----------------------------------------------------------------------------- checks
def check_projector(plan: CheckPlan) -> dict:
    from cropi.config import ScoreConfig
    from lab.bench.speed import heavy_tailed_rows, model_shapes
    from cropi.projection import make_projector

    if plan.device == "cpu" and not plan.quick:
        raise Skipped("needs a CUDA device (it compares the CUDA path with the CPU kernel)")
    shapes = model_shapes("tiny" if plan.quick else "smollm2")
    d = sum(math.prod(s) for s in shapes.values())
    score = ScoreConfig()
    proj = make_projector(score.kind, score.k, score.seed, shapes, keep=score.keep)
    grads = {n: heavy_tailed_rows(0, n, math.prod(s), [0]).reshape(1, *s) for n, s in shapes.items()}

    def timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[torch.Tensor, float]:
        fn()  # warm-up: kernels compiled, hash tables built
        best = math.inf
        for _ in range(3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return out.cpu(), best

    cpu_out, cpu_s = timed(lambda: proj.project_batch(grads), "cpu")
    on_dev = {n: g.to(plan.device) for n, g in grads.items()}
    dev_out, dev_s = timed(lambda: proj.project_batch(on_dev), plan.device)
    rel = float((dev_out - cpu_out).abs().max() / cpu_out.norm().clamp_min(1e-30))
    return {"d": d, "k": score.k, "kind": score.kind, "device_seconds_per_gradient": dev_s,
            "cpu_seconds_per_gradient": cpu_s, "speedup_vs_cpu": cpu_s / dev_s, "max_rel_difference": rel,
            "agrees": rel < 1e-4}


def check_grpo(plan: CheckPlan) -> dict:
    from cropi.config import RunConfig
    from cropi.policy import load_policy
    from cropi.rollouts.trajectory_store import CollectConfig, collect
    from cropi.scores.engine import score_pool
    from cropi.tasks.synthetic import build_suite
    from cropi.training.grpo import train_grpo

    cfg = RunConfig()
    cfg.model.device = plan.device
    cfg.data.suite.pool_size, cfg.data.suite.val_size = (16, 8) if plan.quick else (512, 64)
    if plan.quick:
        cfg.rollout.group_size, cfg.train.prompts_per_step, cfg.select.score.k = 4, 4, 256
    suite = build_suite(cfg.data.suite)
    policy = load_policy("tiny", plan.device)
    work = Path(plan.work) / "grpo"
    ccfg = CollectConfig.from_rollout(cfg.rollout)
    t0 = time.perf_counter()
    pool = collect(policy, suite.pool, work / "pool", ccfg)
    name, val_problems = next(iter(suite.validation.items()))
    val = collect(policy, val_problems, work / f"val-{name}", ccfg)
    out = {"collect_seconds": time.perf_counter() - t0, "prompts": len(suite.pool)}
    for mode in ("exact", "projected"):
        cfg.select.score.mode = mode
        t0 = time.perf_counter()
        res = score_pool(policy, pool, {name: val}, work / f"scores-{mode}.parquet", cfg)
        out[f"score_{mode}_seconds"] = time.perf_counter() - t0
        out[f"score_{mode}_usable"] = sum(res.table.column("usable").to_pylist())
    cfg.train.steps = 2 if plan.quick else 10
    t0 = time.perf_counter()
    steps = []
    train_grpo(policy, suite.pool, cfg.train, cfg.rollout, work / "train", on_step=steps.append)
    out["train_seconds"] = time.perf_counter() - t0
    out["train_steps"] = len(steps)
    out["losses_finite"] = all(math.isfinite(s.loss) for s in steps)
    # online_influence: each step screens, ranks by influence on the GPU, completes and trains
    from cropi.selection import make_batch_builder
    from cropi.training.grpo import start_session

    cfg.train.filter.method = "online_influence"
    cfg.train.filter.gen_batch_prompts = 8 if plan.quick else 96
    cfg.train.steps = 2 if plan.quick else 5
    session = start_session(policy, cfg.train, work / "train-cropi")
    session.batches = make_batch_builder(cfg, suite.validation)
    t0 = time.perf_counter()
    steps = []
    train_grpo(policy, suite.pool, cfg.train, cfg.rollout, work / "train-cropi", on_step=steps.append, session=session)
    out["cropi_default_seconds"] = time.perf_counter() - t0
    out["cropi_default_steps"] = len(steps)
    out["cropi_default_losses_finite"] = all(math.isfinite(s.loss) for s in steps)
    out["cropi_default_score_seconds"] = sum(s.score_seconds for s in steps)
    return out


def check_ray(plan: CheckPlan) -> dict:
    _engine("ray", "install it to run the Ray smoke test")
    from cropi.integrations import ray_shards

    return ray_shards.smoke_check(Path(plan.work) / "ray", device=plan.device, quick=plan.quick)


def check_trl(plan: CheckPlan) -> dict:
    trl = _engine("trl", "install it (offline: the wheels of lab/bench/gpu_wheels.sh) to run the TRL check")
    try:
        trl.GRPOConfig, trl.GRPOTrainer  # noqa: B018 - a dependency of TRL's trainer may be missing
    except (ImportError, AttributeError) as exc:
        raise Skipped(f"trl's GRPOTrainer does not import ({type(exc).__name__}: {exc})") from None
    from cropi.config import load_config
    from cropi.integrations.trl import train_stages
    from cropi.policy import load_policy
    from cropi.tasks.loading import load_data

    pool = 8 if plan.quick else 160
    cfg = load_config(None, [f"data.suite.pool_size={pool}", "data.suite.val_size=16", "data.suite.test_size_targeted=4",
                             "data.suite.test_size_untargeted=2", "select.stages=2", "select.ratio=0.25",
                             "select.candidates=0", "select.size=0",  # the whole pool scored, a quarter kept
                             "select.score.max_val_prompts=8", f"model.device={plan.device}"])
    policy = load_policy("tiny", device=plan.device)
    steps = pool // 4  # each stage takes its whole selection (pool / 4 prompts) once, 2 prompts a step
    args = trl.GRPOConfig(output_dir=str(Path(plan.work) / "trl" / "trl"), max_steps=steps, loss_type="grpo",
                          per_device_train_batch_size=16, num_generations=8, max_completion_length=8, learning_rate=1e-3,
                          use_cpu=plan.device == "cpu", bf16=False, fp16=False, report_to="none", save_strategy="no",
                          logging_steps=1, disable_tqdm=True, seed=0)
    t0 = time.perf_counter()
    result = train_stages(policy.model, policy.tokenizer, load_data(cfg.data), args, cfg, Path(plan.work) / "trl")
    stages = result.stages
    return {"trl_version": trl.__version__, "seconds_total": time.perf_counter() - t0, "stages": len(stages),
            "steps": steps, "trained_equals_selected": all(set(r.trained) == set(r.selected) for r in stages),
            "optimizer_steps": [r.optimizer_steps for r in stages]}


def check_trl_rules(plan: CheckPlan) -> dict:
    """cropi_harvest inside TRL's GRPOTrainer on the device: the prompts TRL's loss was fed are the rule's choice."""
    trl = _engine("trl", "install it (offline: the wheels of lab/bench/gpu_wheels.sh) to run the TRL rule check")
    from datasets import Dataset

    from cropi.config import load_config
    from cropi.integrations.trl_rules import CropiGRPOTrainer
    from cropi.policy import load_policy
    from cropi.tasks.loading import load_data
    from cropi.tasks.synthetic import FAMILIES

    suite = load_data(load_config(None, ["data.suite.pool_size=400", "data.suite.val_size=24",
                                         "data.suite.test_size_targeted=4", "data.suite.test_size_untargeted=2"]).data)

    def table(problems):
        return Dataset.from_list([{"prompt": p.prompt, "solution": FAMILIES[p.family].target_text(p.answer),
                                   "topic": p.family} for p in problems])

    def exact_match(completions, solution, **kwargs):
        return [1.0 if "".join(c.split()) == s else 0.0 for c, s in zip(completions, solution)]

    policy = load_policy("tiny", device=plan.device)
    steps = 2 if plan.quick else 10
    args = trl.GRPOConfig(output_dir=str(Path(plan.work) / "trl_rules"), max_steps=steps, loss_type="grpo",
                          per_device_train_batch_size=32, num_generations=8, max_completion_length=8,
                          learning_rate=1e-3, use_cpu=plan.device == "cpu", bf16=False, fp16=False, report_to="none",
                          save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    pool = table(suite.pool)
    trainer = CropiGRPOTrainer(rule="cropi_harvest", validation={n: table(v) for n, v in suite.validation.items()},
                               family_column="topic", rule_settings=["select.score.max_val_prompts=24"],
                               model=policy.model, processing_class=policy.tokenizer, reward_funcs=exact_match,
                               args=args, train_dataset=pool)
    prompts = {tuple(policy.encode_prompt(p)): i for i, p in enumerate(pool["prompt"])}
    fed: list[int] = []

    def hook(module, a, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if ids is not None and torch.is_grad_enabled() and module.training:
            for row, m in zip(ids.tolist(), mask.tolist()):
                seq = tuple(t for t, keep in zip(row, m) if keep)
                fed.extend(i for q, i in prompts.items() if seq[:len(q)] == q)

    trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
    t0 = time.perf_counter()
    trainer.train()
    chosen = [i for s in trainer.cropi_steps for i in s["prompts"] for _ in range(8)]
    return {"trl_version": trl.__version__, "seconds_total": time.perf_counter() - t0, "steps": steps,
            "trained_equals_chosen": sorted(fed) == sorted(chosen),
            "harvested_prompts": len(trainer.cropi_state.get("harvest", {}))}


def check_vllm(plan: CheckPlan) -> dict:
    _engine("vllm", "install vLLM (it brings its own CUDA torch) to run the parity check")
    from lab.bench.vllm_parity import vllm_parity

    work = Path(plan.work) / "vllm"
    res = vllm_parity(work, prompts=16 if plan.quick else 64, quick=True, work=work / "stores")
    cases = {f"{c['backend']}-{c['engine_dtype']}": {k: c.get(k) for k in ("mean_abs_delta", "max_abs_delta",
                                                                            "mean_ess", "min_ess", "error")}
             for c in res["cases"]}
    return {"vllm_version": res["vllm_version"], "meets_targets": res["meets_targets"], "cases": cases}


CHECKS: dict[str, Callable[[CheckPlan], dict]] = {
    "projector": check_projector, "grpo": check_grpo, "ray": check_ray, "trl": check_trl, "trl_rules": check_trl_rules,
    "vllm": check_vllm,
}


def run_checks(plan: CheckPlan, out_dir: str | Path, only: list[str] | None = None) -> dict:
    """Run every check (or ``only`` these) and write ``gpu_check.json`` / ``.md`` into ``out_dir``.  The scratch
    folder ``plan.work`` is emptied first: a rerun must not resume the last run's stores and checkpoints (its GRPO
    check would then train no step and report nothing)."""
    import shutil

    from lab.machines import machine_description

    shutil.rmtree(plan.work, ignore_errors=True)

    results: dict = {"schema_version": SCHEMA_VERSION, "machine": machine_description(), "device": plan.device,
                     "quick": plan.quick, "checks": {}}
    start = time.perf_counter()
    for name, fn in CHECKS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        if t0 - start > BUDGET_SECONDS:
            results["checks"][name] = {"status": "skipped", "reason": "the 8-minute budget was spent"}
            continue
        try:
            results["checks"][name] = {"status": "ok", **fn(plan)}
        except Skipped as exc:
            results["checks"][name] = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # one broken check must not hide the others' results
            results["checks"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc(limit=6)}
        results["checks"][name]["seconds"] = time.perf_counter() - t0
    results["total_seconds"] = time.perf_counter() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{RESULTS_NAME}.json", results)
    write_text(out / f"{RESULTS_NAME}.md", render(results))
    return results


def render(results: dict) -> str:
    lines = [f"# GPU check ({'quick, ' if results['quick'] else ''}device {results['device']})", "",
             f"Machine: {results['machine']}", "", f"Total: {results['total_seconds']:.0f} s", "",
             "| check | status | seconds | numbers |", "| --- | --- | --- | --- |"]
    for name, r in results["checks"].items():
        nums = {k: v for k, v in r.items() if k not in ("status", "seconds", "traceback")}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in nums.items())
        lines.append(f"| {name} | {r['status']} | {r['seconds']:.1f} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu-check", help="Where gpu_check.json and gpu_check.md go.")
    ap.add_argument("--device", default="cuda", help="cuda (the real check) or cpu (with --quick: a dry run).")
    ap.add_argument("--quick", action="store_true", help="Toy sizes (seconds on a CPU).")
    ap.add_argument("--only", default="", help=f"Comma-separated subset of {','.join(CHECKS)}.")
    args = ap.parse_args(argv)
    plan = CheckPlan(args.device, args.quick, Path(args.out) / "work")
    res = run_checks(plan, args.out, [c for c in args.only.split(",") if c] or None)
    for name, r in res["checks"].items():
        print(f"{name:>10s}: {r['status']} ({r['seconds']:.1f} s) {r.get('reason') or r.get('error') or ''}")
    return 0 if all(r["status"] != "failed" for r in res["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
