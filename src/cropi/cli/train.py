"""``cropi train`` and ``cropi demo``: one run folder, and cropi against full data on the embedded default."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cropi.cli.compare import DEMO_STEPS, DEMO_WORKER_ENV, _compare_with_progress, _print_compare
from cropi.cli.main import (RUN_GROUPS, _budget_overrides, _progress, _training_events, _warn_about_data, app,
                            config_command, console, handles_errors, load_config)
from cropi.machine import usable_cores
from cropi.runs.report import verdict
from cropi.selection import rules_help

DEMO_SELECTOR = "cropi_harvest"  # cropi's default mode (config.TrainConfig.selector)


@app.command()
@config_command(*RUN_GROUPS, "train", derive=(_budget_overrides,))
def train(
    cfg,
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Run folder (config, metrics, checkpoints, report)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
):
    from cropi.runs.run import check_run, run_training

    suite = check_run(cfg, out, resume)  # bad data or an existing folder stop here, before any output
    _warn_about_data(cfg, suite.pool + [p for v in suite.validation.values() for p in v])
    with _progress() as prog:
        task = prog.add_task(f"GRPO ({cfg.train.selector})", total=cfg.train.steps, info="")
        with stopped_note(out):
            summary = run_training(cfg, out, resume=resume, on_event=_training_events(prog, task), suite=suite)
    _print_summary(summary, out)


train.__doc__ = f"""Train a policy with GRPO on the prompts a selector chooses, evaluating periodically on the test splits.

    The default selector, cropi_harvest, reads each trained prompt's influence off the update's own backward (the
    cosine of its projected gradient to each validation set's mean, a POPI estimate from stored validation
    groups) and replays the best aligned among GRESO's batches: nothing is sampled or differentiated in order to
    score.  cropi is the paper's curriculum: the starting policy samples the pool once, and at every stage the
    current policy scores candidates from those stored trajectories, off-policy, and trains on the top.  Writes
    OUT/config.yaml (resolved), metrics.jsonl, checkpoints/, final_model/, summary.json, report.md and
    accuracy.png (and the rule's own folders: stores/, stages/, trained/).
    After an interruption, rerun the same command with --resume.

    \b
    Selectors (--selector NAME, or NAME+flag; `cropi compare --help` lists the flags):
    {rules_help().replace(chr(10), chr(10) + "    ")}
    """


@contextlib.contextmanager
def stopped_note(out: Path):
    """Ctrl-C ends a run with one line that says how to continue it (exit code 130, as the shell expects)."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"\ninterrupted: the run in {escape(str(out))} continues from its last checkpoint with the same "
                      "command and --resume", highlight=False, soft_wrap=True)
        raise typer.Exit(code=130) from None


def _print_summary(summary: dict, out: Path) -> None:
    """The run's accuracies, and where its charged seconds went, every kind of them."""
    c0 = summary["curve"][0]
    typer.echo(f"report: {out / 'report.md'}")
    split = summary.get("config", {}).get("eval", {}).get("split", "test")
    typer.echo(f"targeted {split} accuracy: {100 * c0['targeted']:.1f}% at step 0 -> {100 * summary['final_targeted']:.1f}% "
               f"(mean of last 3 evals), best {100 * summary['best_targeted']:.1f}%")
    if c0.get("untargeted") is not None:
        typer.echo(f"untargeted {split} accuracy: {100 * c0['untargeted']:.1f}% -> {100 * summary['final_untargeted']:.1f}%")
    kinds = summary.get("seconds_by_kind") or {}
    spent = ", ".join(f"{k} {v:.0f} s" if v >= 10 else f"{k} {v:.1f} s" for k, v in kinds.items() if v > 0)
    typer.echo(f"{summary['steps']} GRPO steps, {sum(kinds.values()):.0f} s charged ({spent}); evaluation not counted")


@app.command()
@handles_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Comparison folder."),
    steps: Optional[int] = typer.Option(None, help=f"GRPO steps per run (default {DEMO_STEPS}, an evaluation every "
                                        "tenth of them).", show_default=False),
):
    """cropi's default (cropi_harvest) against full-data GRPO on the embedded tiny model and synthetic suite: one
    seed, CPU, minutes.

    The same task suite and hyper-parameters as `cropi compare`; only the budget is smaller.  Ends with the
    report path, the accuracies and a one-line verdict: whether it reached full data's best sooner, in steps
    and in seconds, whatever the answer.  Rerun to resume.
    """
    import os
    import subprocess
    import sys

    import torch

    from cropi.runs.compare import run_compare

    budget = steps or DEMO_STEPS
    cfg = load_config(None, [f"train.steps={budget}", f"train.eval_every={max(1, budget // 10)}"])
    selectors = ["full", DEMO_SELECTOR]
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
                                   *([f"--steps={steps}"] if steps else [])],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    typer.echo(f"cropi demo: {DEMO_SELECTOR} (each trained prompt's influence read off the update's own backward, "
               f"the best aligned replayed) vs full-data GRPO, {cfg.train.steps} steps per run, seed 0, embedded tiny "
               f"policy, {cfg.data.suite.pool_size}-prompt pool"
               + ("; the two runs in parallel, one per core" if helper else ""))
    try:
        with stopped_note(out):
            results = _compare_with_progress(cfg, selectors, [0], out)
    finally:
        if helper is not None:
            helper.wait()
    _print_compare(results, out, verdicts=False)
    typer.echo(f"verdict: {verdict(results, DEMO_SELECTOR)}")


