"""``cropi compare``: every selector, several seeds, one budget; accelerations against full-data GRPO.

Definitions (issue 4, as in the paper's Table 1 but measured on test splits the scores never see):
- Threshold: the best point of the seed-mean full-data *targeted* test curve after smoothing each curve over
  3 evaluations (centred moving average; the end points average the evaluations that exist).
- S(run): the first step at which the run's smoothed targeted curve reaches the threshold, interpolated
  linearly between evaluations; null if it never does within the budget.  S_full is the same crossing on
  the seed-mean full-data curve.  Step-level acceleration = S_full / S(run).
- Wall-clock acceleration: the same with the runs' cumulative collection + scoring + training seconds
  (evaluation excluded; collection is charged to every run that uses the behaviour stores, although the
  comparison collects them once).
- final_targeted: mean of the last 3 evaluations.

Each run is an ordinary run folder (``DIR/runs/SELECTOR-sSEED``), so the comparison resumes run by run and a
finished run is never redone.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
import statistics
from pathlib import Path
from typing import Callable, Sequence

from cropi import SCHEMA_VERSION
from cropi.config import RunConfig, dump_config
from cropi.errors import ConfigError
from cropi.io import read_json, write_json, write_text
from cropi.training.curriculum import recollect_seconds

SMOOTH = 3

# Variants of the cropi selector with our departures from the paper switched on: ``cropi+drift``,
# ``cropi+reprobe``, ``cropi+drift+reprobe``.  Their settings are conventional, not tuned on results: re-collect
# when the median ESS falls below half (the usual resampling rule for importance weights), and re-probe 200
# zero-variance prompts per stage with G responses each; ``refresh`` re-collects the trajectories with the
# current policy at every stage (its setting was chosen on validation: benchmarks/results/probe-validation.md).
# ``candidatesN`` (cropi and static_influence) scores, and refreshes, only a seeded subset of N pool prompts per
# stage, the same subset for both selectors at stage 0; ``stagesN`` (cropi) re-selects N times in the same
# budget instead of the comparison's stage count.
VARIANT_SETTINGS = {"drift": {"drift_ess_threshold": 0.5}, "reprobe": {"reprobe_prompts": 200},
                    "refresh": {"refresh_every": 1}}
# Flags with a number: flag name -> (the ``select`` key it sets, the selectors it applies to, the least N).
# With fewer than 3 stages cropi is (nearly) static influence.
NUMBERED_FLAGS = {"candidates": ("candidates", ("cropi", "static_influence"), 1), "stages": ("stages", ("cropi",), 3)}


def parse_selector(spec: str) -> tuple[str, dict]:
    """``"cropi+drift+reprobe"`` -> (``"cropi"``, the ``select`` settings it switches on)."""
    base, *flags = spec.split("+")
    settings: dict = {}
    for flag in flags:
        numbered = re.fullmatch(r"([a-z]+)(\d+)", flag)
        if numbered and numbered.group(1) in NUMBERED_FLAGS:
            key, bases, least = NUMBERED_FLAGS[numbered.group(1)]
            if base not in bases or int(numbered.group(2)) < least:
                raise ConfigError(f"selector {spec!r}: {flag!r} applies to {' and '.join(bases)}, with N >= {least}")
            settings[key] = int(numbered.group(2))
        elif flag not in VARIANT_SETTINGS:
            raise ConfigError(f"selector {spec!r}: unknown variant {flag!r} "
                              f"(known: {', '.join(VARIANT_SETTINGS)}, {', '.join(f + 'N' for f in NUMBERED_FLAGS)})")
        elif base != "cropi":
            raise ConfigError(f"selector {spec!r}: {flag!r} applies to cropi only")
        else:
            settings.update(VARIANT_SETTINGS[flag])
    return base, settings


def smooth(values: Sequence[float], window: int = SMOOTH) -> list[float]:
    """Centred moving average over ``window`` evaluations (shorter at the ends)."""
    h = window // 2
    return [sum(values[max(0, i - h): i + h + 1]) / len(values[max(0, i - h): i + h + 1]) for i in range(len(values))]


def first_crossing(xs: Sequence[float], ys: Sequence[float], threshold: float) -> float | None:
    """The first x at which the piecewise-linear curve (xs, ys) reaches ``threshold``; None if never."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= threshold - 1e-12:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (threshold - y0) / (y - y0) * (x - x0))
    return None


def _mean_curve(curves: list[list[dict]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Seed-mean of ``key`` and of seconds at each evaluation step common to all curves."""
    steps = sorted(set.intersection(*[{c["step"] for c in cur} for cur in curves]))
    by = [{c["step"]: c for c in cur} for cur in curves]
    mean = [statistics.fmean(b[s][key] for b in by) for s in steps]
    secs = [statistics.fmean(b[s]["seconds"] for b in by) for s in steps]
    return [float(s) for s in steps], mean, secs


def paired_se(a: dict[str, float], b: dict[str, float], families: dict[str, list[str]]) -> float | None:
    """Standard error of the difference of two macro-averaged accuracies on the same test items:
    per family SE_f = sd(a_i − b_i)/√n_f, macro SE = √(Σ_f SE_f²)/F."""
    ses = []
    for ids in families.values():
        d = [a[i] - b[i] for i in ids if i in a and i in b]
        if len(d) < 2:
            return None
        ses.append(statistics.stdev(d) / math.sqrt(len(d)))
    return math.sqrt(sum(s * s for s in ses)) / len(ses) if ses else None


def compute_results(summaries: dict[str, dict[int, dict]], machine: str, budget_steps: int,
                    items: dict[str, dict[int, dict]] | None = None,
                    targeted_ids: dict[str, list[str]] | None = None) -> dict:
    """results.json from run summaries ``{selector: {seed: summary}}`` (``full`` must be present)."""
    if "full" not in summaries or not summaries["full"]:
        raise ConfigError("a comparison needs the full-data selector (it defines the threshold)")
    full_curves = [s["curve"] for s in summaries["full"].values()]
    steps, mean_t, mean_sec = _mean_curve(full_curves, "targeted")
    sm = smooth(mean_t)
    threshold = max(sm)
    s_full = first_crossing(steps, sm, threshold)
    w_full = first_crossing(mean_sec, sm, threshold)
    out = {"schema_version": SCHEMA_VERSION, "machine": machine, "budget_steps": budget_steps,
           "threshold_targeted": threshold, "full_steps_to_threshold": s_full, "full_seconds_to_threshold": w_full,
           "selectors": {}}
    for name, runs in summaries.items():
        seeds = {}
        for seed, s in sorted(runs.items()):
            curve = s["curve"]
            ys = smooth([c["targeted"] for c in curve])
            s_run = first_crossing([c["step"] for c in curve], ys, threshold)
            w_run = first_crossing([c["seconds"] for c in curve], ys, threshold)
            tgt = [c["targeted"] for c in curve]
            unt = [c["untargeted"] for c in curve if c.get("untargeted") is not None]
            row = {
                "step_acceleration": (s_full / s_run) if (s_run and s_full) else None,
                "wall_acceleration": (w_full / w_run) if (w_run and w_full) else None,
                "steps_to_threshold": s_run,
                "seconds_to_threshold": w_run,
                "best_targeted": max(tgt),
                "best_untargeted": max(unt) if unt else None,
                "final_targeted": statistics.fmean(tgt[-3:]),
                "final_untargeted": statistics.fmean(unt[-3:]) if unt else None,
                # the first collection plus every later one (drift, refresh, re-probe)
                "collect_seconds": (s.get("collect_seconds") or 0.0) + recollect_seconds(s.get("stage_summaries", [])),
                "score_seconds": s.get("score_seconds") or 0.0,
                "select_seconds": s.get("select_seconds") or 0.0,
                "train_seconds": s.get("train_seconds", s.get("wall_seconds", 0.0)) or 0.0,
                "evaluations": len(curve),
                "curve": [{"step": c["step"], "targeted": c["targeted"], "untargeted": c.get("untargeted"),
                           "seconds": c["seconds"]} for c in curve],
            }
            if items and targeted_ids and name != "full" and seed in items.get(name, {}) and seed in items.get("full", {}):
                row["paired_se_vs_full"] = paired_se(items[name][seed], items["full"][seed], targeted_ids)
            seeds[str(seed)] = row
        med = lambda key: _median([r[key] for r in seeds.values()])
        out["selectors"][name] = {
            "seeds": seeds,
            "median": {k: med(k) for k in ("step_acceleration", "wall_acceleration", "final_targeted",
                                           "best_targeted", "best_untargeted")},
        }
    out["partial_gain"] = _partial_gain(summaries, steps, sm, mean_t[0], threshold)
    return out


PARTIAL_GAIN_FRACTIONS = (0.5, 0.75, 0.9)


def _partial_gain(summaries: dict, steps: list[float], full_smoothed: list[float], start: float,
                  threshold: float) -> dict:
    """Step-level acceleration to *fractions* of the full-data gain (start + f · (threshold − start)): where the
    full-data curve is still rising at the end of the budget, the best-point threshold alone says little about
    how much earlier a selector gets most of the way."""
    out = {}
    for f in PARTIAL_GAIN_FRACTIONS:
        level = start + f * (threshold - start)
        s_full = first_crossing(steps, full_smoothed, level)
        per = {}
        for name, runs in summaries.items():
            vals = []
            for s in runs.values():
                curve = s["curve"]
                s_run = first_crossing([c["step"] for c in curve], smooth([c["targeted"] for c in curve]), level)
                vals.append(s_full / s_run if (s_run and s_full) else None)
            per[name] = {"median_step_acceleration": _median(vals), "seeds": vals}
        out[str(f)] = {"level": level, "full_steps": s_full, "selectors": per}
    return out


def training_signal(metrics_path: str | Path, stages: int, steps: int) -> list[dict]:
    """Per stage (the run's own stage bounds), the means over its GRPO steps of the batch's reward and of the
    share of its groups with mixed rewards (the groups that give a gradient), from a run's ``metrics.jsonl``;
    ``end_step`` is the step count at the stage's end.  A subset that is being learned without the test accuracy
    moving shows as a rising reward: the policy memorises the chosen prompts."""
    from bisect import bisect_right

    from cropi.training.run import stage_bounds

    bounds = stage_bounds(steps, stages)
    per: dict[int, list[tuple[float, float]]] = {}
    for line in Path(metrics_path).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "step":  # logged step t is the t-th update, global step index t - 1
            stage = min(stages - 1, bisect_right(bounds, int(rec["step"]) - 1) - 1)
            per.setdefault(stage, []).append((float(rec["reward_mean"]), float(rec["mixed_groups"])))
    return [{"stage": st, "end_step": bounds[st + 1], "reward_mean": statistics.fmean(r for r, _ in per[st]),
             "mixed_groups": statistics.fmean(m for _, m in per[st])} for st in sorted(per)]


def _median(vals: list) -> float | None:
    """Median with never-reached (None) counted as worse than any number."""
    if not vals:
        return None
    ordered = sorted(vals, key=lambda v: (v is not None, v if v is not None else 0.0))
    n = len(ordered)
    mid = ordered[n // 2] if n % 2 else None
    if n % 2 == 0:
        a, b = ordered[n // 2 - 1], ordered[n // 2]
        mid = None if a is None or b is None else (a + b) / 2
    return mid


def _claim(run_dir: Path) -> bool:
    """Create ``run_dir/.lock`` holding this pid; False while another live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            lock.unlink(missing_ok=True)  # its process died: the run resumes here
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_compare(cfg: RunConfig, selectors: Sequence[str], seeds: Sequence[int], out: str | Path,
                on_run: Callable[[str, int, dict | None], None] | None = None,
                on_event: Callable[[dict], None] | None = None, worker: bool = False) -> dict | None:
    """Run (or resume) every selector × seed with ``cfg`` and write ``out/results.json`` and ``out/report.md``.

    ``worker=True``: only run the runs no other process has claimed, then return None without waiting for the
    others or writing the results (a helper process beside the one that reports)."""
    from cropi.evaluation.report import machine_description
    from cropi.selection import make_selector
    from cropi.tasks.loading import load_data
    from cropi.training.run import run_training

    out = Path(out)
    for name in selectors:
        make_selector(parse_selector(name)[0])
    order = ["full"] + [s for s in selectors if s != "full"]
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", dump_config(cfg))
    summaries: dict[str, dict[int, dict]] = {}
    items: dict[str, dict[int, dict]] = {}
    def config_for(name: str, seed: int) -> RunConfig:
        c = copy.deepcopy(cfg)
        base, settings = parse_selector(name)
        c.train.selector, c.train.seed = base, seed
        for key, value in settings.items():
            setattr(c.select, key, value)
        c.select.stores = str(out / "stores")
        return c

    # Several `cropi compare` processes may share one folder (e.g. one per core): each run is claimed with a
    # lock file, runs claimed elsewhere are deferred, and every process ends with the whole result.
    pending = [(name, seed) for name in order for seed in seeds]
    while pending:
        deferred = []
        for name, seed in pending:
            run_dir = out / "runs" / f"{name}-s{seed}"
            if not (run_dir / "summary.json").exists():
                if not _claim(run_dir):
                    deferred.append((name, seed))
                    continue
                try:
                    if not (run_dir / "summary.json").exists():
                        if on_run:
                            on_run(name, seed, None)
                        run_training(config_for(name, seed), run_dir, resume=(run_dir / "config.yaml").exists(),
                                     on_event=on_event)
                finally:
                    (run_dir / ".lock").unlink(missing_ok=True)
            summary = read_json(run_dir / "summary.json")
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
    suite = load_data(cfg.data)
    eval_sets = suite.test if cfg.eval.split == "test" else suite.validation
    targeted_ids = {f: [p.id for p in eval_sets[f]] for f in suite.targeted}
    results = compute_results(summaries, machine_description(), cfg.train.steps, items, targeted_ids)
    for name, runs in summaries.items():
        for seed in runs:
            metrics = out / "runs" / f"{name}-s{seed}" / "metrics.jsonl"
            if metrics.exists():
                results["selectors"][name]["seeds"][str(seed)]["training_signal"] = training_signal(
                    metrics, config_for(name, seed).select.stages, cfg.train.steps)
    results["stages"] = cfg.select.stages
    results["select_ratio"] = cfg.select.ratio
    results["eval_split"] = cfg.eval.split  # "validation" when settings are being chosen
    results["test_n_targeted"] = sum(len(v) for v in targeted_ids.values())
    write_json(out / "results.json", results)
    write_report(results, out)
    return results


def _fmt(x, pct=False, digits=2):
    if x is None:
        return "never"
    return f"{100 * x:.1f}" if pct else f"{x:.{digits}f}"


def _x(factor) -> str:
    return "never" if factor is None else f"{factor:.2f}×"


def plot_comparison(results: dict, out: Path) -> list[str]:
    """Accuracy vs steps and vs seconds, targeted and untargeted: seed mean (line) and min-max (band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for xkey, fname in (("step", "accuracy_vs_steps.png"), ("seconds", "accuracy_vs_seconds.png")):
        fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.2))
        for ax, key in zip(axes, ("targeted", "untargeted")):
            if len(results["selectors"]) > 10:  # the default cycle repeats after 10 colours
                ax.set_prop_cycle(color=plt.cm.tab20.colors)
            for sel, block in results["selectors"].items():
                curves = [r["curve"] for r in block["seeds"].values()]
                n = min(len(c) for c in curves)
                xs = [statistics.fmean(c[i][xkey] for c in curves) for i in range(n)]
                vals = [[c[i][key] for c in curves] for i in range(n)]
                if any(v is None for row in vals for v in row):
                    continue
                ax.plot(xs, [100 * statistics.fmean(v) for v in vals], label=sel, lw=1.6)
                ax.fill_between(xs, [100 * min(v) for v in vals], [100 * max(v) for v in vals], alpha=0.15)
            if key == "targeted":
                ax.axhline(100 * results["threshold_targeted"], color="k", ls=":", lw=1, label="full-data best")
            ax.set_title(f"{key} {results.get('eval_split', 'test')} accuracy")
            ax.set_xlabel("GRPO step" if xkey == "step" else "collection + scoring + training seconds")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        # one legend beside the panels: with many selectors it would hide the curves inside them
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.8, 1))
        tmp = out / f".{fname}.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(out / fname)
        names.append(fname)
    return names


TARGET_STEP_ACCELERATION = 3.0  # the paper reports 2.66x
TARGET_WALL_ACCELERATION = 2.0


def target_verdicts(results: dict) -> list[dict]:
    """The comparison's targets (issue 4) for every cropi selector, each met or not with the measured number:
    median step-level acceleration >= 3, median wall-clock acceleration >= 2, median final targeted accuracy at
    least every baseline's, and median best untargeted accuracy not below full data's."""
    sel = results["selectors"]
    baselines = [n for n in sel if not n.startswith("cropi")]
    out = []
    for name in [n for n in sel if n.startswith("cropi")]:
        m = sel[name]["median"]
        reach = sum(r["steps_to_threshold"] is not None for r in sel[name]["seeds"].values())
        for key, goal, label in (("step_acceleration", TARGET_STEP_ACCELERATION, "step-level acceleration"),
                                 ("wall_acceleration", TARGET_WALL_ACCELERATION, "wall-clock acceleration")):
            v = m[key]
            out.append({"selector": name, "target": f"{label} >= {goal:.1f}x (median over seeds)",
                        "met": v is not None and v >= goal,
                        "measured": (f"{v:.2f}x" if v is not None else "never reached the threshold (median)")
                        + f"; {reach}/{len(sel[name]['seeds'])} seeds reached it"})
        finals = {b: sel[b]["median"]["final_targeted"] for b in baselines}
        best_other = max(finals, key=finals.get) if finals else None
        mine = m["final_targeted"]
        out.append({"selector": name, "target": "final targeted >= every baseline's (median)",
                    "met": best_other is None or mine >= finals[best_other],
                    "measured": f"{100 * mine:.1f}% vs " + ", ".join(f"{b} {100 * v:.1f}%" for b, v in finals.items())})
        unt, full_unt = m["best_untargeted"], sel["full"]["median"]["best_untargeted"] if "full" in sel else None
        if unt is not None and full_unt is not None:
            out.append({"selector": name, "target": "best untargeted not below full data (median)",
                        "met": unt >= full_unt, "measured": f"{100 * unt:.1f}% vs full {100 * full_unt:.1f}%"})
    return out


def _signal_lines(results: dict) -> list[str]:
    """Per stage (seed means): the trained batches' reward and mixed-group share, and the targeted accuracy at
    the stage's end, so one can see whether what a selector trains on is learned and whether that carries over."""
    rows = []
    for name, block in results["selectors"].items():
        runs = [r for r in block["seeds"].values() if r.get("training_signal")]
        if not runs:
            continue
        cells = []
        for st in range(min(len(r["training_signal"]) for r in runs)):
            sig = [r["training_signal"][st] for r in runs]
            end = sig[0].get("end_step")
            acc = [next((c["targeted"] for c in r["curve"] if end is not None and c["step"] >= end), None) for r in runs]
            acc_txt = f"{100 * statistics.fmean(acc):.1f} @ {end}" if None not in acc else "—"
            cells.append(f"{statistics.fmean(x['reward_mean'] for x in sig):.2f} / "
                         f"{statistics.fmean(x['mixed_groups'] for x in sig):.2f} / {acc_txt}")
        rows.append((name, cells))
    if not rows:
        return []
    n = max(len(cells) for _, cells in rows)
    lines = ["", "## What each stage trained on", "",
             "Per stage, seed means: the reward of the trained batches / the share of their groups with mixed "
             "rewards (the ones with a gradient) / targeted accuracy (%) @ the step that ends the stage (the first "
             "evaluation at or after it). A reward that rises while the accuracy stays flat means the chosen prompts "
             "are being learned without carrying over.", "",
             "| selector | " + " | ".join(f"stage {s}" for s in range(n)) + " |",
             "| --- | " + " | ".join("---:" for _ in range(n)) + " |"]
    lines += [f"| {name} | " + " | ".join(cells + [""] * (n - len(cells))) + " |" for name, cells in rows]
    return lines


def write_report(results: dict, out: Path) -> None:
    out = Path(out)
    plots = plot_comparison(results, out)
    sel = results["selectors"]
    lines = [
        "# cropi compare",
        "",
        f"- machine: {results['machine']}",
        f"- budget: {results['budget_steps']} GRPO steps per run; {results.get('stages', '?')} stages; "
        f"selection ratio {results.get('select_ratio', '?')}; targeted {results.get('eval_split', 'test')} n = {results.get('test_n_targeted', '?')}",
        f"- threshold (best of the seed-mean full-data targeted curve, smoothed over {SMOOTH} evaluations): "
        f"{_fmt(results['threshold_targeted'], pct=True)}%, reached by full data at step "
        f"{_fmt(results['full_steps_to_threshold'], digits=0)} / {_fmt(results['full_seconds_to_threshold'], digits=0)} s",
        "",
    ]
    verdicts = target_verdicts(results)
    if verdicts:
        lines += ["## Targets", "", "| selector | target | verdict | measured |", "| --- | --- | --- | --- |"]
        lines += [f"| {v['selector']} | {v['target']} | {'met' if v['met'] else '**NOT met**'} | {v['measured']} |"
                  for v in verdicts]
        lines += [""]
    lines += [
        "| selector | step accel. (median) | wall accel. (median) | final targeted | best targeted | best untargeted | seeds reaching |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, block in sel.items():
        m = block["median"]
        reach = sum(r["steps_to_threshold"] is not None for r in block["seeds"].values())
        lines.append(f"| {name} | {_x(m['step_acceleration'])} | {_x(m['wall_acceleration'])} | "
                     f"{_fmt(m['final_targeted'], pct=True)} | {_fmt(m['best_targeted'], pct=True)} | "
                     f"{_fmt(m['best_untargeted'], pct=True)} | {reach}/{len(block['seeds'])} |")
    lines += ["", "Per seed:", "", "| selector | seed | steps to threshold | seconds to threshold | final targeted | "
              "collect s | score s | train s | paired SE vs full (pts) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, block in sel.items():
        for seed, r in block["seeds"].items():
            se = r.get("paired_se_vs_full")
            lines.append(f"| {name} | {seed} | {_fmt(r['steps_to_threshold'], digits=0)} | "
                         f"{_fmt(r['seconds_to_threshold'], digits=0)} | {_fmt(r['final_targeted'], pct=True)} | "
                         f"{r['collect_seconds']:.0f} | {r['score_seconds']:.0f} | {r['train_seconds']:.0f} | "
                         f"{'' if se is None else f'{100 * se:.2f}'} |")
    partial = results.get("partial_gain")
    if partial:
        fr = list(partial)
        lines += ["", "Step-level acceleration (median over seeds) to fractions of the full-data gain — the level "
                  "start + f × (threshold − start), each run's smoothed curve against the seed-mean full-data one:", "",
                  "| selector | " + " | ".join(f"f = {f} ({100 * partial[f]['level']:.1f}%)" for f in fr) + " |",
                  "| --- | " + " | ".join("---:" for _ in fr) + " |"]
        for name in sel:
            lines.append(f"| {name} | " + " | ".join(_x(partial[f]["selectors"][name]["median_step_acceleration"])
                                                     for f in fr) + " |")
    lines += _signal_lines(results)
    variants = [n for n in sel if n.startswith("cropi")] if results.get("full_seconds_to_threshold") else []
    if variants:
        lines += ["", "## Break-even"]
    for name in variants:
        rows = list(sel[name]["seeds"].values())
        overhead = statistics.fmean(r["collect_seconds"] + r["score_seconds"] for r in rows)
        lines += ["",
                  f"{name} pays {statistics.fmean(r['collect_seconds'] for r in rows):.0f} s of collection and "
                  f"{statistics.fmean(r['score_seconds'] for r in rows):.0f} s of scoring (all stages) per run, "
                  f"{overhead:.0f} s in all. Full data needs {results['full_seconds_to_threshold']:.0f} s of training "
                  f"to reach the threshold; {name} saves wall-clock only if its training seconds to the threshold are "
                  f"below {results['full_seconds_to_threshold'] - overhead:.0f} s."]
        reached = [r for r in rows if r["seconds_to_threshold"] is not None]
        if reached:
            lines.append(f"Measured: {name} reached the threshold after {statistics.fmean(r['seconds_to_threshold'] for r in reached):.0f} s "
                         f"in all (mean over {len(reached)} seed(s) that reached it).")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    write_text(out / "report.md", "\n".join(lines))
