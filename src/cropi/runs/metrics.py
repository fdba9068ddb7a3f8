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
- A contended run (``contended``: its mean 1-minute load at the evaluations above its machine's cores + 0.5, so
  more processes than cores shared them) has inflated seconds: it gets no wall-clock acceleration, and a
  contended full-data run is no machine's seconds reference.
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


def host_of(summary: dict) -> str:
    """The machine a run's seconds were measured on (``report.host_id``); "unrecorded" for older summaries."""
    return summary.get("host") or "unrecorded"


CONTENTION_MARGIN = 0.5  # load above cores + this: more runnable processes than cores, not scheduling noise


def cores_of(machine: str | None) -> int | None:
    """The core count in a machine description (``report.machine_description``: "CPU, N cores, ...")."""
    for part in (machine or "").split(","):
        words = part.split()
        if len(words) == 2 and words[1] == "cores" and words[0].isdigit():
            return int(words[0])
    return None


def contended(summary: dict) -> bool:
    """Whether a run shared its cores with more processes than there were cores: its mean 1-minute load at the
    evaluations exceeds the cores + ``CONTENTION_MARGIN``.  Its seconds are then not comparable; False where
    the load or the cores were not recorded.  The load counts the whole machine's processes, so it is set
    against the machine's CPUs where the run recorded them; a run pinned to fewer cores (``taskset``) records
    only those in its machine description, which older runs fall back to."""
    if "contended" in summary:  # a results.json row or reference entry: decided when it was computed
        return bool(summary["contended"])
    loads = summary.get("load_1min_at_evals") or {}
    load, cores = loads.get("mean"), loads.get("cores") or cores_of(summary.get("machine"))
    return load is not None and cores is not None and load > cores + CONTENTION_MARGIN


def seconds_at_step(curve: Sequence[dict], step: float | None) -> float | None:
    """A run's seconds at ``step``, linear between evaluations; None past its last one."""
    if step is None:
        return None
    for a, b in zip(curve, curve[1:]):
        if a["step"] <= step <= b["step"]:
            f = (step - a["step"]) / (b["step"] - a["step"]) if b["step"] != a["step"] else 0.0
            return a["seconds"] + f * (b["seconds"] - a["seconds"])
    return float(curve[0]["seconds"]) if curve and curve[0]["step"] == step else None


def full_seconds_by_host(full_runs: Sequence[dict], step: float | None) -> dict[str, float]:
    """Full data's seconds to ``step`` on each machine: the mean over the uncontended full-data runs measured
    there.  Seconds are compared only on one machine, so a run's wall-clock acceleration divides by its own
    host's."""
    by: dict[str, list[float]] = {}
    for s in full_runs:
        sec = None if contended(s) else seconds_at_step(s["curve"], step)
        if sec is not None:
            by.setdefault(host_of(s), []).append(sec)
    return {h: statistics.fmean(v) for h, v in by.items()}


def compute_results(summaries: dict[str, dict[int, dict]], machine: str, budget_steps: int,
                    items: dict[str, dict[int, dict]] | None = None,
                    targeted_ids: dict[str, list[str]] | None = None,
                    references: Sequence[dict] = ()) -> dict:
    """results.json from run summaries ``{selector: {seed: summary}}`` (``full`` must be present).

    ``references``: extra full-data runs (summaries), each repeating a seed of full data on a machine whose own
    full-data runs are missing or contended; they give that machine's full-data seconds and enter nothing else."""
    if "full" not in summaries or not summaries["full"]:
        raise ConfigError("a comparison needs the full-data selector (it defines the threshold)")
    full_curves = [s["curve"] for s in summaries["full"].values()]
    steps, mean_t, _ = mean_curve(full_curves, "targeted")
    sm = smooth(mean_t)
    threshold = max(sm)
    s_full = first_crossing(steps, sm, threshold)
    # seconds from the uncontended runs only, read at the seed-mean curve's evaluation steps
    clean = [s["curve"] for s in summaries["full"].values() if not contended(s)]
    clean_sec = dict(zip(*mean_curve(clean, "targeted")[::2])) if clean else {}
    w_full = (first_crossing([clean_sec[x] for x in steps], sm, threshold)
              if all(x in clean_sec for x in steps) and clean else None)
    w_full_on = full_seconds_by_host([*summaries["full"].values(), *references], s_full)
    out = {"schema_version": SCHEMA_VERSION, "machine": machine, "budget_steps": budget_steps,
           "threshold_targeted": threshold, "full_steps_to_threshold": s_full, "full_seconds_to_threshold": w_full,
           "selectors": {}}
    for name, runs in summaries.items():
        seeds = {}
        for seed, s in sorted(runs.items()):
            curve = s["curve"]
            xs, secs = [c["step"] for c in curve], [c["seconds"] for c in curve]
            ys = smooth([c["targeted"] for c in curve])
            s_run = first_crossing(xs, ys, threshold)
            w_run = first_crossing(secs, ys, threshold)
            step_acc, step_bound = acceleration(s_full, s_run, _first_interval(xs))
            host, crowded = host_of(s), contended(s)
            wall_acc, wall_bound = acceleration(None if crowded else w_full_on.get(host), w_run,
                                                _first_interval(secs))
            tgt = [c["targeted"] for c in curve]
            unt = [c["untargeted"] for c in curve if c.get("untargeted") is not None]
            row = {
                "step_acceleration": step_acc,
                "step_acceleration_is_lower_bound": step_bound,
                "wall_acceleration": wall_acc,
                "wall_acceleration_is_lower_bound": wall_bound,
                "steps_to_threshold": s_run,
                "seconds_to_threshold": w_run,
                "host": host,
                # False: no full-data run on this run's machine, so it has no wall-clock acceleration
                "wall_reference": host in w_full_on,
                # True: more processes than cores shared it, so its seconds are inflated and give no acceleration
                "contended": crowded,
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
                "load_1min_at_evals": s.get("load_1min_at_evals"),
                "evaluations": len(curve),
                "curve": [{"step": c["step"], "targeted": c["targeted"], "untargeted": c.get("untargeted"),
                           "seconds": c["seconds"]} for c in curve],
            }
            if items and targeted_ids and name != "full" and seed in items.get(name, {}) and seed in items.get("full", {}):
                row["paired_se_vs_full"] = paired_se(items[name][seed], items["full"][seed], targeted_ids)
            seeds[str(seed)] = row
        med = {k: median([r[k] for r in seeds.values()]) for k in (
            "step_acceleration", "final_targeted", "best_targeted", "best_untargeted")}
        # a run without an uncontended full-data run on its machine, or contended itself, has no wall-clock
        # number: left out, and counted
        walls = [r["wall_acceleration"] for r in seeds.values() if r["wall_reference"] and not r["contended"]]
        med["wall_acceleration"] = median(walls)
        out["selectors"][name] = {"seeds": seeds, "median": med,
                                  "wall_unreferenced": sum(not r["wall_reference"] for r in seeds.values()),
                                  "wall_contended": sum(r["contended"] for r in seeds.values())}
    cpus = sorted({cpu_model(s.get("machine")) for runs in summaries.values() for s in runs.values()} - {None})
    out["run_machines"] = cpus
    hosts: dict[str, dict] = {}
    for s in [*[s for runs in summaries.values() for s in runs.values()], *references]:
        h = hosts.setdefault(host_of(s), {"cpu": cpu_model(s.get("machine")), "runs": 0, "reference_runs": 0,
                                          "full_seconds_to_threshold": w_full_on.get(host_of(s))})
        h["runs"] += 1
    for s in references:
        hosts[host_of(s)]["reference_runs"] += 1
        hosts[host_of(s)]["runs"] -= 1
    out["hosts"] = hosts
    out["reference_runs"] = [{"host": host_of(s), "seed": (s.get("config") or {}).get("train", {}).get("seed"),
                              "contended": contended(s),
                              "curve": [{"step": c["step"], "targeted": c["targeted"], "seconds": c["seconds"]}
                                        for c in s["curve"]]} for s in references]
    out["partial_gain"] = partial_gain(summaries, steps, sm, mean_t[0], threshold)
    out["noise_floor"] = noise_floor(out["selectors"]["full"])
    return out


def cpu_model(machine: str | None) -> str | None:
    """The CPU part of a machine description (``report.machine_description``: "CPU, N cores, ...")."""
    return machine.split(",")[0].strip() if machine else None


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


SPREAD_KEYS = ("step_acceleration", "wall_acceleration", "final_targeted", "final_targeted_vs_full")


def draw_spread(results_by_draw: dict[str, dict]) -> dict:
    """How much a comparison's verdict moves with the draw of the pool, next to how much it moves with the
    training seed.  ``results_by_draw``: ``{draw name: results.json}``, one comparison per pool draw.

    Per selector run in every draw, and per key (step and wall-clock acceleration, final targeted accuracy):
    each draw's median over seeds; ``between_draws`` is the range (max − min) of those medians (None with fewer
    than two), and ``between_seeds`` the range of the per-seed values within each draw (and its largest).  A
    never-reached acceleration is left out of the ranges and counted in ``never``; one not measured (a wall-clock
    acceleration of a contended or unreferenced run) is left out and not counted.  ``final_targeted_vs_full``
    is a run's final targeted accuracy minus full data's seed mean in its draw: the draws differ in difficulty,
    so the absolute accuracy moves with the draw even where the verdict does not."""
    if not results_by_draw:
        raise ConfigError("draw_spread needs at least one comparison")
    common = set.intersection(*(set(r["selectors"]) for r in results_by_draw.values()))
    first = next(iter(results_by_draw.values()))
    out = {"schema_version": SCHEMA_VERSION, "draws": {}, "selectors": {}}
    for draw, r in results_by_draw.items():
        out["draws"][draw] = {"threshold_targeted": r["threshold_targeted"],
                              "full_steps_to_threshold": r["full_steps_to_threshold"],
                              "full_seconds_to_threshold": r["full_seconds_to_threshold"],
                              "noise_floor": r.get("noise_floor")}
    for name in [n for n in first["selectors"] if n in common]:
        per_key = {}
        for key in SPREAD_KEYS:
            medians, seed_ranges, never = {}, {}, 0
            for draw, r in results_by_draw.items():
                block = r["selectors"][name]
                if key == "final_targeted_vs_full":
                    full_mean = statistics.fmean(row["final_targeted"] for row in r["selectors"]["full"]["seeds"].values())
                    per_seed = [row["final_targeted"] - full_mean for row in block["seeds"].values()]
                    medians[draw] = median(per_seed)
                else:
                    per_seed = [row[key] for row in block["seeds"].values()]
                    medians[draw] = block["median"][key]
                    # "never": the run did not reach the threshold (not: its seconds were not measured)
                    if key.endswith("_acceleration"):
                        never += sum(row["steps_to_threshold"] is None for row in block["seeds"].values())
                vals = [v for v in per_seed if v is not None]
                seed_ranges[draw] = max(vals) - min(vals) if vals else None
            known = [m for m in medians.values() if m is not None]
            ranges = [s for s in seed_ranges.values() if s is not None]
            per_key[key] = {"medians": medians,
                            "between_draws": max(known) - min(known) if len(known) > 1 else None,
                            "between_seeds": seed_ranges,
                            "between_seeds_max": max(ranges) if ranges else None,
                            "never": never}
        out["selectors"][name] = per_key
    return out


def _block_means(steps: Sequence[float], values: Sequence[float], block: int) -> dict[str, float]:
    """Mean of ``values`` over each ``block``-step span (k·block, (k+1)·block], keyed by the span's end."""
    by: dict[int, list[float]] = {}
    for s, v in zip(steps, values):
        if s > 0:
            by.setdefault(int(math.ceil(s / block) * block), []).append(v)
    return {str(end): statistics.fmean(v) for end, v in sorted(by.items())}


def plateau_reading(long: dict, main: dict, block: int = 100) -> dict:
    """Has full data plateaued within the main comparison's budget, and do the verdicts hold if it has not?

    ``long``: results.json of full data alone at a longer budget (same seeds, same settings otherwise);
    ``main``: the comparison's results.json.  Returns
    - full data's seed-mean targeted accuracy per ``block`` steps and its smoothed best at the long budget
      (``threshold_long``, crossed at ``full_steps_to_threshold_long``), against the main threshold;
    - ``repeat``: per seed, the largest difference between the long run's and the main run's targeted accuracy
      at the evaluations both made within the main budget (0 when the long run repeats the main one), and the
      first evaluation step at which they differ;
    - ``selectors``: every main run re-read against ``threshold_long`` within its own budget: steps, step-level
      acceleration (full data's long crossing ÷ the run's), and a wall-clock acceleration whose full-data
      seconds are the long runs' seconds to the crossing scaled to the run's machine by the ratio of full
      data's seconds at the main budget there and in the long runs (an estimate: full data's cost per step is
      taken to differ between machines by one factor)."""
    budget = main["budget_steps"]
    long_rows = list(long["selectors"]["full"]["seeds"].values())
    steps, mean_t, mean_sec = mean_curve([r["curve"] for r in long_rows], "targeted")
    sm = smooth(mean_t)
    t_long = max(sm)
    s_long = first_crossing(steps, sm, t_long)
    secs_long = first_crossing(mean_sec, sm, t_long)
    long_at_budget = seconds_at_step([{"step": s, "seconds": v} for s, v in zip(steps, mean_sec)], budget)
    full_runs = [*main["selectors"]["full"]["seeds"].values(), *main.get("reference_runs", [])]
    # full data's seconds to the main budget on each machine, scaled by the long runs' seconds-per-step profile
    at_budget = full_seconds_by_host(full_runs, budget)
    full_on = {h: v * secs_long / long_at_budget for h, v in at_budget.items()} if long_at_budget else {}
    repeat = {}
    for seed, row in long["selectors"]["full"]["seeds"].items():
        ref = main["selectors"]["full"]["seeds"].get(seed)
        if ref:
            mine = {c["step"]: c["targeted"] for c in row["curve"] if c["step"] <= budget}
            both = [(c["step"], abs(mine[c["step"]] - c["targeted"])) for c in ref["curve"] if c["step"] in mine]
            differ = [step for step, d in both if d > 0]
            repeat[seed] = {"evaluations": len(both), "max_abs_diff": max((d for _, d in both), default=None),
                            "first_differing_step": differ[0] if differ else None}
    selectors = {}
    for name, sel in main["selectors"].items():
        seeds = {}
        for seed, row in sel["seeds"].items():
            xs, secs = [c["step"] for c in row["curve"]], [c["seconds"] for c in row["curve"]]
            ys = smooth([c["targeted"] for c in row["curve"]])
            s_run, w_run = first_crossing(xs, ys, t_long), first_crossing(secs, ys, t_long)
            step_acc, _ = acceleration(s_long, s_run, _first_interval(xs))
            ref = None if contended(row) else full_on.get(row.get("host") or "unrecorded")
            wall_acc, _ = acceleration(ref, w_run, _first_interval(secs))
            seeds[seed] = {"steps_to_threshold": s_run, "step_acceleration": step_acc, "wall_acceleration": wall_acc}
        selectors[name] = {"seeds": seeds,
                           "median": {k: median([r[k] for r in seeds.values()])
                                      for k in ("step_acceleration", "wall_acceleration")},
                           "never": sum(r["steps_to_threshold"] is None for r in seeds.values())}
    return {"schema_version": SCHEMA_VERSION, "budget_steps": budget, "long_budget_steps": long["budget_steps"],
            "block_steps": block, "long_eval_every": _first_interval(steps),
            "threshold_main": main["threshold_targeted"], "full_steps_to_threshold_main": main["full_steps_to_threshold"],
            "threshold_long": t_long, "full_steps_to_threshold_long": s_long,
            "full_mean_targeted_per_block": _block_means(steps, mean_t, block),
            "full_seed_targeted_per_block": {seed: _block_means([c["step"] for c in r["curve"]],
                                                                [c["targeted"] for c in r["curve"]], block)
                                             for seed, r in long["selectors"]["full"]["seeds"].items()},
            "repeat": repeat, "selectors": selectors}
