"""The paper's scale, on paper: a wall-clock model of each method at the authors' workload, built from costs
measured on this testbed (``lab/cost-model.md`` explains it).

What is measured here, from a comparison folder (``cropi compare --out DIR``): full data's rollout and update
seconds per step (``metrics.jsonl``); each method's seconds per step by kind (``summary.json``: rollouts,
refills, screening, collection, scoring, selection, training), set against full data's on the run's own
machine; the cost of one scoring gradient against the update of one trained prompt and the usable share of
scored prompts (the stage records in ``summary.json``, which the kept records of a run keep; a comparison with
no curriculum run has none, and then the authors' regime is not priced); and each method's median step-level
acceleration to full data's threshold (``results.json``, or with ``--accelerations`` a plateau check's reading
of the same runs against a longer full-data run's best).

What is modelled: the workload's update seconds per step from FLOPs (8·N per token: forward, backward and the
old-log-prob forward) at an assumed utilisation, and its rollout seconds from the rollout share of a full-data
step, an input (real RLVR generation dominates; here responses are 10 tokens).  Each method's per-step seconds
are scaled kind by kind: sampling by the ratio of rollout seconds, forward + backward work by the ratio of update
seconds.  Steps to the threshold are full data's at the workload divided by the testbed's step-level
acceleration: whether they carry over is the question the doc answers, not something this script knows.

    python -m lab.bench.cost_model --compare DIR [--accelerations PLATEAU.json] [--name NAME]
                                                      [--out lab/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cropi import SCHEMA_VERSION
from cropi.errors import CropiError
from lab.readings import contended, host_of
from cropi.io import read_json, read_jsonl, write_json, write_text


@dataclass
class Workload:
    """The paper's setting (METHOD.md): Qwen2.5-1.5B, a 50k-prompt pool, 128 prompts × G = 8 per step."""

    params: float = 1.54e9
    pool: int = 50_000
    prompts_per_step: int = 128
    group_size: int = 8
    response_tokens: int = 500
    prompt_tokens: int = 150
    gpus: int = 8
    peak_flops: float = 989e12  # H100 SXM dense bf16
    utilisation: float = 0.35  # model FLOPs utilisation of the update
    rollout_shares: tuple[float, ...] = (0.3, 0.5, 0.7)  # of a full-data step's seconds
    authors_rescore_every: int = 10  # steps between whole-pool re-scorings in the authors' scripts
    validation_prompts: int = 200  # in the means, per scoring (two sets of 100)

    def update_seconds(self) -> float:
        tokens = self.prompts_per_step * self.group_size * (self.response_tokens + self.prompt_tokens)
        return 8 * self.params * tokens / (self.gpus * self.peak_flops * self.utilisation)


@dataclass
class Measured:
    rollout_seconds_per_step: float
    update_seconds_per_step: float
    prompts_per_step: int
    score_multiple: float | None  # seconds per computed gradient / update seconds per trained prompt (None: no
    # run of the comparison scored a pool)
    collect_multiple: float | None  # seconds per collected prompt / rollout seconds per trained prompt
    usable_share: float | None  # of scored pool prompts, mixed rewards under the behaviour policy
    methods: dict = field(default_factory=dict)  # name -> per-method facts


ROLLOUT_KINDS = ("rollouts", "refills", "screening", "collection")  # sampling: scaled like generation
UPDATE_KINDS = ("training", "scoring")  # forward + backward passes: scaled like the update


def _kind_factor(kind: str, k_roll: float, k_upd: float) -> float:
    """The factor that carries a kind of seconds to another scale: sampling by ``k_roll``, passes by ``k_upd``."""
    return k_roll if kind in ROLLOUT_KINDS else k_upd if kind in UPDATE_KINDS else 1.0


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _full_step_seconds(folder: Path) -> tuple[float, float]:
    """A full-data run's mean rollout and update seconds per step (``metrics.jsonl``)."""
    steps = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("event") == "step"]
    return statistics.fmean(r["rollout_seconds"] for r in steps), statistics.fmean(r["train_seconds"] for r in steps)


def measure(compare_dir: Path) -> Measured:
    """The testbed's costs, from a comparison folder's run folders and results.

    Runs of one folder may come from several machines of different speed.  A run's seconds are therefore set
    against full data's on its own machine (``full-sN`` or a reference ``full-sN@HOST``) and expressed on the
    scale of the mean full-data step; a run whose machine has no uncontended full-data run, or that was contended
    itself (``metrics.contended``), is left out.  Full data's own seconds per step are those of the runs that set
    the scale (its reference runs ``full-sN@HOST`` included), so it is priced even where its comparison seeds
    were contended."""
    compare_dir = Path(compare_dir)
    results = read_json(compare_dir / "results.json")
    runs = compare_dir / "runs"
    by_host: dict[str, list[tuple[float, float]]] = {}
    shape = None  # (prompts per step, group size): one comparison config, so every run shares it
    for d in sorted(p.parent for p in runs.glob("full-s*/summary.json")):  # finished runs only
        summary = read_json(d / "summary.json")
        shape = shape or (summary["prompts_per_step"], summary["group_size"])
        if not contended(summary):  # inflated seconds set no machine's scale
            by_host.setdefault(host_of(summary), []).append(_full_step_seconds(d))
    full = [x for xs in by_host.values() for x in xs]
    if not full:
        raise CropiError(f"{compare_dir}: no finished full-data run ran uncontended (metrics.contended), so no "
                         f"machine's step seconds set the cost model's scale")
    roll, upd = statistics.fmean(x[0] for x in full), statistics.fmean(x[1] for x in full)
    host_full = {h: (statistics.fmean(x[0] for x in xs), statistics.fmean(x[1] for x in xs)) for h, xs in by_host.items()}
    b, g = shape
    per_grad, collect, usable = [], [], []
    methods = {}
    for name, block in results["selectors"].items():
        seeds = {}
        # full data's seconds per step are those of the runs that set the scale, reference runs included
        timed = (sorted(p.parent.name for p in runs.glob("full-s*/summary.json")) if name == "full"
                 else [f"{name}-s{seed}" for seed in block["seeds"]])
        for seed, folder in enumerate(timed):
            s = read_json(runs / folder / "summary.json")
            if host_of(s) not in host_full or contended(s):
                continue
            # this machine's seconds -> the mean full-data machine's, sampling and passes each by its own ratio
            k_roll, k_upd = roll / host_full[host_of(s)][0], upd / host_full[host_of(s)][1]
            for st in (st for st in s.get("stage_summaries") or [] if "ess" in st):
                n = st["ess"]["usable"] + s["config"]["select"]["score"]["max_val_prompts"] * len(st["behaviour"]["validation"])
                per_grad.append(k_upd * st["ess"]["score_seconds"] / n)
                usable.append(st["ess"]["usable"] / st["ess"]["candidates"])
            first = _first_collection(s)
            if first:
                collect.append(k_roll * s["collect_seconds"] / first)
            trained = s["steps"] * b * g
            seeds[seed] = {"sampled_per_trained": (s.get("sampled_sequences") or trained) / trained,
                           **{f"per_step_{k}": _kind_factor(k, k_roll, k_upd) * v / s["steps"] for k, v in (s.get("seconds_by_kind") or {}).items()}}
        if not seeds:
            continue
        methods[name] = {k: _mean([v.get(k) for v in seeds.values()]) for k in next(iter(seeds.values()))}
        methods[name]["seconds_per_step"] = {k[len("per_step_"):]: methods[name].pop(k)
                                             for k in list(methods[name]) if k.startswith("per_step_")}
        methods[name]["seeds_timed"] = len(seeds)  # for full data: its timed runs, reference runs included
        # the median over seeds, as the comparison reports it (None when the median seed never reached it)
        methods[name]["step_acceleration"] = block["median"]["step_acceleration"]
    return Measured(roll, upd, b, _mean(per_grad) / (upd / b) if per_grad else None,
                    _mean(collect) / (roll / b) if collect else None, _mean(usable), methods)


def reread_accelerations(m: Measured, plateau: dict) -> Measured:
    """``m`` with each method's step acceleration replaced by a plateau check's median for it (its reading of the
    same runs against a longer full-data run's best, ``benchmarks.plateau``); a method it does not read is left
    out, since its acceleration would be to another threshold."""
    read = plateau["selectors"]
    methods = {name: {**f, "step_acceleration": read[name]["median"]["step_acceleration"]}
               for name, f in m.methods.items() if name in read}
    return Measured(**{**asdict(m), "methods": methods})


def _first_collection(summary: dict) -> int:
    """Pool prompts in a run's first behaviour store: its first candidates with scheduled refreshes, else the pool."""
    if not summary.get("collect_seconds"):
        return 0
    sel = summary["config"]["select"]
    return sel["candidates"] if sel["candidates"] and sel["refresh_every"] else summary["config"]["data"]["suite"]["pool_size"]


def model(m: Measured, w: Workload, full_steps: float) -> dict:
    """Seconds of each method at the workload for each rollout share, to the threshold.

    A method's seconds per step on the testbed, by kind (its totals divided by its steps), are scaled kind by
    kind: sampling (rollouts, refills, screening, collection) by the workload's rollout seconds per step over
    the testbed's, forward + backward work (training, scoring) by the update seconds per step likewise.  Work that
    grows with the batch (candidates, screens) therefore scales with it; the validation prompts of a scoring,
    which do not, are charged 4x too much: a pessimism against the influence methods, small next to the rest."""
    upd = w.update_seconds()
    out = {}
    for share in w.rollout_shares:
        roll = upd * share / (1 - share)
        k_roll, k_upd = roll / m.rollout_seconds_per_step, upd / m.update_seconds_per_step
        rows = {}
        for name, f in m.methods.items():
            # full data's steps are the workload's by definition (its median seed may miss its seed-mean best)
            acc = 1.0 if name == "full" else f["step_acceleration"]
            steps = full_steps / acc if acc else None
            kinds = f["seconds_per_step"]
            scaled = {k: v * _kind_factor(k, k_roll, k_upd) for k, v in kinds.items()}
            per_step = sum(scaled.values())
            rows[name] = {"steps": steps, "seconds_per_step": per_step, "seeds_timed": f.get("seeds_timed"),
                          "seconds_per_step_by_kind": scaled,
                          "hours": None if steps is None else steps * per_step / 3600}
        full_h = rows["full"]["hours"]
        for r in rows.values():
            r["wall_acceleration"] = None if r["hours"] is None or not full_h else full_h / r["hours"]
        out[str(share)] = {"update_seconds_per_step": upd, "rollout_seconds_per_step": roll, "methods": rows}
        if m.score_multiple is None:  # no run scored a pool: the authors' regime is not priced
            continue
        # the authors' regime: the whole pool re-scored every few steps from one collection
        usable = m.usable_share or 0.33
        grad = m.score_multiple * upd / w.prompts_per_step
        authors = upd + roll + (usable * w.pool + w.validation_prompts) * grad / w.authors_rescore_every
        rows["authors' regime (per step, steps not modelled)"] = {
            "seconds_per_step": authors, "first_collection_hours": w.pool * roll / w.prompts_per_step / 3600}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", type=Path, required=True, help="A `cropi compare` folder (results.json, runs/).")
    ap.add_argument("--out", type=Path, default=Path("lab/results"))
    ap.add_argument("--full-steps", type=float, default=650, help="Full-data steps to the threshold at the workload "
                    "(the paper's ≈ 650 steps for CROPI's run).")
    ap.add_argument("--accelerations", type=Path, default=None, help="A plateau check's JSON "
                    "(benchmarks.plateau --out): take each method's median step acceleration from its reading of "
                    "the same runs against the longer full-data run's best, instead of the comparison's own.")
    ap.add_argument("--name", default="cost_model", help="Stem of the files written (NAME.json, NAME.md).")
    a = ap.parse_args(argv)
    measured = measure(a.compare)
    if a.accelerations:
        measured = reread_accelerations(measured, read_json(a.accelerations))
    w = Workload()
    table = model(measured, w, a.full_steps)
    data = {"schema_version": SCHEMA_VERSION, "benchmark": "cost_model", "compare": str(a.compare),
            "accelerations": str(a.accelerations) if a.accelerations else None,
            "workload": asdict(w), "measured": asdict(measured), "model": table}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / f"{a.name}.json", data)
    write_text(a.out / f"{a.name}.md", render(data))


def render(data: dict) -> str:
    m, w = data["measured"], data["workload"]
    lines = ["# Cost model: the paper's workload, from the testbed's measured costs", "",
             f"From `{data['compare']}`"
             + (f", step accelerations from `{data['accelerations']}`" if data.get("accelerations") else "")
             + f". Workload: {w['params'] / 1e9:.2f}B parameters, {w['pool']:,}-prompt pool, "
             f"{w['prompts_per_step']} prompts × G = {w['group_size']}, {w['response_tokens']}-token responses, "
             f"{w['gpus']} GPUs at {w['utilisation']:.0%} of {w['peak_flops'] / 1e12:.0f} TFLOP/s.", "",
             "Measured on the testbed:", "",
             f"- full-data step: {m['rollout_seconds_per_step']:.3f} s of rollouts, {m['update_seconds_per_step']:.3f} s "
             f"of update ({m['prompts_per_step']} prompts)",
             f"- one scoring gradient costs {m['score_multiple']:.2f}× the update seconds of one trained prompt"
             if m["score_multiple"] else "- no run of this comparison scored a pool: the authors' regime is not priced",
             f"- one collected prompt costs {m['collect_multiple']:.2f}× the rollout seconds of one trained prompt"
             if m["collect_multiple"] else "- collection: no whole-pool collection in this comparison",
             f"- usable share of scored prompts: {m['usable_share']:.2f}" if m["usable_share"] else "", ""]
    for share, block in data["model"].items():
        lines += [f"## Rollout share {float(share):.0%} of a full-data step", "",
                  f"Update {block['update_seconds_per_step']:.2f} s, rollouts {block['rollout_seconds_per_step']:.2f} s per step.", "",
                  "| method | steps to threshold | seconds per step (seeds timed) | hours | wall-clock vs full |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, r in block["methods"].items():
            if "steps" not in r:
                lines.append(f"| {name} | — | {r['seconds_per_step']:.2f} (per step) | first collection {r['first_collection_hours']:.2f} h | — |")
                continue
            fmt = lambda x, d=2: "never (median seed)" if x is None else f"{x:.{d}f}"
            lines.append(f"| {name} | {fmt(r['steps'], 0)} | {r['seconds_per_step']:.2f} ({r['seeds_timed']}) | {fmt(r['hours'])} | "
                         f"{fmt(r['wall_acceleration'])}{'×' if r['wall_acceleration'] else ''} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
