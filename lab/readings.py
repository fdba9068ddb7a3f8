"""The lab's readings of comparisons made across machines and budgets: which machine each run's seconds were
measured on, whether its cores were shared (contention), results that divide each run's seconds by full data's on
its own machine, the spread between pool draws, and plateau readings at longer budgets.  The package measures one
machine at a time (``cropi.runs.metrics``); these read the lab's kept run records and summaries."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from cropi import SCHEMA_VERSION
from cropi.errors import ConfigError
from cropi.runs.metrics import (_first_interval, acceleration, compute_results, first_crossing, mean_curve, median,
                                noise_floor, seconds_at_step, smooth)
from pathlib import Path

from cropi.io import read_json, write_json, write_text
from cropi.runs.report import _fmt, _tie_note, _x

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


def compute_results_across_machines(summaries: dict[str, dict[int, dict]], machine: str, budget_steps: int,
                                    items: dict[str, dict[int, dict]] | None = None,
                                    targeted_ids: dict[str, list[str]] | None = None,
                                    references: Sequence[dict] = ()) -> dict:
    """The package's results (``cropi.runs.metrics.compute_results``: threshold, steps, accuracies), with each
    run's wall-clock acceleration against full data's seconds *on its own machine* from uncontended runs.

    ``references``: extra full-data runs (summaries), each repeating a seed of full data on a machine whose own
    full-data runs are missing or contended; they give that machine's full-data seconds and enter nothing else."""
    out = compute_results(summaries, budget_steps, items, targeted_ids)
    out["machine"] = machine
    steps, mean_t, _ = mean_curve([s["curve"] for s in summaries["full"].values()], "targeted")
    sm, threshold, s_full = smooth(mean_t), out["threshold_targeted"], out["full_steps_to_threshold"]
    # seconds from the uncontended runs only, read at the seed-mean curve's evaluation steps
    clean = [s["curve"] for s in summaries["full"].values() if not contended(s)]
    clean_sec = dict(zip(*mean_curve(clean, "targeted")[::2])) if clean else {}
    out["full_seconds_to_threshold"] = (first_crossing([clean_sec[x] for x in steps], sm, threshold)
                                        if all(x in clean_sec for x in steps) and clean else None)
    w_full_on = full_seconds_by_host([*summaries["full"].values(), *references], s_full)
    for name, runs in summaries.items():
        block = out["selectors"][name]
        for seed, s in runs.items():
            row = block["seeds"][str(seed)]
            host, crowded = host_of(s), contended(s)
            secs = [c["seconds"] for c in s["curve"]]
            row["wall_acceleration"], row["wall_acceleration_is_lower_bound"] = acceleration(
                None if crowded else w_full_on.get(host), row["seconds_to_threshold"], _first_interval(secs))
            # wall_reference False: no full-data run on this run's machine; contended: its seconds are inflated
            row.update(host=host, wall_reference=host in w_full_on, contended=crowded,
                       load_1min_at_evals=s.get("load_1min_at_evals"))
        walls = [r["wall_acceleration"] for r in block["seeds"].values() if r["wall_reference"] and not r["contended"]]
        block["median"]["wall_acceleration"] = median(walls)
        block["wall_unreferenced"] = sum(not r["wall_reference"] for r in block["seeds"].values())
        block["wall_contended"] = sum(r["contended"] for r in block["seeds"].values())
    out["run_machines"] = sorted({cpu_model(s.get("machine")) for runs in summaries.values()
                                 for s in runs.values()} - {None})
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
    out["noise_floor"] = noise_floor(out["selectors"]["full"])
    return out


def cpu_model(machine: str | None) -> str | None:
    """The CPU part of a machine description (``report.machine_description``: "CPU, N cores, ...")."""
    return machine.split(",")[0].strip() if machine else None


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


def _threshold_table(label: str, comparisons: dict[str, dict]) -> list[str]:
    """Markdown rows: per comparison, full data's threshold, its steps and seconds to it, and the noise floor."""
    lines = [f"| {label} | threshold (targeted) | full data: steps / s to it | noise floor, steps (median / max) | "
             "noise floor, wall-clock (median / max) |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, info in comparisons.items():
        floor = info.get("noise_floor") or {}
        step, wall = floor.get("step_acceleration") or {}, floor.get("wall_acceleration") or {}
        lines.append(f"| {name} | {_fmt(info['threshold_targeted'], pct=True)}% | "
                     f"{_fmt(info['full_steps_to_threshold'], digits=0)} / "
                     f"{_fmt(info['full_seconds_to_threshold'], digits=0)} | {_x(step.get('median'))} / "
                     f"{_x(step.get('max'))} | {_x(wall.get('median'))} / {_x(wall.get('max'))} |")
    return lines


def write_draws_report(spread: dict, out: Path, name: str = "draws") -> None:
    """``out/NAME.json`` and ``out/NAME.md``: the spread between pool draws next to the spread between seeds
    (``draw_spread``), for every selector that was run on every draw."""
    out = Path(out)
    write_json(out / f"{name}.json", spread)
    draws = list(spread["draws"])
    lines = ["# cropi compare: pool draws", "",
             "The same comparison on several draws of the pool. For each selector: the median over seeds in each "
             "draw, the spread *between draws* (largest minus smallest of those medians), and the spread *between "
             "seeds* (largest minus smallest seed within a draw; the largest over the draws). A verdict that moves "
             "more between draws than between seeds depends on the pool, not only on the seed. An acceleration "
             "marked (tie) is inside that draw's noise floor: full data's own seeds against their mean.", "",
             *_threshold_table("draw", spread["draws"])]
    labels = {"step_acceleration": "step accel.", "wall_acceleration": "wall accel.", "final_targeted": "final targeted",
              "final_targeted_vs_full": "final targeted minus full data's (its seed mean in the same draw)"}

    def cell(key: str, v, draw: str) -> str:
        if key == "final_targeted_vs_full":
            return "—" if v is None else f"{100 * v:+.1f} pts"
        if key == "final_targeted":
            return "—" if v is None else f"{100 * v:.1f}%"
        return _x(v) + (" (tie)" if _tie_note(spread["draws"][draw], key, v) else "")

    def spread_cell(key: str, v) -> str:
        if v is None:
            return "—"
        return f"{100 * v:.1f} pts" if key.startswith("final_targeted") else f"{v:.2f}"

    for key, label in labels.items():
        lines += ["", f"## {label}", "",
                  "| selector | " + " | ".join(draws) + " | between draws | between seeds (largest) | seeds never |",
                  "| --- | " + " | ".join("---:" for _ in draws) + " | ---: | ---: | ---: |"]
        for selector, per in spread["selectors"].items():
            s = per[key]
            lines.append(f"| {selector} | " + " | ".join(cell(key, s["medians"][d], d) for d in draws)
                         + f" | {spread_cell(key, s['between_draws'])} | {spread_cell(key, s['between_seeds_max'])} "
                         f"| {s['never']} |")
    write_text(out / f"{name}.md", "\n".join(lines) + "\n")


# -- run folders of comparisons resumed across machines: full-sSEED@HOST reference runs --------------------------
def parse_host_run_name(name: str) -> tuple[str, int, str | None]:
    """``"cropi-s2"`` -> ``("cropi", 2, None)``; ``"full-s0@f703f209"`` -> ``("full", 0, "f703f209")``.
    ValueError for a name of another form."""
    base, _, host = name.partition("@")
    selector, seed = base.rsplit("-s", 1)
    return selector, int(seed), host or None


def stamped_summary(path: Path) -> dict:
    """A run's summary with the machine the lab recorded beside it, where it did (``host.json``, written by
    ``lab/scripts/stamp_host.py``): the package records no machine, and seconds compare only on one."""
    summary = read_json(path)
    stamp = path.parent / "host.json"
    return {**summary, **read_json(stamp)} if stamp.is_file() else summary


def reference_summaries(runs: Path) -> list[dict]:
    """The summaries of a comparison's finished reference runs of full data (``runs/full-sSEED@HOST``), every
    machine's.  A repeat renamed ``contended-*`` by hand is not one: its seconds are inflated."""
    return [stamped_summary(p) for p in sorted(runs.glob("full-s*@*/summary.json"))]


def finished_summaries(runs: Path) -> dict[str, dict[int, dict]]:
    """``{selector: {seed: summary}}`` of a comparison's finished runs (those with a summary.json), read from its
    files only, so also while runs are going.  Reference runs and ``contended-*`` repeats are left out."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(runs.glob("*/summary.json")):
        name = path.parent.name
        if name.startswith("contended"):
            continue
        try:
            selector, seed, host = parse_host_run_name(name)
        except ValueError:
            continue  # not a run's folder
        if host is None:
            out.setdefault(selector, {})[seed] = stamped_summary(path)
    return {selector: dict(sorted(by_seed.items())) for selector, by_seed in out.items()}


def read_runs_across_machines(runs: Path, budget_steps: int) -> dict:
    """``compute_results_across_machines`` on a comparison's finished runs (its ``runs/`` folder), with
    its ``full-sSEED@HOST`` reference runs.  The top-level machine is the full-data runs'."""
    summaries = finished_summaries(runs)
    machine = next(iter(summaries["full"].values())).get("machine", "unrecorded")
    return compute_results_across_machines(summaries, machine, budget_steps, references=reference_summaries(runs))


# -- the pool scenarios side by side ------------------------------------------------------------------------------
SCENARIO_KEYS = ("step_acceleration", "wall_acceleration", "final_targeted", "best_untargeted")
PEERS = ("online_filter", "greso", "dapo", "online_influence")


def scenario_table(results_by_scenario: dict[str, dict], method: str = "cropi_harvest",
                   selectors: Sequence[str] | None = None) -> dict:
    """The comparisons of several pool scenarios side by side: ``{scenario: results.json}`` (the first is the
    reference scenario, ``clean``).  Per selector and scenario, the medians over seeds of ``SCENARIO_KEYS`` and
    how many seeds never reached full data's best; a selector not run in a scenario is None there.  ``targets``
    judges ``method`` against the peers it was run beside: in each other scenario, whether it beats every peer
    both in wall-clock acceleration and in final targeted accuracy (a peer that never reached the threshold is
    beaten in wall-clock by one that did); in the reference, its wall-clock acceleration over the best peer's."""
    if not results_by_scenario:
        raise ConfigError("scenario_table needs at least one comparison")
    names = list(dict.fromkeys(n for r in results_by_scenario.values() for n in r["selectors"]))
    names = [n for n in selectors if n in names] if selectors else names  # ``selectors``: these, in this order
    out = {"schema_version": SCHEMA_VERSION, "method": method, "scenarios": {}, "selectors": {}, "targets": {}}
    for sc, r in results_by_scenario.items():
        out["scenarios"][sc] = {"threshold_targeted": r["threshold_targeted"],
                                "full_steps_to_threshold": r["full_steps_to_threshold"],
                                "full_seconds_to_threshold": r["full_seconds_to_threshold"],
                                "noise_floor": r.get("noise_floor")}
    for name in names:
        out["selectors"][name] = {}
        for sc, r in results_by_scenario.items():
            block = r["selectors"].get(name)
            if block is None:
                out["selectors"][name][sc] = None
                continue
            rows = block["seeds"].values()
            out["selectors"][name][sc] = {**{k: block["median"][k] for k in SCENARIO_KEYS},
                                          "seeds": len(block["seeds"]),
                                          "never": sum(row["steps_to_threshold"] is None for row in rows)}
    reference = next(iter(results_by_scenario))
    for sc in results_by_scenario:
        mine = out["selectors"].get(method, {}).get(sc)
        peers = {p: out["selectors"][p][sc] for p in PEERS if p in out["selectors"] and out["selectors"][p][sc]}
        if mine is None or not peers:
            continue
        wall = {p: v["wall_acceleration"] or 0.0 for p, v in peers.items()}  # never / unmeasured: beaten
        best = max(wall, key=wall.get)
        if sc == reference:
            out["targets"][sc] = {"best_peer": best, "wall_ratio_to_best_peer":
                                  (mine["wall_acceleration"] or 0.0) / wall[best] if wall[best] else None}
        else:
            beats_wall = all((mine["wall_acceleration"] or 0.0) > w for w in wall.values())
            beats_final = all(mine["final_targeted"] > v["final_targeted"] for v in peers.values())
            out["targets"][sc] = {"beats_every_peer_in_wall": beats_wall, "beats_every_peer_in_final": beats_final,
                                  "peers": sorted(peers)}
    return out


def write_scenario_table(table: dict, out: Path) -> None:
    """``OUT.json`` and ``OUT.md``: ``scenario_table``'s medians, one column per scenario."""
    out = Path(out)
    write_json(out.with_suffix(".json"), table)
    scenarios = list(table["scenarios"])
    lines = ["# The pool scenarios side by side", "",
             "Each scenario is its own 600-step comparison (3 seeds); every cell is the median over seeds, "
             "\"never\" when full data's best was not reached, \"—\" where the selector was not run.", "",
             *_threshold_table("scenario", table["scenarios"])]
    labels = {"step_acceleration": "step accel.", "wall_acceleration": "wall accel.",
              "final_targeted": "final targeted", "best_untargeted": "best untargeted"}
    for key, label in labels.items():
        lines += ["", f"## {label}", "", "| selector | " + " | ".join(scenarios) + " |",
                  "| --- | " + " | ".join("---:" for _ in scenarios) + " |"]
        for name, per in table["selectors"].items():
            cells = []
            for sc in scenarios:
                v = per[sc]
                if v is None:
                    cells.append("—")
                elif key.endswith("_acceleration"):
                    cells.append(_x(v[key]) if v[key] is not None else f"never ({v['never']}/{v['seeds']})")
                else:
                    cells.append(f"{100 * v[key]:.1f}%")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if table["targets"]:
        lines += ["", "## Targets", ""]
        for sc, t in table["targets"].items():
            if "wall_ratio_to_best_peer" in t:
                ratio = t["wall_ratio_to_best_peer"]
                lines.append(f"- {sc}: {table['method']}'s wall-clock acceleration is "
                             f"{'—' if ratio is None else f'{ratio:.2f}'} of the best peer's ({t['best_peer']}).")
            else:
                lines.append(f"- {sc}: {table['method']} beats every peer run ({', '.join(t['peers'])}) in wall-clock "
                             f"acceleration: {'yes' if t['beats_every_peer_in_wall'] else 'no'}; in final targeted "
                             f"accuracy: {'yes' if t['beats_every_peer_in_final'] else 'no'}.")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


# -- does the toy's ordering of the methods hold on another model? -------------------------------------------------
ORDER_KEYS = ("wall_acceleration", "step_acceleration", "final_targeted")


def method_order(results: dict, selectors: Sequence[str], key: str) -> list[str]:
    """``selectors`` from best to worst by the median of ``key`` in a comparison's results.  Full data's
    accelerations are 1 by definition; a selector that never reached full data's best ranks below every one that
    did, and one not run is left out."""
    def value(name: str) -> float:
        if name == "full" and key.endswith("_acceleration"):
            return 1.0
        v = results["selectors"][name]["median"][key]
        return float("-inf") if v is None else v

    run = [n for n in selectors if n in results["selectors"]]
    return sorted(run, key=lambda n: (-value(n), run.index(n)))


def ordering_verdict(reference: dict, other: dict, selectors: Sequence[str], names: tuple[str, str]) -> dict:
    """Whether the methods rank the same in two comparisons (``names``: what to call them, e.g. ("the toy",
    "SmolLM2")), by each of ``ORDER_KEYS``, over the ``selectors`` both ran; and a one-line verdict."""
    both = [n for n in selectors if n in reference["selectors"] and n in other["selectors"]]
    orders = {k: {names[0]: method_order(reference, both, k), names[1]: method_order(other, both, k)}
              for k in ORDER_KEYS}
    holds = {k: v[names[0]] == v[names[1]] for k, v in orders.items()}
    labels = {"wall_acceleration": "seconds to full data's best", "step_acceleration": "steps to it",
              "final_targeted": "final targeted accuracy"}
    kept = [labels[k] for k in ORDER_KEYS if holds[k]]
    lost = [f"{labels[k]} ({' > '.join(orders[k][names[1]])} against {' > '.join(orders[k][names[0]])})"
            for k in ORDER_KEYS if not holds[k]]
    if not lost:
        line = f"{names[0]}'s ordering of {', '.join(both)} holds on {names[1]} in every measure."
    elif not kept:
        line = f"{names[0]}'s ordering does not hold on {names[1]}: " + "; ".join(lost) + "."
    else:
        line = (f"{names[0]}'s ordering holds on {names[1]} in {' and '.join(kept)}, not in "
                + ", nor in ".join(lost) + ".")
    return {"schema_version": SCHEMA_VERSION, "selectors": both, "orders": orders, "holds": holds, "verdict": line}
