"""The comparison's numbers, as pure functions of run summaries and metrics rows (no files, no plots).

Definitions (as in the paper's Table 1, but measured on test splits the scores never see):
- Threshold: the best point of the seed-mean full-data *targeted* test curve after smoothing each curve over
  3 evaluations (centred moving average; the end points average the evaluations that exist).
- S(run): the first step at which the run's smoothed targeted curve reaches the threshold, interpolated
  linearly between evaluations; null if it never does within the budget.  S_full is the same crossing on
  the seed-mean full-data curve.  Step-level acceleration = S_full / S(run).
- A run already at the threshold at its first evaluation, at x = 0, has no cost to divide by.  If full data
  is there at 0 too, the two are equal (acceleration 1).  Otherwise the crossing is charged the first
  evaluation interval (it happened within it), so the acceleration is a lower bound, flagged
  ``*_acceleration_is_lower_bound``.  It is never reported as "never reached".
- Wall-clock acceleration: the same with the runs' cumulative collection + scoring + training seconds
  (evaluation excluded; collection is charged to every run that uses the behaviour stores, although the
  comparison collects them once).
- Seconds compare only within one machine under one load, so a comparison runs on one machine.
- final_targeted: mean of the last 3 evaluations.
- Noise floor: each full-data seed's own acceleration against the seed-mean full-data curve.  With several
  seeds some always come out "faster" than their mean; an acceleration below the largest of them is a tie.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from typing import Sequence

from cropi import SCHEMA_VERSION
from cropi.errors import ConfigError
from cropi.training.curriculum import recollect_seconds, stage_bounds

SMOOTH = 3
PARTIAL_GAIN_FRACTIONS = (0.5, 0.75, 0.9)


def summarize_curve(curve: list[dict]) -> dict:
    """best / final (mean of the last 3 evaluations) accuracies of an evaluation curve."""
    tgt = [c["targeted"] for c in curve if c.get("targeted") is not None]
    unt = [c["untargeted"] for c in curve if c.get("untargeted") is not None]
    return {
        "best_targeted": max(tgt) if tgt else None,
        "final_targeted": sum(tgt[-3:]) / len(tgt[-3:]) if tgt else None,
        "best_untargeted": max(unt) if unt else None,
        "final_untargeted": sum(unt[-3:]) / len(unt[-3:]) if unt else None,
    }


def smooth(values: Sequence[float], window: int = SMOOTH) -> list[float]:
    """Centred moving average over ``window`` evaluations (shorter at the ends)."""
    h = window // 2
    return [sum(values[max(0, i - h): i + h + 1]) / len(values[max(0, i - h): i + h + 1]) for i in range(len(values))]


def first_crossing(xs: Sequence[float], ys: Sequence[float], threshold: float) -> float | None:
    """The first x at which the piecewise-linear curve (xs, ys) reaches ``threshold``; None if never.
    A curve already there at its first point crosses at ``xs[0]`` (0.0 for steps: a real value, not "never")."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= threshold - 1e-12:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (threshold - y0) / (y - y0) * (x - x0))
    return None


def acceleration(reference: float | None, run: float | None, first_interval: float | None) -> tuple[float | None, bool]:
    """(reference / run, whether that is a lower bound); None when either curve never reaches the level.

    ``run == 0`` (at the level from its first evaluation, at x = 0): 1.0 when ``reference`` is 0 as well,
    else ``reference / first_interval`` as a lower bound; None when there is no interval (one evaluation)."""
    if reference is None or run is None:
        return None, False
    if run != 0:
        return reference / run, False
    if reference == 0:
        return 1.0, False
    if not first_interval:
        return None, False
    return reference / first_interval, True


def _first_interval(xs: Sequence[float]) -> float | None:
    return xs[1] - xs[0] if len(xs) > 1 else None


def mean_curve(curves: list[list[dict]], key: str) -> tuple[list[float], list[float], list[float]]:
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


def median(vals: list) -> float | None:
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


def seconds_at_step(curve: Sequence[dict], step: float | None) -> float | None:
    """A run's seconds at ``step``, linear between evaluations; None past its last one."""
    if step is None:
        return None
    for a, b in zip(curve, curve[1:]):
        if a["step"] <= step <= b["step"]:
            f = (step - a["step"]) / (b["step"] - a["step"]) if b["step"] != a["step"] else 0.0
            return a["seconds"] + f * (b["seconds"] - a["seconds"])
    return float(curve[0]["seconds"]) if curve and curve[0]["step"] == step else None


def compute_results(summaries: dict[str, dict[int, dict]], budget_steps: int,
                    items: dict[str, dict[int, dict]] | None = None,
                    targeted_ids: dict[str, list[str]] | None = None) -> dict:
    """results.json from run summaries ``{selector: {seed: summary}}`` (``full`` must be present), all measured on
    one machine."""
    if "full" not in summaries or not summaries["full"]:
        raise ConfigError("a comparison needs the full-data selector (it defines the threshold)")
    full_curves = [s["curve"] for s in summaries["full"].values()]
    steps, mean_t, mean_sec = mean_curve(full_curves, "targeted")
    sm = smooth(mean_t)
    threshold = max(sm)
    s_full = first_crossing(steps, sm, threshold)
    w_full = first_crossing(mean_sec, sm, threshold)
    out = {"schema_version": SCHEMA_VERSION, "budget_steps": budget_steps, "threshold_targeted": threshold,
           "full_steps_to_threshold": s_full, "full_seconds_to_threshold": w_full, "selectors": {}}
    for name, runs in summaries.items():
        seeds = {}
        for seed, s in sorted(runs.items()):
            curve = s["curve"]
            xs, secs = [c["step"] for c in curve], [c["seconds"] for c in curve]
            ys = smooth([c["targeted"] for c in curve])
            s_run = first_crossing(xs, ys, threshold)
            w_run = first_crossing(secs, ys, threshold)
            step_acc, step_bound = acceleration(s_full, s_run, _first_interval(xs))
            wall_acc, wall_bound = acceleration(w_full, w_run, _first_interval(secs))
            tgt = [c["targeted"] for c in curve]
            unt = [c["untargeted"] for c in curve if c.get("untargeted") is not None]
            row = {
                "step_acceleration": step_acc,
                "step_acceleration_is_lower_bound": step_bound,
                "wall_acceleration": wall_acc,
                "wall_acceleration_is_lower_bound": wall_bound,
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
                "train_seconds": s.get("train_seconds") or 0.0,
                "seconds_by_kind": s.get("seconds_by_kind"),
                "sampled_sequences": s.get("sampled_sequences"),
                "evaluations": len(curve),
                "curve": [{"step": c["step"], "targeted": c["targeted"], "untargeted": c.get("untargeted"),
                           "seconds": c["seconds"]} for c in curve],
            }
            if items and targeted_ids and name != "full" and seed in items.get(name, {}) and seed in items.get("full", {}):
                row["paired_se_vs_full"] = paired_se(items[name][seed], items["full"][seed], targeted_ids)
            seeds[str(seed)] = row
        med = {k: median([r[k] for r in seeds.values()]) for k in (
            "step_acceleration", "wall_acceleration", "final_targeted", "best_targeted", "best_untargeted")}
        out["selectors"][name] = {"seeds": seeds, "median": med}
    out["partial_gain"] = partial_gain(summaries, steps, sm, mean_t[0], threshold)
    out["noise_floor"] = noise_floor(out["selectors"]["full"])
    return out


def noise_floor(full: dict) -> dict:
    """How far full data's own seeds stray from their seed mean: each seed's acceleration against the seed-mean
    curve.  An acceleration inside this spread (below its largest value) is a tie with full data."""
    out = {}
    for key in ("step_acceleration", "wall_acceleration"):
        vals = [r[key] for r in full["seeds"].values() if r[key] is not None]
        out[key] = {"median": median(vals) if vals else None, "max": max(vals) if vals else None,
                    "seeds": [r[key] for r in full["seeds"].values()]}
    return out


def partial_gain(summaries: dict, steps: list[float], full_smoothed: list[float], start: float,
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
            vals, bounds = [], []
            for s in runs.values():
                xs = [c["step"] for c in s["curve"]]
                s_run = first_crossing(xs, smooth([c["targeted"] for c in s["curve"]]), level)
                value, is_bound = acceleration(s_full, s_run, _first_interval(xs))
                vals.append(value)
                bounds.append(is_bound)
            per[name] = {"median_step_acceleration": median(vals), "seeds": vals, "seeds_lower_bound": bounds}
        out[str(f)] = {"level": level, "full_steps": s_full, "selectors": per}
    return out


def training_signal(rows: Sequence[dict], stages: int, steps: int) -> list[dict]:
    """Per stage (the run's own stage bounds), the means over its GRPO steps of the batch's reward and of the
    share of its groups with mixed rewards (the groups that give a gradient), from a run's ``metrics.jsonl``
    rows; ``end_step`` is the step count at the stage's end.  A subset that is being learned without the test
    accuracy moving shows as a rising reward: the policy memorises the chosen prompts."""
    bounds = stage_bounds(steps, stages)
    per: dict[int, list[tuple[float, float]]] = {}
    for rec in rows:
        if rec.get("event") == "step":  # logged step t is the t-th update, global step index t - 1
            stage = min(stages - 1, bisect_right(bounds, int(rec["step"]) - 1) - 1)
            per.setdefault(stage, []).append((float(rec["reward_mean"]), float(rec["mixed_groups"])))
    return [{"stage": st, "end_step": bounds[st + 1], "reward_mean": statistics.fmean(r for r, _ in per[st]),
             "mixed_groups": statistics.fmean(m for _, m in per[st])} for st in sorted(per)]


