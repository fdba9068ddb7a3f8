"""``cropi compare`` and ``cropi status``: every selector with one budget over several seeds, on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cropi.cli.main import (RUN_GROUPS, _budget_overrides, _int_list, _progress, _stages, _warn_about_data,
                            _training_events, app, config_command, handles_errors)
from cropi.errors import CropiError
from cropi.runs.report import verdict


COMPARE_SELECTORS = ("full,random,learnability,pass_rate,static_influence,cropi,cropi_harvest,dapo,greso,"
                     "online_filter,gradalign,online_influence")
DEMO_WORKER_ENV = "CROPI_DEMO_WORKER"
DEMO_STEPS = 80  # a few minutes on 2 cores


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
                           on_event=lambda row: current and current["on_event"](row), suite=suite)


def _print_compare(results: dict, out: Path, verdicts: bool = True) -> None:
    sel = results["selectors"]
    typer.echo(f"report: {out / 'report.md'}")
    for name in [n for n in sel if n != "full" and verdicts]:
        typer.echo(verdict(results, name))
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # no untargeted families on the validation split
    typer.echo("final targeted accuracy: " + ", ".join(f"{n} {pct(b['median']['final_targeted'])}" for n, b in sel.items()))
    typer.echo("best untargeted accuracy: " + ", ".join(f"{n} {pct(b['median']['best_untargeted'])}" for n, b in sel.items()))


@app.command()
@config_command(*RUN_GROUPS, derive=(_budget_overrides, _compare_eval_every), per_selector=True)
def compare(
    cfg,
    selectors: str = typer.Option(COMPARE_SELECTORS, help="Comma-separated selectors (full is always run: it sets the "
                                  "threshold); `cropi train --help` lists them.  Flags: cropi+drift, +reprobe, +refresh, "
                                  "+reuse switch on our departures from the paper (drift control, blind-spot re-probe, "
                                  "re-collection every stage, scoring trained prompts from their trained groups; "
                                  "drift and refresh sample to score); +candidatesN scores a seeded subset of N pool "
                                  "prompts per stage (without +sizeN the stage keeps select.ratio of the pool, at "
                                  "most every usable candidate); +sizeN selects N prompts per stage; +stagesN "
                                  "re-selects N times in the budget; +dapo, +greso, +online_filter, +online_influence "
                                  "build a selector's batches with that rule."),
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

    names = [s.strip() for s in selectors.split(",") if s.strip()]
    seed_list = _int_list("--seeds", seeds)
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
    seed of full data at that step.
    """
    from cropi.runs.compare import comparison_status

    rows = comparison_status(folder)
    pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"
    typer.echo(f"{'run':<44} {'state':<8} {'steps':>11} {'seconds':>8} {'left':>7} {'targeted':>14} {'full':>6}")
    for r in rows:
        left = "—" if r["eta_seconds"] is None else f"{r['eta_seconds'] / 3600:.1f} h"
        at = f"{pct(r['targeted'])} @{r['eval_step']}" if r["eval_step"] is not None else "—"
        typer.echo(f"{r['run']:<44} {r['state']:<8} {r['step']:>5}/{r['steps'] or '?':<5} {r['seconds']:>8.0f} "
                   f"{left:>7} {at:>14} {pct(r['full_targeted']):>6}")
