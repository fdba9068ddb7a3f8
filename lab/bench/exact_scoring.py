"""Exact scoring next to the default projection, on the same real policy gradients.

``select.score.mode=exact`` keeps each validation set's mean gradient ḡ_v whole and streams every prompt's
gradient against it: cos(g, ḡ_v) = ⟨g, ḡ_v⟩ / (‖g‖ ‖ḡ_v‖) with no projection error.  This benchmark measures,
on SmolLM2-135M-Instruct POPI gradients (the embedded tiny policy with ``--quick``), per training prompt:

- the seconds of the gradient itself (shared by both modes), of the SJLT k = 8192 projection and of the exact
  inner products ⟨g, ḡ_v⟩, each timed around the engine's own code (``scores.mean_dots.MeanDots``, the default
  projector); ‖g‖, which exact mode also needs, is computed for every mode by the engine;
- precision@10% and Spearman ρ of each mode's cosines against an fp64 reference computed separately (exact
  mode should give precision 1.0: this checks it);
- memory: the fp32 bytes of the means (per validation set) against k fp32 numbers per stored prompt, and the
  process's peak resident set.

Run: ``python -m lab.bench.exact_scoring`` (writes ``lab/results/exact_scoring.{json,md}``;
``--quick`` writes under ``runs/bench-quick/``).  Stores are collected into ``--work`` and reused on a rerun.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import time
from pathlib import Path

import torch

from cropi import SCHEMA_VERSION
from lab.bench.common import set_threads
from lab.bench.fidelity import FidelityPlan, _collect_until, _problems, _usable_groups, precision_at, spearman
from cropi.io import write_json, write_text


def _dot64(a: dict, b: dict) -> float:
    return float(sum(torch.dot(a[n].flatten().double(), b[n].flatten().double()) for n in a))


def run(plan: FidelityPlan, out_dir: Path, work: Path, k: int = 8192, log=print) -> dict:
    from lab.machines import machine_description
    from cropi.gradients.popi import make_estimator
    from cropi.policy import load_policy
    from cropi.projection import make_projector, param_shapes_of
    from cropi.scores.mean_dots import MeanDots

    set_threads(plan.threads)
    started = time.perf_counter()
    policy = load_policy(plan.model, "cpu")
    shapes = param_shapes_of(policy.model)
    d = sum(math.prod(s) for s in shapes.values())
    names = list(shapes)
    train_problems, val_problems = _problems(plan)
    track = lambda desc, total: (lambda n: None)  # noqa: E731
    train_stores, _, _ = _collect_until(policy, train_problems, work, "train", plan, plan.train_prompts, track)
    val_stores, _, _ = _collect_until(policy, val_problems, work, "val", plan, plan.val_prompts, track)
    train = _usable_groups(train_stores, plan.train_prompts)
    val = _usable_groups(val_stores, plan.val_prompts)
    log(f"{len(train)} usable training prompts, {len(val)} validation prompts, d = {d:,}")
    estimator = make_estimator(policy.model, policy.pad_token_id, param_names=names)

    t0 = time.perf_counter()
    total: dict[str, torch.Tensor] = {}
    for gb in estimator.gradients(val).batches:
        for n, g in gb.grads.items():
            total[n] = g.sum(0) if n not in total else total[n].add_(g.sum(0))
    mean = {n: t / len(val) for n, t in total.items()}
    mean_seconds = time.perf_counter() - t0
    dots = MeanDots({"val": mean}, {"val": {"prompts": len(val)}})
    projector = make_projector("sjlt", k, 0, shapes)
    p_mean = projector.project(mean)
    mean_norm = math.sqrt(_dot64(mean, mean))

    seconds = {"gradient": [], "sjlt_projection": [], "exact_inner_products": []}
    ref, exact, projected = [], [], []
    t_prev = time.perf_counter()
    for gb in estimator.gradients(train).batches:
        t_grad = time.perf_counter()
        seconds["gradient"].append(t_grad - t_prev)
        # exact mode's own work per prompt: the inner products (‖g‖ is computed for every mode by the engine)
        t = time.perf_counter()
        dot = dots.project_batch(gb.grads)[0, 0].item()
        seconds["exact_inner_products"].append(time.perf_counter() - t)
        sq = sum(float(g.reshape(1, -1).pow(2).sum(1, dtype=torch.float64)) for g in gb.grads.values())
        t = time.perf_counter()
        v = projector.project_batch(gb.grads)[0]
        seconds["sjlt_projection"].append(time.perf_counter() - t)
        g = gb.prompt(0)
        g_norm = math.sqrt(_dot64(g, g))
        ref.append(_dot64(g, mean) / (g_norm * mean_norm) if g_norm > 0 else 0.0)
        exact.append(dot / (math.sqrt(sq) * dots.norms["val"]) if sq > 0 else 0.0)
        projected.append(float(v @ p_mean) / float(v.norm() * p_mean.norm()))
        t_prev = time.perf_counter()
    ids = [g.prompt_id for g in train]
    med = {key: statistics.median(vals) for key, vals in seconds.items()}
    rows = [
        {"mode": "exact", "precision_at_10": precision_at(ids, ref, exact), "spearman": spearman(ref, exact),
         "max_abs_cosine_error": max(abs(a - b) for a, b in zip(ref, exact)),
         "seconds_per_prompt": med["exact_inner_products"]},
        {"mode": f"projected (sjlt-k{k}-keep1)", "precision_at_10": precision_at(ids, ref, projected),
         "spearman": spearman(ref, projected), "max_abs_cosine_error": max(abs(a - b) for a, b in zip(ref, projected)),
         "seconds_per_prompt": med["sjlt_projection"]},
    ]
    res = {"schema_version": SCHEMA_VERSION, "benchmark": "exact_scoring", "machine": machine_description(),
           "model": plan.model, "threads": plan.threads, "d": d, "k": k, "train_prompts": len(ids),
           "val_prompts": len(val), "validation_mean_seconds": mean_seconds,
           "gradient_seconds_per_prompt": med["gradient"], "modes": rows,
           "exact_vs_sjlt_time_ratio": med["exact_inner_products"] / med["sjlt_projection"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "exact_cosine_sd": statistics.pstdev(ref), "elapsed_seconds": time.perf_counter() - started}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "exact_scoring.json", res)
    write_text(out_dir / "exact_scoring.md", render(res))
    report_beside_fidelity(out_dir, res)
    return res


def report_beside_fidelity(out_dir: Path, res: dict) -> None:
    """Put the comparison in the projection benchmarks' results too, next to the fidelity table."""
    from lab.bench.common import merge_results

    keep = ("model", "threads", "d", "k", "train_prompts", "val_prompts", "modes", "exact_vs_sjlt_time_ratio")
    merge_results(out_dir, {"exact_scoring": {k: res[k] for k in keep}})


def render(res: dict) -> str:
    memory = {"exact": (f"{4 * res['d'] / 2 ** 20:.1f} MiB (the fp32 mean)", "4 B per validation set"),
              "projected": (f"{4 * res['k'] / 2 ** 10:.0f} KiB (the projected mean)", f"{4 * res['k'] / 2 ** 10:.0f} KiB")}
    lines = ["# Exact scoring vs projection", "",
             f"Generated by `python -m lab.bench exact` (numbers in `exact_scoring.json`); "
             f"machine: {res['machine']}; {res['threads']} thread(s).", "",
             f"- model {res['model']}, d = {res['d']:,} parameters; {res['train_prompts']} usable training prompts, "
             f"{res['val_prompts']} validation prompts in the mean (computed in {res['validation_mean_seconds']:.1f} s)",
             f"- one POPI gradient (forward + backward, shared by both modes): "
             f"{res['gradient_seconds_per_prompt']:.2f} s per prompt (median)",
             f"- SD of the exact cosines: {res['exact_cosine_sd']:.4f}; peak resident memory "
             f"{res['peak_rss_mib']:.0f} MiB", "",
             "| mode | precision@10% vs fp64 reference | Spearman ρ | max abs cosine error | seconds per prompt "
             "(after the gradient) | memory per validation set | stored per prompt |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in res["modes"]:
        mem, disk = memory["exact" if r["mode"] == "exact" else "projected"]
        lines.append(f"| {r['mode']} | {r['precision_at_10']:.3f} | {r['spearman']:.4f} | "
                     f"{r['max_abs_cosine_error']:.2e} | {r['seconds_per_prompt']:.4f} | {mem} | {disk} |")
    lines += ["", f"Exact inner products take {res['exact_vs_sjlt_time_ratio']:.2f}× the time of the SJLT projection "
              "per prompt (median), both timed in the same run on the same gradients.  Precision@10% is the overlap "
              f"of the top {max(1, round(0.1 * res['train_prompts']))} prompts of {res['train_prompts']}.", ""]
    if "elapsed_seconds" in res:
        lines += [f"The whole run took {res['elapsed_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="embedded tiny policy, 40 prompts, under runs/bench-quick/")
    ap.add_argument("--train-prompts", type=int, default=60, help="usable training prompts (default 60)")
    ap.add_argument("--val-prompts", type=int, default=30, help="usable validation prompts in the mean (default 30)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default lab/results)")
    ap.add_argument("--work", type=Path, default=None, help="stores, reused on a rerun (default runs/bench-exact)")
    args = ap.parse_args(argv)
    if args.quick:
        plan = FidelityPlan.quick_plan(train_prompts=min(args.train_prompts, 40),
                                       val_prompts=min(args.val_prompts, 12), threads=args.threads)
        out, work = args.out or Path("runs/bench-quick"), args.work or Path("runs/bench-quick/work-exact")
    else:
        plan = FidelityPlan(train_prompts=args.train_prompts, val_prompts=args.val_prompts, threads=args.threads)
        out, work = args.out or Path("lab/results"), args.work or Path("runs/bench-exact")
    res = run(plan, out, work)
    print(render(res))


if __name__ == "__main__":
    main()
