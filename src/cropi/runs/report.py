"""Reports for people: one run's ``summary.json``, ``report.md`` and ``accuracy.png``; a comparison's
``report.md`` with its target verdicts, tables and overhead; and the machine description both carry."""

from __future__ import annotations

import platform
import statistics
from pathlib import Path

from cropi.runs.metrics import CONTENTION_MARGIN, SMOOTH, median
from cropi.runs.plots import plot_comparison, plot_curves
from cropi.io import write_json, write_text
from cropi.machine import usable_cores


def machine_description() -> str:
    """"CPU, N cores, M GiB RAM, GPU; torch ..." where N is what this process may use (``usable_cores``)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {usable_cores()} cores{mem}{gpu}; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def host_id() -> str:
    """This machine's identity, recorded by every run: seconds compare only between runs on one machine.  The
    kernel's boot id (a new one after a reboot, which is taken as another machine), else the host name."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return platform.node() or "unknown"


def write_run_report(run_dir: Path, summary: dict) -> None:
    """``summary.json``, ``accuracy.png`` and ``report.md`` for one training run."""
    run_dir = Path(run_dir)
    write_json(run_dir / "summary.json", summary)
    split = summary.get("config", {}).get("eval", {}).get("split", "test")
    plot_curves({summary["selector"]: summary["curve"]}, run_dir / "accuracy.png",
                f"{summary['selector']} · model {summary.get('model')} · seed {summary['seed']}", split=split)
    curve = summary["curve"]
    kinds = summary.get("seconds_by_kind") or {}
    lines = [
        f"# cropi run: {summary['selector']} (seed {summary['seed']})",
        "",
        f"- model: `{summary.get('model')}`; {summary['steps']} GRPO steps of {summary.get('prompts_per_step')} "
        f"prompts x G={summary.get('group_size')}",
        f"- machine: {summary.get('machine')}",
        f"- training wall time (rollouts, refills, screening and per-step scoring, updates; evaluation excluded): "
        f"{summary['train_seconds']:.1f} s; "
        f"{summary.get('steps_per_minute', 0):.2f} GRPO steps/min; rollout {summary.get('rollout_tokens_per_second', 0):.0f} tokens/s",
        f"- targeted {split} accuracy: step 0 {100 * curve[0]['targeted']:.1f}% -> best {100 * summary['best_targeted']:.1f}% "
        f"(last-3 mean {100 * summary.get('final_targeted', 0):.1f}%)",
        *([f"- seconds by kind: " + ", ".join(f"{k} {v:.0f}" for k, v in kinds.items())] if kinds else []),
        "",
        "![accuracy](accuracy.png)",
        "",
        "| step | targeted | untargeted | train seconds |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for c in curve:
        unt = "" if c.get("untargeted") is None else f"{100 * c['untargeted']:.1f}"
        lines.append(f"| {c['step']} | {100 * c['targeted']:.1f} | {unt} | {c.get('seconds', 0):.0f} |")
    fams = summary.get("per_family_final") or {}
    if fams:
        lines += ["", "Per-family accuracy at the last evaluation:", "", "| family | accuracy |", "| --- | ---: |"]
        lines += [f"| {f} | {100 * a:.1f} |" for f, a in fams.items()]
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")


def _fmt(x, pct=False, digits=2):
    if x is None:
        return "never"
    return f"{100 * x:.1f}" if pct else f"{x:.{digits}f}"


def _x(factor, lower_bound: bool = False) -> str:
    if factor is None:
        return "never"
    return f"≥ {factor:.2f}×" if lower_bound else f"{factor:.2f}×"


def _any_lower_bound(block: dict, key: str) -> bool:
    """A median over seeds is a lower bound when any seed's value is one (raising a value never lowers it)."""
    return any(r.get(f"{key}_is_lower_bound") for r in block["seeds"].values())


TARGET_STEP_ACCELERATION = 3.0  # the paper reports 2.66x
TARGET_WALL_ACCELERATION = 2.0


def is_peer(name: str) -> bool:
    """A method users pick instead of data selection (``cropi.selection.variants.PEERS``), or a cropi variant
    that only borrows a peer's batch rule (``+dapo``) is not one."""
    from cropi.selection.variants import PEERS

    return name.split("+")[0] in PEERS


def _tie_note(results: dict, key: str, value) -> str:
    """ "; a tie" when ``value`` is inside full data's own seed spread (metrics.noise_floor): between 1/max and
    max, as a seed as far below the mean as the farthest one above it would be."""
    top = (results.get("noise_floor") or {}).get(key, {}).get("max")
    inside = value is not None and top is not None and top > 0 and 1 / max(top, 1.0) <= value <= top
    return "; inside full data's seed spread: a tie" if inside else ""


def target_verdicts(results: dict) -> list[dict]:
    """The comparison's targets for every cropi selector, each met or not with the measured number:
    median step-level acceleration >= 3 and >= every peer's, median wall-clock acceleration >= 2 and >= every
    peer's, median final targeted accuracy at least every baseline's and peer's, and median best untargeted
    accuracy not below full data's."""
    sel = results["selectors"]
    baselines = [n for n in sel if not n.startswith("cropi")]
    peers = [n for n in sel if is_peer(n)]
    out = []
    for name in [n for n in sel if n.startswith("cropi")]:
        m = sel[name]["median"]
        reach = sum(r["steps_to_threshold"] is not None for r in sel[name]["seeds"].values())
        for key, goal, label in (("step_acceleration", TARGET_STEP_ACCELERATION, "step-level acceleration"),
                                 ("wall_acceleration", TARGET_WALL_ACCELERATION, "wall-clock acceleration")):
            v = m[key]
            at_least = "at least " if _any_lower_bound(sel[name], key) else ""
            # seconds compare only on one machine: a run with no full-data run beside it has no wall-clock number
            missing = sel[name].get("wall_unreferenced", 0) if key == "wall_acceleration" else 0
            crowded = sel[name].get("wall_contended", 0) if key == "wall_acceleration" else 0
            out.append({"selector": name, "target": f"{label} >= {goal:.1f}x (median over seeds)",
                        "met": v is not None and v >= goal and not missing and not crowded,
                        "measured": (f"{at_least}{v:.2f}x" if v is not None else "never reached the threshold (median)")
                        + f"; {reach}/{len(sel[name]['seeds'])} seeds reached it" + _tie_note(results, key, v)
                        + (f"; {missing} run(s) had no uncontended full-data run on their machine: not measured"
                           if missing else "")
                        + (f"; {crowded} run(s) shared their cores with more processes than cores: not measured"
                           if crowded else "")})
            if peers:
                theirs = {p: sel[p]["median"][key] for p in peers}
                out.append({"selector": name, "target": f"{label} >= every peer's (median)",
                            "met": v is not None and all(t is None or v >= t for t in theirs.values()),
                            "measured": f"{_x(v)} vs " + ", ".join(f"{p} {_x(t)}" for p, t in theirs.items())})
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


MAX_STAGE_COLUMNS = 8  # past this many stages a row is grouped into the spans of the fewest-staged selector


def _signal_lines(results: dict) -> list[str]:
    """Per stage (seed means): the trained batches' reward and mixed-group share, and the targeted accuracy at
    the stage's end, so one can see whether what a selector trains on is learned and whether that carries over.
    A selector with many short stages (re-selecting every few steps) is shown over wider spans of steps -- the
    stages of the selector with the fewest, or four equal parts of the budget -- each span the mean of the
    stages that end in it, so that every row has the same few columns."""
    rows = []
    for name, block in results["selectors"].items():
        runs = [r for r in block["seeds"].values() if r.get("training_signal")]
        if runs:
            rows.append((name, runs, min(len(r["training_signal"]) for r in runs)))
    if not rows:
        return []

    def cell(runs: list[dict], stages: range, end) -> str:
        sig = [r["training_signal"][st] for r in runs for st in stages]
        acc = [next((c["targeted"] for c in r["curve"] if end is not None and c["step"] >= end), None) for r in runs]
        acc_txt = f"{100 * statistics.fmean(acc):.1f} @ {end}" if None not in acc else "—"
        return (f"{statistics.fmean(x['reward_mean'] for x in sig):.2f} / "
                f"{statistics.fmean(x['mixed_groups'] for x in sig):.2f} / {acc_txt}")

    fewest = min(rows, key=lambda row: row[2])
    if max(n for *_, n in rows) <= MAX_STAGE_COLUMNS:
        spans, header = None, [f"stage {s}" for s in range(max(n for *_, n in rows))]
    else:
        if fewest[2] <= MAX_STAGE_COLUMNS:
            ends = [fewest[1][0]["training_signal"][st]["end_step"] for st in range(fewest[2])]
        else:
            budget = results["budget_steps"]
            ends = [round(budget * q / 4) for q in range(1, 5)]
        spans, header = ends, [f"steps {lo}–{hi}" for lo, hi in zip([0, *ends[:-1]], ends)]
    table = []
    for name, runs, n in rows:
        if spans is None:
            cells = [cell(runs, range(st, st + 1), runs[0]["training_signal"][st].get("end_step")) for st in range(n)]
        else:
            ends_run = [runs[0]["training_signal"][st].get("end_step") for st in range(n)]
            cells, lo = [], 0
            for hi in spans:
                inside = [st for st in range(n) if ends_run[st] is not None and lo < ends_run[st] <= hi]
                cells.append(cell(runs, range(inside[0], inside[-1] + 1), ends_run[inside[-1]]) if inside else "")
                lo = hi
        table.append(f"| {name} | " + " | ".join(cells + [""] * (len(header) - len(cells))) + " |")
    grouped = ("" if spans is None else " Selectors with more than "
               f"{MAX_STAGE_COLUMNS} stages are shown over spans of steps, each the mean of the stages ending in it, "
               "with the accuracy at the last of them.")
    return ["", "## What each stage trained on", "",
            "Per stage, seed means: the reward of the trained batches / the share of their groups with mixed "
            "rewards (the ones with a gradient) / targeted accuracy (%) @ the step that ends the stage (the first "
            "evaluation at or after it). A reward that rises while the accuracy stays flat means the chosen prompts "
            "are being learned without carrying over." + grouped, "",
            "| selector | " + " | ".join(header) + " |",
            "| --- | " + " | ".join("---:" for _ in header) + " |", *table]


KINDS = ("rollouts", "refills", "screening", "collection", "scoring", "selection", "training")


def _kind_lines(results: dict) -> list[str]:
    """Seconds by kind, seed means over the whole budget: where each selector's charged seconds went."""
    rows = []
    for name, block in results["selectors"].items():
        runs = [r["seconds_by_kind"] for r in block["seeds"].values() if r.get("seconds_by_kind")]
        if runs:
            means = {k: statistics.fmean(r.get(k, 0.0) for r in runs) for k in KINDS}
            seqs = [r.get("sampled_sequences") for r in block["seeds"].values() if r.get("sampled_sequences")]
            loads = [r["load_1min_at_evals"] for r in block["seeds"].values() if r.get("load_1min_at_evals")]
            load = (f"{statistics.fmean(x['mean'] for x in loads):.1f} / {max(x['max'] for x in loads):.1f}"
                    if loads else "—")
            rows.append(f"| {name} | " + " | ".join(f"{means[k]:.0f}" for k in KINDS)
                        + f" | {sum(means.values()):.0f} | {statistics.fmean(seqs) if seqs else 0:.0f} | {load} |")
    if not rows:
        return []
    return ["", "## Seconds by kind", "",
            "Seed means over the whole budget. rollouts: sampling the groups that were trained on; refills: groups "
            "sampled and dropped (equal rewards, past the batch); screening: the screening samples of the online "
            "filter and of cropi's batch rule; "
            "collection: behaviour stores and every re-collection; scoring: influence scoring; selection: the rest "
            "of choosing prompts; training: the updates. Evaluation is not charged. Machine load: the 1-minute load "
            "average at the evaluations, mean / largest over the seeds (a load above the number of runs going side "
            "by side means something else shared the machine and their seconds are inflated; a run whose mean "
            f"exceeds its cores + {CONTENTION_MARGIN} is counted as contended and gets no wall-clock acceleration).", "",
            "| selector | " + " | ".join(KINDS) + " | total | sampled responses | machine load |",
            "| --- | " + " | ".join("---:" for _ in KINDS) + " | ---: | ---: | ---: |", *rows]


def _seconds_split(row: dict) -> tuple[float, float, float]:
    """A run's charged seconds as (extra sampling, scoring, training): by kind where recorded, else from an
    older summary's collection / scoring / training fields."""
    if row.get("seconds_by_kind"):
        k = row["seconds_by_kind"]
        return (k.get("refills", 0.0) + k.get("screening", 0.0) + k.get("collection", 0.0),
                k.get("scoring", 0.0) + k.get("selection", 0.0), k.get("rollouts", 0.0) + k.get("training", 0.0))
    return (row.get("collect_seconds", 0.0), row.get("score_seconds", 0.0) + row.get("select_seconds", 0.0),
            row.get("train_seconds", 0.0))


def _overhead_lines(results: dict) -> list[str]:
    """Per selector with overhead: its share of the charged seconds, and the wall-clock acceleration it would
    have without it -- what the choice of prompts alone buys, against what choosing them costs."""
    rows = []
    for name, block in results["selectors"].items():
        shares, bare = [], []
        for r in block["seeds"].values():
            extra, scoring, training = _seconds_split(r)
            total = extra + scoring + training
            if total <= 0:
                continue
            shares.append((extra + scoring) / total)
            if r.get("wall_reference") and r.get("wall_acceleration") is not None and shares[-1] < 1:
                # each run against full data on its own machine; assumes the overhead accrues evenly over the run
                bare.append(r["wall_acceleration"] / (1 - shares[-1]))
        if shares and statistics.fmean(shares) >= 0.005:  # full data and random have none to speak of
            m = block["median"]
            rows.append(f"| {name} | {100 * statistics.fmean(shares):.0f}% | "
                        f"{_x(m.get('wall_acceleration'))} | {_x(median(bare) if bare else None)} |")
    if not rows:
        return []
    return ["", "## Overhead", "",
            "Overhead: the charged seconds spent on anything but the trained groups' rollouts and updates (refills, "
            "screening, collection, scoring, selection), seed mean. Without it: each run's wall-clock acceleration "
            "divided by (1 − its overhead share), median over the seeds -- an estimate that takes the overhead to "
            "accrue evenly over the run (a per-step rule such as a batch filter pays its overhead at every step; a collection made up front does not, so there it is rougher).", "",
            "| selector | overhead share | wall accel. (median) | without the overhead (est.) |",
            "| --- | ---: | ---: | ---: |", *rows]


def write_comparison_report(results: dict, out: Path) -> None:
    """``out/report.md`` and its two figures from a comparison's results."""
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
    hosts = results.get("hosts") or {}
    if len(hosts) > 1:
        lines += [f"**Runs from {len(hosts)} machines.** Seconds compare only on one machine, so each run's "
                  "wall-clock acceleration is against full data's seconds *on its own machine* (full-data runs there, "
                  "or a reference run repeating a full-data seed there); a run without one has none.", "",
                  "| machine | CPU | runs | reference full-data runs | full data's seconds to the threshold there |",
                  "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {h[:8]} | {v['cpu']} | {v['runs']} | {v['reference_runs']} | "
                  f"{_fmt(v['full_seconds_to_threshold'], digits=0)} |" for h, v in hosts.items()]
        lines += [""]
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
        lines.append(f"| {name} | {_x(m['step_acceleration'], _any_lower_bound(block, 'step_acceleration'))} | "
                     f"{_x(m['wall_acceleration'], _any_lower_bound(block, 'wall_acceleration'))} | "
                     f"{_fmt(m['final_targeted'], pct=True)} | {_fmt(m['best_targeted'], pct=True)} | "
                     f"{_fmt(m['best_untargeted'], pct=True)} | {reach}/{len(block['seeds'])} |")
    if any(_any_lower_bound(b, k) for b in sel.values() for k in ("step_acceleration", "wall_acceleration")):
        lines += ["", "≥: a lower bound — some seed was at the threshold from its first evaluation, so its crossing "
                  "is charged the first evaluation interval."]
    lines += ["", "Per seed (seconds over the whole budget: extra sampling = refills, screening and collection; "
              "scoring = scoring and selection; training = the trained groups' rollouts and the updates):", "",
              "| selector | seed | machine | steps to threshold | seconds to threshold | final targeted | "
              "extra sampling s | scoring s | training s | paired SE vs full (pts) |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, block in sel.items():
        for seed, r in block["seeds"].items():
            se = r.get("paired_se_vs_full")
            extra, scoring, training = _seconds_split(r)
            lines.append(f"| {name} | {seed} | {str(r.get('host') or '?')[:8]} | {_fmt(r['steps_to_threshold'], digits=0)} | "
                         f"{_fmt(r['seconds_to_threshold'], digits=0)} | {_fmt(r['final_targeted'], pct=True)} | "
                         f"{extra:.0f} | {scoring:.0f} | {training:.0f} | "
                         f"{'' if se is None else f'{100 * se:.2f}'} |")
    partial = results.get("partial_gain")
    if partial:
        fr = list(partial)
        lines += ["", "Step-level acceleration (median over seeds) to fractions of the full-data gain — the level "
                  "start + f × (threshold − start), each run's smoothed curve against the seed-mean full-data one:", "",
                  "| selector | " + " | ".join(f"f = {f} ({100 * partial[f]['level']:.1f}%)" for f in fr) + " |",
                  "| --- | " + " | ".join("---:" for _ in fr) + " |"]
        for name in sel:
            cells = [_x(partial[f]["selectors"][name]["median_step_acceleration"],
                        any(partial[f]["selectors"][name].get("seeds_lower_bound", ()))) for f in fr]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    floor = results.get("noise_floor")
    if floor and floor["step_acceleration"]["max"] is not None:
        st, wa = floor["step_acceleration"], floor["wall_acceleration"]
        # no seed with seconds: every full-data run was contended (metrics.contended) or had no reference
        secs = (f"{_x(wa['median'])} and up to {_x(wa['max'])} in seconds" if wa["max"] is not None
                else "not measured in seconds")
        lines += ["", f"Noise floor: full data's own seeds against their seed mean reach the threshold "
                  f"{_x(st['median'])} (median) and up to {_x(st['max'])} faster in steps, {secs}. An acceleration "
                  "inside that spread is a tie with full data."]
    lines += _kind_lines(results)
    lines += _signal_lines(results)
    lines += _overhead_lines(results)
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    write_text(out / "report.md", "\n".join(lines))


def write_draws_report(spread: dict, out: Path) -> None:
    """``out/draws.json`` and ``out/draws.md``: the spread between pool draws next to the spread between seeds
    (``metrics.draw_spread``), for every selector that was run on every draw."""
    out = Path(out)
    write_json(out / "draws.json", spread)
    draws = list(spread["draws"])
    lines = ["# cropi compare: pool draws", "",
             "The same comparison on several draws of the pool. For each selector: the median over seeds in each "
             "draw, the spread *between draws* (largest minus smallest of those medians), and the spread *between "
             "seeds* (largest minus smallest seed within a draw; the largest over the draws). A verdict that moves "
             "more between draws than between seeds depends on the pool, not only on the seed. An acceleration "
             "marked (tie) is inside that draw's noise floor: full data's own seeds against their mean.", "",
             "| draw | threshold (targeted) | full data: steps / s to it | noise floor, steps (median / max) | "
             "noise floor, wall-clock (median / max) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for d, info in spread["draws"].items():
        floor = info.get("noise_floor") or {}
        step, wall = floor.get("step_acceleration") or {}, floor.get("wall_acceleration") or {}
        lines.append(f"| {d} | {_fmt(info['threshold_targeted'], pct=True)}% | "
                     f"{_fmt(info['full_steps_to_threshold'], digits=0)} / {_fmt(info['full_seconds_to_threshold'], digits=0)} | "
                     f"{_x(step.get('median'))} / {_x(step.get('max'))} | {_x(wall.get('median'))} / {_x(wall.get('max'))} |")
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
        for name, per in spread["selectors"].items():
            s = per[key]
            lines.append(f"| {name} | " + " | ".join(cell(key, s["medians"][d], d) for d in draws)
                         + f" | {spread_cell(key, s['between_draws'])} | {spread_cell(key, s['between_seeds_max'])} "
                         f"| {s['never']} |")
    write_text(out / "draws.md", "\n".join(lines) + "\n")
