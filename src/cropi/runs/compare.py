"""``cropi compare``: every selector, several seeds, one budget; accelerations against full-data GRPO.

This module schedules the runs and assembles the results; the numbers are defined in
``experiments/metrics.py``, the report in ``experiments/report.py``.  Each run is an ordinary run folder
(``DIR/runs/SELECTOR-sSEED``), so the comparison resumes run by run and a finished run is never redone.  Resumed
on another machine, it first repeats full data's first seed there (``DIR/runs/full-sSEED@HOST``): wall-clock
accelerations divide by full data's seconds on the run's own machine.
"""

from __future__ import annotations

import copy
import functools
import time
from pathlib import Path
from typing import Callable, Sequence

import yaml

from cropi.config import RunConfig, dump_config, validate
from cropi.errors import ConfigError
from cropi.runs.locks import claim, holder, release
from cropi.runs.metrics import compute_results, contended, host_of, training_signal
from cropi.runs.report import host_id, machine_description, write_comparison_report
from cropi.runs.run import evaluation_sets, load_summary, resolve_selector, run_training
from cropi.io import read_json, read_jsonl, write_json, write_text
from cropi.machine import usable_cores
from cropi.selection.variants import apply_settings, parse_selector
from cropi.tasks.loading import load_data
from cropi.tasks.suite import Suite


def run_name(selector: str, seed: int, host: str | None = None) -> str:
    """A run's folder name: ``SELECTOR-sSEED``, or ``full-sSEED@HOST`` for a reference run of full data."""
    return f"{selector}-s{seed}" + (f"@{host}" if host else "")


def parse_run_name(name: str) -> tuple[str, int, str | None]:
    """``"cropi-s2"`` -> ``("cropi", 2, None)``; ``"full-s0@f703f209"`` -> ``("full", 0, "f703f209")``.
    ValueError for a name of another form."""
    base, _, host = name.partition("@")
    selector, seed = base.rsplit("-s", 1)
    return selector, int(seed), host or None


def reference_summaries(runs: Path) -> list[dict]:
    """The summaries of a comparison's finished reference runs of full data (``runs/full-sSEED@HOST``), every
    machine's.  A repeat renamed ``contended-*`` by hand is not one: its seconds are inflated."""
    return [read_json(p) for p in sorted(runs.glob("full-s*@*/summary.json"))]


def finished_summaries(runs: Path) -> dict[str, dict[int, dict]]:
    """``{selector: {seed: summary}}`` of a comparison's finished runs (those with a summary.json), read from its
    files only, so also while runs are going.  Reference runs and ``contended-*`` repeats are left out."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(runs.glob("*/summary.json")):
        name = path.parent.name
        if name.startswith("contended"):
            continue
        try:
            selector, seed, host = parse_run_name(name)
        except ValueError:
            continue  # not a run's folder
        if host is None:
            out.setdefault(selector, {})[seed] = read_json(path)
    return {selector: dict(sorted(by_seed.items())) for selector, by_seed in out.items()}


def run_config(cfg: RunConfig, out: Path, name: str, seed: int) -> RunConfig:
    """The config of one run of a comparison: its selector (with a variant's settings), seed and shared stores."""
    c = copy.deepcopy(cfg)
    base, settings = parse_selector(name, cfg)
    c.train.selector, c.train.seed = base, seed
    apply_settings(c, settings)
    c.select.stores = str(Path(out) / "stores")
    return c


def check_compare(cfg: RunConfig, selectors: Sequence[str], seeds: Sequence[int], out: str | Path) -> Suite:
    """Every run's config and selector, and the data, checked before the comparison writes anything."""
    for name in ["full", *selectors]:
        for seed in seeds:
            resolve_selector(validate(run_config(cfg, Path(out), name, seed)))
    return load_data(cfg.data)


def reference_run(out: Path, pending: Sequence[tuple[str, int, str]]) -> str | None:
    """The name of a reference run of full data for this machine, when one is needed: runs are left to do here,
    none of them full data's, and full data's finished runs were measured on another machine (a comparison
    resumed elsewhere).  It repeats full data's first seed, so that the runs done here have full-data seconds
    from the same machine.
    Also when full data's runs here were contended (their seconds inflated); once per machine."""
    here = host_id()
    todo = [r for _, _, r in pending if not (out / "runs" / r / "summary.json").exists()]
    if any(name == "full" and r in todo for name, _, r in pending):
        return None  # a full-data run still to do here measures this machine itself
    full_done = [read_json(out / "runs" / r / "summary.json") for name, _, r in pending
                 if name == "full" and r not in todo]
    # earlier reference runs count too, whichever seed they repeat: one clean one per machine is enough
    full_done += reference_summaries(out / "runs")
    # a contended full-data run is no seconds reference (metrics.contended), so it is repeated here as well
    clean_hosts = {host_of(s) for s in full_done if not contended(s)}
    if not todo or not full_done or here in clean_hosts:
        return None
    mine = sorted((out / "runs").glob(f"full-s*@{here[:8]}"))
    if any((p / "summary.json").exists() for p in mine):
        return None  # made here already and contended as well: one try; the runs here get no wall-clock number
    if mine:
        return mine[0].name  # one begun here by a resume with other seeds: finish that one
    return run_name("full", pending[0][1], here[:8])


def run_compare(cfg: RunConfig, selectors: Sequence[str], seeds: Sequence[int], out: str | Path,
                on_run: Callable[[str, int, dict | None], None] | None = None,
                on_event: Callable[[dict], None] | None = None, worker: bool = False) -> dict | None:
    """Run (or resume) every selector × seed with ``cfg`` and write ``out/results.json`` and ``out/report.md``.

    ``worker=True``: only run the runs no other process has claimed, then return None without waiting for the
    others or writing the results (a helper process beside the one that reports)."""
    out = Path(out)
    order = ["full"] + [s for s in selectors if s != "full"]
    config_for = functools.partial(run_config, cfg, out)
    suite = check_compare(cfg, selectors, seeds, out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", dump_config(cfg))
    summaries: dict[str, dict[int, dict]] = {}
    items: dict[str, dict[int, dict]] = {}

    # Several `cropi compare` processes may share one folder (e.g. one per core): each run is claimed with a
    # lock file, runs claimed elsewhere are deferred, and every process ends with the whole result.
    pending = [(name, seed, run_name(name, seed)) for name in order for seed in seeds]
    reference = reference_run(out, pending)
    if reference:
        pending.insert(0, ("full", parse_run_name(reference)[1], reference))
    while pending:
        deferred = []
        for name, seed, folder in pending:
            run_dir = out / "runs" / folder
            if not (run_dir / "summary.json").exists():
                if not claim(run_dir):
                    deferred.append((name, seed, folder))
                    continue
                try:
                    if not (run_dir / "summary.json").exists():
                        if on_run:
                            on_run(name, seed, None)
                        run_training(config_for(name, seed), run_dir, resume=(run_dir / "config.yaml").exists(),
                                     on_event=on_event)
                finally:
                    release(run_dir)
            summary = read_json(run_dir / "summary.json")
            if run_dir.name != run_name(name, seed):
                continue  # a reference run: read below, with every machine's
            if on_run:
                on_run(name, seed, summary)
            summaries.setdefault(name, {})[seed] = summary
            if (run_dir / "final_eval_items.json").exists():
                items.setdefault(name, {})[seed] = read_json(run_dir / "final_eval_items.json")["items"]
        if worker:
            return None
        if deferred and len(deferred) == len(pending):
            time.sleep(10)  # everything left is running in another process
        pending = deferred
    summaries = {name: dict(sorted(summaries[name].items())) for name in order if name in summaries}
    eval_sets = evaluation_sets(cfg, suite)
    targeted_ids = {f: [p.id for p in eval_sets[f]] for f in suite.targeted}
    references = reference_summaries(out / "runs")
    results = compute_results(summaries, machine_description(), cfg.train.steps, items, targeted_ids, references)
    for name, runs in summaries.items():
        for seed in runs:
            metrics = out / "runs" / f"{name}-s{seed}" / "metrics.jsonl"
            if metrics.exists():
                results["selectors"][name]["seeds"][str(seed)]["training_signal"] = training_signal(
                    read_jsonl(metrics), config_for(name, seed).select.stages, cfg.train.steps)
    results["stages"] = cfg.select.stages
    results["select_ratio"] = cfg.select.ratio
    results["eval_split"] = cfg.eval.split  # "validation" when settings are being chosen
    results["test_n_targeted"] = sum(len(v) for v in targeted_ids.values())
    write_json(out / "results.json", results)
    write_comparison_report(results, out)
    return results


def comparison_status(out: str | Path) -> list[dict]:
    """Where each run of a comparison folder stands, read from its files only (safe beside the processes
    training it).  Per run: ``state`` (done, running: claimed by a live process, stopped: begun, resumable, or
    waiting), the last step logged and the budget, its charged seconds so far, its last evaluation's targeted
    accuracy and step, the same seed of full data's targeted accuracy at that step (``full_targeted``, None
    where full data has no evaluation there), ``eta_seconds``: the remaining steps at its mean charged
    seconds per step so far (evaluation not counted), ``load``: its mean 1-minute load at its evaluations so
    far, and ``contended``: whether that load already exceeds the cores + ``metrics.CONTENTION_MARGIN`` (a
    finished run's summary decides; an unfinished one is read against this machine's cores), so that seconds
    about to be lost to a shared machine show while the run can still be stopped."""
    runs = Path(out) / "runs"
    if not runs.is_dir():
        raise ConfigError(f"{runs}: not found; is {out} a `cropi compare` folder?")
    evals = {}
    rows = []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        steps = [r for r in metrics if r.get("event") == "step"]
        evals[run_dir.name] = {r["step"]: r["targeted"] for r in metrics if r.get("event") == "eval"}
        live = holder(run_dir) is not None
        done = (run_dir / "summary.json").exists()
        budget = None
        if (run_dir / "config.yaml").exists():
            budget = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("train", {}).get("steps")
        step = max((r["step"] for r in steps), default=0)
        seconds = max((r["seconds"] for r in steps), default=0.0)
        last_eval = max(evals[run_dir.name], default=None)
        loads = load_summary(metrics)
        summary = read_json(run_dir / "summary.json") if done else \
            {"load_1min_at_evals": loads, "machine": f"here, {usable_cores()} cores"}
        rows.append({"run": run_dir.name, "state": "done" if done else "running" if live else
                     "stopped" if steps else "waiting", "step": step, "steps": budget, "seconds": seconds,
                     "eval_step": last_eval, "targeted": evals[run_dir.name].get(last_eval),
                     "eta_seconds": None if done or not step or budget is None
                     else seconds / step * max(budget - step, 0),
                     "load": (summary.get("load_1min_at_evals") or {}).get("mean"), "contended": contended(summary)})
    for row in rows:  # full data's same seed (a reference run: its own), at the run's last evaluation
        try:
            seed = parse_run_name(row["run"].removeprefix("contended-"))[1]
        except ValueError:  # a folder that is not a run's
            row["full_targeted"] = None
            continue
        row["full_targeted"] = evals.get(run_name("full", seed), {}).get(row["eval_step"])
    return rows
