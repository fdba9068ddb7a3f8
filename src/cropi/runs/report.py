"""Reports for people: one run's ``summary.json``, ``report.md`` and ``accuracy.png``; a comparison's
``report.md`` with its verdicts, tables and overhead."""

from __future__ import annotations

import statistics
from pathlib import Path

from cropi.io import write_json, write_text
from cropi.runs.metrics import SMOOTH, median
from cropi.runs.plots import plot_comparison, plot_curves


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
        f"- training wall time (rollouts, refills, screening and per-step scoring, updates; evaluation excluded): "
        f"{summary['train_seconds']:.1f} s; "
        f"{summary.get('steps_per_minute', 0):.2f} GRPO steps/min; rollout {summary.get('rollout_tokens_per_second', 0):.0f} tokens/s",
        f"- targeted {split} accuracy: step 0 {100 * curve[0]['targeted']:.1f}% -> best {100 * summary['best_targeted']:.1f}% "
        f"(last-3 mean {100 * summary.get('final_targeted', 0):.1f}%)",
        *(["- seconds by kind: " + ", ".join(f"{k} {v:.0f}" for k, v in kinds.items())] if kinds else []),
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


def _tie_note(results: dict, key: str, value) -> str:
    """ "; a tie" when ``value`` is inside full data's own seed spread (metrics.noise_floor): between 1/max and
    max, as a seed as far below the mean as the farthest one above it would be."""
    top = (results.get("noise_floor") or {}).get(key, {}).get("max")
    inside = value is not None and top is not None and top > 0 and 1 / max(top, 1.0) <= value <= top
    return "; inside full data's seed spread: a tie" if inside else ""


def verdict(results: dict, name: str) -> str:
    """One plain line: did ``name`` reach full data's best sooner than full data, in steps and in seconds."""
    m = results["selectors"][name]["median"]
    step, wall = m["step_acceleration"], m["wall_acceleration"]
    best = _fmt(results["threshold_targeted"], pct=True)
    if step is None:
        return f"{name} did not reach full data's best targeted accuracy ({best}%) within the budget"
    tie = _tie_note(results, "step_acceleration", step)
    if wall is None:
        return (f"{name} reached full data's best ({best}%) with {step:.2f}x fewer steps{tie}, but not within "
                "full data's seconds")
    faster = "faster" if wall >= 1 else "slower"
    return (f"{name} reached full data's best ({best}%) with {step:.2f}x fewer steps{tie} and is {faster} than full "
            f"data in seconds ({wall:.2f}x)")


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
            rows.append(f"| {name} | " + " | ".join(f"{means[k]:.0f}" for k in KINDS)
                        + f" | {sum(means.values()):.0f} | {statistics.fmean(seqs) if seqs else 0:.0f} |")
    if not rows:
        return []
    return ["", "## Seconds by kind", "",
            "Seed means over the whole budget. rollouts: sampling the groups that were trained on; refills: groups "
            "sampled and dropped (equal rewards, past the batch); screening: the screening samples of the online "
            "filter and of online_influence; "
            "collection: behaviour stores and every re-collection; scoring: influence scoring; selection: the rest "
            "of choosing prompts; training: the updates. Evaluation is not charged.", "",
            "| selector | " + " | ".join(KINDS) + " | total | sampled responses |",
            "| --- | " + " | ".join("---:" for _ in KINDS) + " | ---: | ---: |", *rows]


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
            if r.get("wall_acceleration") is not None and shares[-1] < 1:
                # assumes the overhead accrues evenly over the run
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
        f"- budget: {results['budget_steps']} GRPO steps per run; "
        f"selection ratio {results.get('select_ratio', '?')}; targeted {results.get('eval_split', 'test')} n = {results.get('test_n_targeted', '?')}",
        f"- threshold (best of the seed-mean full-data targeted curve, smoothed over {SMOOTH} evaluations): "
        f"{_fmt(results['threshold_targeted'], pct=True)}%, reached by full data at step "
        f"{_fmt(results['full_steps_to_threshold'], digits=0)} / {_fmt(results['full_seconds_to_threshold'], digits=0)} s",
        "",
    ]
    lines += ["## Verdicts", "", *[f"- {verdict(results, n)}" for n in sel if n != "full"], ""]
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
              "| selector | seed | steps to threshold | seconds to threshold | final targeted | "
              "extra sampling s | scoring s | training s | paired SE vs full (pts) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, block in sel.items():
        for seed, r in block["seeds"].items():
            se = r.get("paired_se_vs_full")
            extra, scoring, training = _seconds_split(r)
            lines.append(f"| {name} | {seed} | {_fmt(r['steps_to_threshold'], digits=0)} | "
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


