"""Scoring (and collection) sharded over Ray: 1 vs 2 workers on the embedded pool, in one run, side by side.

On the embedded tiny policy and the embedded suite's pool (``data.suite.pool_size`` prompts, 4000 by default)
with its two validation sets, this measures:

- one process without Ray (``score_pool`` / ``collect``, ``threads`` torch threads): the reference bits and
  the baseline throughput;
- ``cropi.integrations.ray_shards`` with 1 and then 2 workers (``threads`` torch threads each) on one local
  Ray started once, whose start-up seconds are recorded apart;
- for each: seconds of the job after Ray is up (actors, shards, final pass), of which the actors' start
  (a Ray worker importing cropi and loading the policy), pool prompts per second with and without that
  start, and whether the scores file and every gradient-store chunk (every trajectory chunk, for collection)
  are bit-identical to the one-process run (compared as Arrow IPC bytes).

The scaling target is 2 workers ≥ 1.8× the prompts per second of 1 worker.  The machine's load average is
recorded before and after each section: the cores may be shared.

Benchmarks sit below ``cropi.integrations`` in the layer order, so the Ray dispatcher is passed in (``ray``:
the ``cropi.integrations.ray_shards`` module); run it with ``python -m lab.bench ray`` (writes
``lab/results/ray_scoring.{json,md}``; ``--quick``: 256 pool prompts under ``runs/bench-quick/``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cropi import SCHEMA_VERSION
from cropi.io import table_bits, write_json, write_text

SCALING_TARGET = 1.8  # 2-worker over 1-worker prompts per second


@dataclass
class RayScoringPlan:
    pool_prompts: int | None = None  # the first N pool prompts (None: the whole embedded pool)
    workers: tuple[int, ...] = (1, 2)
    threads: int = 1  # torch threads per worker, and of the one-process reference
    model: str = "tiny"
    collection: bool = True  # also time and compare collection

    @classmethod
    def quick_plan(cls, **kw) -> "RayScoringPlan":
        return cls(**{"pool_prompts": 256, **kw})


_SPIN = """
import time, torch
torch.set_num_threads(1)
a, n, t = torch.randn(256, 256), 0, time.perf_counter()
while time.perf_counter() - t < {seconds}:
    a @ a
    n += 1
print(n / {seconds})
"""


def machine_two_process_ratio(seconds: float = 3.0) -> dict:
    """What the machine gives two single-threaded processes at this moment: the same fp32 matmul loop alone, then
    two copies at once; ``ratio`` = the two's total over the one's (2 on two idle cores).  The ceiling of
    2-worker scaling while the measurement runs, on a machine whose cores may be shared."""
    import subprocess
    import sys

    code = _SPIN.format(seconds=seconds)
    alone = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    both = [float(p.communicate()[0]) for p in procs]
    return {"one_alone_per_second": alone, "two_at_once_per_second": both, "ratio": sum(both) / alone,
            "load": _load()}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _chunk_bits(folders, pattern: str) -> dict[str, bytes]:
    import pyarrow.parquet as pq

    return {f.name: table_bits(pq.read_table(f)) for d in folders for f in sorted(Path(d).glob(pattern))}


def _scores_bits(path: Path) -> bytes:
    from cropi.selection.export import read_scores

    return table_bits(read_scores(path)[0])


def _pool_store_dirs(gradients: Path) -> list[Path]:
    """The pool's exact-mode stores in a gradients folder: one whole store or shards."""
    return sorted(p for p in gradients.glob("pool-exact*") if (p / "meta.json").exists())


def run(plan: RayScoringPlan, out_dir: Path, work: Path, ray, log=print) -> dict:
    import torch

    from cropi.config import load_config
    from lab.machines import machine_description
    from cropi.policy import load_policy
    from cropi.rollouts.trajectory_store import CollectConfig, collect
    from cropi.scores.engine import default_gradients_dir, score_pool
    from cropi.tasks.loading import load_data

    torch.set_num_threads(plan.threads)
    started = time.perf_counter()
    cfg = load_config(None, [f"model.name={plan.model}", "model.device=cpu"])
    suite = load_data(cfg.data)
    pool_problems = suite.pool[:plan.pool_prompts] if plan.pool_prompts else suite.pool
    ccfg = CollectConfig.from_rollout(cfg.rollout)
    work.mkdir(parents=True, exist_ok=True)
    policy = load_policy(plan.model, "cpu")
    t0 = time.perf_counter()
    pool = collect(policy, pool_problems, work / "pool", ccfg)  # resumable: a rerun reuses it
    vals = {name: str(collect(policy, probs, work / f"val-{name}", ccfg)) for name, probs in suite.validation.items()}
    stores_seconds = time.perf_counter() - t0
    n = len(pool_problems)
    log(f"stores: {n} pool prompts, validation sets {', '.join(f'{k} ({len(v)})' for k, v in suite.validation.items())}")

    rows: list[dict] = []
    load_before = _load()
    one_out = work / "one.parquet"
    shutil.rmtree(default_gradients_dir(one_out), ignore_errors=True)
    t0 = time.perf_counter()
    ref = score_pool(policy, pool, vals, one_out, cfg)
    one_seconds = time.perf_counter() - t0
    usable = sum(ref.table.column("usable").to_pylist())
    ref_scores, ref_chunks = _scores_bits(one_out), _chunk_bits(_pool_store_dirs(default_gradients_dir(one_out)), "chunk-*.parquet")
    rows.append({"run": "one process (no Ray)", "workers": None, "mode": ref.mode, "seconds": one_seconds,
                 "actor_start_seconds": None, "prompts_per_second": n / one_seconds,
                 "prompts_per_second_after_actor_start": n / one_seconds, "identical": True,
                 "load_before": load_before, "load_after": _load()})
    log(f"one process: {one_seconds:.1f} s ({ref.mode} mode, {usable} usable of {n})")

    collect_rows: list[dict] = []
    probes = [machine_two_process_ratio()]
    log(f"machine: two processes at once get {probes[0]['ratio']:.2f}x one alone")
    with ray.ray_session(num_cpus=os.cpu_count()) as ray_start:
        log(f"Ray started in {ray_start:.1f} s")
        for w in plan.workers:
            out = work / f"ray-{w}.parquet"
            shutil.rmtree(default_gradients_dir(out), ignore_errors=True)
            load_before = _load()
            t0 = time.perf_counter()
            res, job = ray.score_on_ray(cfg, pool, vals, out, workers=w, threads=plan.threads)
            seconds = time.perf_counter() - t0
            same = (_scores_bits(out) == ref_scores
                    and _chunk_bits(_pool_store_dirs(default_gradients_dir(out)), "chunk-*.parquet") == ref_chunks)
            rows.append({"run": f"Ray, {w} worker{'s' * (w > 1)}", "workers": w, "mode": res.mode, "seconds": seconds,
                         "actor_start_seconds": job.actor_start_seconds, "shards": job.tasks, "phases": job.phases,
                         "prompts_per_second": n / seconds,
                         "prompts_per_second_after_actor_start": n / (seconds - job.actor_start_seconds),
                         "identical": same, "load_before": load_before, "load_after": _load()})
            log(f"Ray, {w} worker(s): {seconds:.1f} s (actors {job.actor_start_seconds:.1f} s), identical: {same}")
        probes.append(machine_two_process_ratio())
        log(f"machine: two processes at once get {probes[1]['ratio']:.2f}x one alone")
        if plan.collection:
            collect_rows = _collection(plan, ray, cfg, ccfg, pool_problems, policy, work, log)

    by = {r["workers"]: r for r in rows}
    res = {"schema_version": SCHEMA_VERSION, "benchmark": "ray_scoring", "machine": machine_description(),
           "cpu_count": os.cpu_count(), "ray_version": _ray_version(), "plan": asdict(plan), "model": plan.model,
           "pool_prompts": n, "usable_prompts": usable, "validation_sets": {k: len(v) for k, v in suite.validation.items()},
           "mode": ref.mode, "threads": plan.threads, "ray_start_seconds": ray_start, "stores_seconds": stores_seconds,
           "ray_worker_niceness": os.environ.get("RAY_worker_niceness", f"{os.nice(0)} (the driver's)"),
           "machine_two_process_ratio": probes,
           "scoring": rows, "collection": collect_rows, "scaling_target": SCALING_TARGET,
           "identical_scores": all(r["identical"] for r in rows),
           "elapsed_seconds": time.perf_counter() - started}
    if 1 in by and 2 in by:
        res["speedup_2_vs_1"] = by[2]["prompts_per_second"] / by[1]["prompts_per_second"]
        res["speedup_2_vs_1_after_actor_start"] = (by[2]["prompts_per_second_after_actor_start"]
                                                   / by[1]["prompts_per_second_after_actor_start"])
        res["target_met"] = res["speedup_2_vs_1"] >= SCALING_TARGET
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "ray_scoring.json", res)
    write_text(out_dir / "ray_scoring.md", render(res))
    return res


def _collection(plan, ray, cfg, ccfg, problems, policy, work: Path, log) -> list[dict]:
    """Collect the pool again: one process, then Ray with each worker count; chunks compared with the first."""
    from cropi.rollouts.trajectory_store import collect

    n, rows = len(problems), []
    one = work / "collect-one"
    shutil.rmtree(one, ignore_errors=True)
    load_before = _load()
    t0 = time.perf_counter()
    collect(policy, problems, one, ccfg)
    secs = time.perf_counter() - t0
    ref = _chunk_bits([one], "part-*.parquet")
    rows.append({"run": "one process (no Ray)", "workers": None, "seconds": secs, "actor_start_seconds": None,
                 "prompts_per_second": n / secs, "identical": True, "load_before": load_before, "load_after": _load()})
    for w in plan.workers:
        out = work / f"collect-ray-{w}"
        shutil.rmtree(out, ignore_errors=True)
        load_before = _load()
        t0 = time.perf_counter()
        job = ray.collect_on_ray(cfg, problems, out, ccfg, workers=w, threads=plan.threads)
        secs = time.perf_counter() - t0
        same = _chunk_bits([out], "part-*.parquet") == ref
        rows.append({"run": f"Ray, {w} worker{'s' * (w > 1)}", "workers": w, "seconds": secs,
                     "actor_start_seconds": job.actor_start_seconds, "prompts_per_second": n / secs,
                     "prompts_per_second_after_actor_start": n / (secs - job.actor_start_seconds), "identical": same,
                     "load_before": load_before, "load_after": _load()})
        log(f"collect on Ray, {w} worker(s): {secs:.1f} s, identical: {same}")
    return rows


def _ray_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


def _fmt(x, f=".1f") -> str:
    return "—" if x is None else format(x, f)


def _table(rows: list[dict]) -> list[str]:
    lines = ["| run | seconds (after Ray start) | of which actors' start | prompts/s | prompts/s after the actors' "
             "start | bit-identical to one process | load average before → after (1, 5, 15 min) |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['seconds']:.1f} | {_fmt(r['actor_start_seconds'])} | "
                     f"{r['prompts_per_second']:.1f} | {_fmt(r.get('prompts_per_second_after_actor_start'))} | "
                     f"{'yes' if r['identical'] else '**no**'} | {r['load_before']} → {r['load_after']} |")
    return lines


def render(res: dict) -> str:
    lines = ["# Scoring sharded over Ray: 1 vs 2 workers", "",
             f"Generated by `python -m lab.bench ray` (numbers in `ray_scoring.json`); machine: {res['machine']}; "
             f"{res['cpu_count']} CPUs; Ray {res['ray_version']}.", "",
             f"- model {res['model']}; the embedded pool's first {res['pool_prompts']} prompts "
             f"({res['usable_prompts']} usable), validation sets "
             + ", ".join(f"{k} ({v} prompts)" for k, v in res["validation_sets"].items())
             + f"; {res['mode']} mode; {res['threads']} torch thread(s) per worker and in the one-process run",
             f"- Ray start-up (a local Ray, once, before both Ray runs): {res['ray_start_seconds']:.1f} s, not in "
             f"the seconds below; Ray workers at niceness {res.get('ray_worker_niceness')}, as the one-process run", "",
             "## Scoring", ""]
    probes = res.get("machine_two_process_ratio") or []
    if probes:
        lines += ["Two-process ceiling: the same single-threaded matmul loop alone, then two copies at once, just "
                  "before the Ray runs and just after them: two at once got "
                  + " and ".join(f"**{p['ratio']:.2f}×** one alone (load {p['load']})" for p in probes)
                  + " — 2.00× on two idle cores; this bounds what a second worker can add during the run.", ""]
    lines += _table(res["scoring"])
    for r in res["scoring"]:
        if r.get("phases"):
            lines.append("")
            lines.append(f"{r['run']}, seconds after the actors' start: "
                         + ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items()) + ".")
    if "speedup_2_vs_1" in res:
        verdict = "met" if res["target_met"] else "NOT met"
        lines += ["", f"Identical scores (scores file and every pool gradient-store chunk, bitwise): "
                  f"**{'yes' if res['identical_scores'] else 'no'}**.", "",
                  f"2 workers vs 1: **{res['speedup_2_vs_1']:.2f}×** the prompts per second (target ≥ "
                  f"{res['scaling_target']}×: **{verdict}**); {res['speedup_2_vs_1_after_actor_start']:.2f}× "
                  "counting from the moment the actors are up."]
        if not res["target_met"]:
            lines += ["", "Why: " + _why(res)]
    if res.get("collection"):
        lines += ["", "## Collection (the same pool, sampled again)", ""] + _table(res["collection"])
    lines += ["", f"The whole run took {res['elapsed_seconds']:.0f} s (stores collected or reused in "
              f"{res['stores_seconds']:.0f} s).", ""]
    return "\n".join(lines)


def _why(res: dict) -> str:
    by = {r["workers"]: r for r in res["scoring"]}
    one, two = by[1], by[2]
    text = (f"parts of each job do not shrink with more workers: the actors' start ({one['actor_start_seconds']:.1f} s "
            f"with 1 worker, {two['actor_start_seconds']:.1f} s with 2 starting at once on {res['cpu_count']} cores), "
            "the validation means (one set per worker: no more workers than sets help there) and the final pass on "
            "one actor.")
    loaded = max(max(r["load_before"][0], r["load_after"][0]) for r in res["scoring"])
    if loaded > 1:
        text += (f"  And the cores were shared: 1-minute load average up to {loaded} on {res['cpu_count']} cores during "
                 "the scoring runs")
        probes = res.get("machine_two_process_ratio") or []
        if probes:
            text += (", and two processes at once got " + " and ".join(format(p["ratio"], ".2f") for p in probes)
                     + "× what one got alone (the two-process ceiling above)")
        text += "."
    if res["speedup_2_vs_1_after_actor_start"] > 2:
        text += (f"  More than 2× after the actors' start ({res['speedup_2_vs_1_after_actor_start']:.2f}×) on "
                 f"{res['cpu_count']} cores means the two runs did not get the same machine: the other processes' load "
                 "changed between them, so at this load the ratio is noisy in both directions.")
    return text
