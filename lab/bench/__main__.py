"""``python -m lab.bench``: the influence-engine benchmarks and the GPU check, from the repository root.

    python -m lab.bench projection [--quick]     projector speed and error (lab/results/projection.*)
    python -m lab.bench fidelity [--quick]       projected vs exact influence on real SmolLM2 gradients
    python -m lab.bench exact [--quick]          exact scoring next to the projection
    python -m lab.bench ray [--quick]            1 against 2 Ray workers
    python -m lab.bench gpu [--device cpu --quick]   every GPU check (lab/bench/gpu_check.sh)

Full runs write lab/results/; --quick runs write runs/bench-quick/ and never overwrite the committed results.
Each prints every target's verdict beside its measured number.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cropi.cli.main import _progress, console, handles_errors

app = typer.Typer(help="cropi's influence-engine benchmarks and the GPU check (the lab's, not installed).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _bench_dirs(quick: bool, out: Optional[Path], work: Optional[Path], name: str) -> tuple[Path, Path]:
    """Full runs write lab/results/ and keep resumable state in runs/bench-NAME/; quick runs write
    runs/bench-quick/ only (never over the committed results) and start fresh each time."""
    import shutil

    if quick:
        out = out or Path("runs/bench-quick")
        work = work or out / f"work-{name}"
        shutil.rmtree(work, ignore_errors=True)
    return out or Path("lab/results"), work or Path(f"runs/bench-{name}")


def _run_bench(name: str, plan_cls, run_fn, quick: bool, out: Optional[Path], work: Optional[Path], **plan) -> None:
    """Run a benchmark plan (options left unset keep the plan's defaults) and print each target's verdict."""
    from lab.bench.common import results_paths, target_checks

    kw = {k: v for k, v in plan.items() if v not in (None, ())}
    out, work = _bench_dirs(quick, out, work, name)
    with _progress() as prog:
        def track(desc: str, total: int):
            task = prog.add_task(desc, total=total, info="")
            return lambda n: prog.advance(task, n)

        res = run_fn(plan_cls.quick_plan(**kw) if quick else plan_cls(**kw), out, work, track,
                     log=lambda m: console.print(m, highlight=False))
    for _, target, ok, measured in target_checks(res):
        typer.echo(f"{'n/a' if ok is None else ('met' if ok else 'NOT met'):>8s}  {target}: {measured}")
    typer.echo(f"wrote {results_paths(out)[0]} and {results_paths(out)[1]}")


BenchOutOpt = typer.Option(None, "--out", "-o", help="Results folder (default lab/results, or runs/bench-quick).")
ProjectorOpt = typer.Option(None, "--projector", help="Projector configuration with {k} for each --k (repeatable), "
                            "e.g. 'sjlt-k{k}-keep1', 'sjlt-k{k}-cal0.1'.")


@app.command("projection")
@handles_errors
def bench_projection(
    quick: bool = typer.Option(False, help="Reduced run (tiny-model shapes, d = 2e4 flat) written under runs/bench-quick/."),
    out: Optional[Path] = BenchOutOpt,
    work: Optional[Path] = typer.Option(None, help="Resumable state (default runs/bench-projection)."),
    projector: Optional[List[str]] = ProjectorOpt,
    k: Optional[List[int]] = typer.Option(None, "--k", help="Projection dimensions (default 1024 and 8192)."),
    threads: int = typer.Option(1, help="torch threads (timings in the results are single-threaded)."),
):
    """Projector speed and inner-product error: TRAK and dense Gaussian at d = 1e6; every sparse configuration at
    SmolLM2-135M's parameter shapes (d = 1.35e8) next to a naive SJLT; streaming-read bandwidth and one SmolLM2
    forward+backward in the same run.  Writes projection.json / projection.md (merged with `fidelity`).
    Rerun the same command after an interruption: finished sections are kept in --work."""
    from lab.bench.speed import SpeedPlan, run_speed

    _run_bench("projection", SpeedPlan, run_speed, quick, out, work, threads=threads, configs=tuple(projector or ()),
               ks=tuple(k or ()))


@app.command("fidelity")
@handles_errors
def bench_fidelity(
    quick: bool = typer.Option(False, help="Reduced run (embedded tiny model, 40 prompts) written under runs/bench-quick/."),
    out: Optional[Path] = BenchOutOpt,
    work: Optional[Path] = typer.Option(None, help="Stores, exact validation mean and per-prompt results (default "
                                        "runs/bench-fidelity); rerun to resume."),
    train_prompts: Optional[int] = typer.Option(None, help="Usable training prompts to score (default 200)."),
    projector: Optional[List[str]] = ProjectorOpt,
    seeds: Optional[int] = typer.Option(None, help="Projection seeds (default 5)."),
    scoring: bool = typer.Option(True, help="Also measure the scoring cost ratio on the embedded default."),
    threads: int = typer.Option(1, help="torch threads."),
):
    """Precision@10% and Spearman of projected vs exact influence cosines on real SmolLM2 POPI gradients, and the
    scoring cost ratio on the embedded default.  Writes projection.json / projection.md (merged with
    `projection`)."""
    from lab.bench.fidelity import FidelityPlan, run_fidelity

    _run_bench("fidelity", FidelityPlan, run_fidelity, quick, out, work, threads=threads, scoring=scoring,
               train_prompts=train_prompts, configs=tuple(projector or ()), seeds=seeds)


@app.command("exact")
@handles_errors
def bench_exact(
    quick: bool = typer.Option(False, help="Reduced run (embedded tiny model, 40 prompts) written under runs/bench-quick/."),
    out: Optional[Path] = BenchOutOpt,
    work: Optional[Path] = typer.Option(None, help="Stores, reused on a rerun (default runs/bench-exact)."),
    train_prompts: int = typer.Option(60, help="Usable training prompts."),
    val_prompts: int = typer.Option(30, help="Usable validation prompts in the mean."),
    threads: int = typer.Option(2, help="torch threads."),
):
    """Exact scoring (select.score.mode=exact) next to the default SJLT k = 8192 projection on the same SmolLM2
    POPI gradients: precision@10% and Spearman against an fp64 reference, seconds per prompt, memory.  Writes
    exact_scoring.json / exact_scoring.md."""
    from lab.bench.exact_scoring import main as run_exact

    args = ["--train-prompts", str(train_prompts), "--val-prompts", str(val_prompts), "--threads", str(threads)]
    args += ["--quick"] * quick + (["--out", str(out)] if out else []) + (["--work", str(work)] if work else [])
    run_exact(args)


@app.command("gpu")
@handles_errors
def bench_gpu(
    out: Path = typer.Option(Path("runs") / "gpu-check", "--out", "-o", help="Where gpu_check.json / .md go."),
    device: str = typer.Option("cuda", help="cuda (the real check) or cpu (with --quick: a dry run of the script)."),
    quick: bool = typer.Option(False, help="Toy sizes (the tiny model's shapes, 16 prompts, 2 steps)."),
    only: Optional[str] = typer.Option(None, help="Comma-separated subset of projector,grpo,ray,trl,vllm."),
):
    """Every GPU check in one run (sized for 8 minutes on one GPU, embedded tiny policy): the CUDA projector at
    SmolLM2 size against the CPU kernel, cropi's own collect/score/GRPO on CUDA, a 2-worker Ray scoring smoke
    test, a short TRL run and vLLM log-prob parity (each engine's check is skipped, with the reason, where it
    does not import).  The same as lab/bench/gpu_check.sh, which also installs the wheels of .whl/ first (lab/bench/gpu_wheels.sh)."""
    from lab.bench.gpu_check import main as run_gpu_check

    code = run_gpu_check(["--out", str(out), "--device", device, *(["--quick"] * quick),
                          *(["--only", only] if only else [])])
    if code:
        raise typer.Exit(code)


@app.command("ray")
@handles_errors
def bench_ray(
    quick: bool = typer.Option(False, help="Reduced run (256 pool prompts) written under runs/bench-quick/."),
    out: Optional[Path] = BenchOutOpt,
    work: Optional[Path] = typer.Option(None, help="Stores, reused on a rerun (default runs/bench-ray)."),
    pool_prompts: Optional[int] = typer.Option(None, help="The first N pool prompts (default: the whole embedded pool)."),
    threads: int = typer.Option(1, help="torch threads per Ray worker and in the one-process run."),
    collection: bool = typer.Option(True, help="Also time and compare collection on Ray."),
):
    """Scoring sharded over Ray, 1 vs 2 workers on the embedded pool in one run, next to one process without Ray:
    bit-identical scores (checked bitwise), prompts per second and their ratio, Ray start-up apart; collection
    likewise.  Writes ray_scoring.json / ray_scoring.md.  Needs the ray extra (pip install -e ".[ray]")."""
    from lab.bench.ray_scoring import RayScoringPlan, run
    from cropi.extras import require
    from cropi.integrations import ray_shards

    require("ray", "ray", "python -m lab.bench ray")
    kw = {"threads": threads, "collection": collection, **({"pool_prompts": pool_prompts} if pool_prompts else {})}
    plan = RayScoringPlan.quick_plan(**kw) if quick else RayScoringPlan(**kw)
    out, work = _bench_dirs(quick, out, work, "ray")
    res = run(plan, out, work, ray_shards, log=lambda m: console.print(m, highlight=False))
    if "speedup_2_vs_1" in res:
        typer.echo(f"identical scores: {'yes' if res['identical_scores'] else 'NO'}; 2 workers vs 1: "
                   f"{res['speedup_2_vs_1']:.2f}x prompts/s (target >= {res['scaling_target']}x: "
                   f"{'met' if res['target_met'] else 'NOT met'}); Ray start {res['ray_start_seconds']:.1f} s")
    typer.echo(f"wrote {out / 'ray_scoring.json'} and {out / 'ray_scoring.md'}")


if __name__ == "__main__":
    app()
