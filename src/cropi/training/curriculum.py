"""The CROPI curriculum's per-stage selection: behaviour stores, scoring with the current policy, drift
control and blind-spot re-probing (docs/method.md §5, and our departures from the authors' code).

``run_training`` (``runs/run.py``, and the TRL and verl stage loops) owns the loop; this module answers one question per stage — which
prompts does the stage train on — and writes the answer, with its diagnostics and its cost, to
``RUN/stages/stage-NN/selection.json`` before the stage trains, so a resumed run never re-decides.

Beyond the paper (each off by default, switched in ``select``):
- **Drift control** (``drift_ess_threshold``): POPI reweights β's samples by per-token ratios; once π_θ has
  moved far from β the sequence-level ESS collapses and the estimate is unreliable.  When the pool's median
  ESS falls below the threshold, the pool and validation trajectories are re-collected with the current
  policy (which becomes the new β) and the stage is scored again.
- **Scheduled refresh** (``refresh_every``): the same re-collection on a fixed schedule, before scoring, so
  the stored rewards (which decide which groups have a gradient at all) are the current policy's.
- **Trained-group reuse** (``reuse_rollouts``): the trainer samples a fresh group of each prompt it trains on.
  Later stages score those prompts from their latest trained group instead of β's rows, a free refresh of
  exactly the rows most out of date (``trained_groups_writer`` keeps them under ``RUN/trained/``).
- **Blind-spot re-probe** (``reprobe_prompts``): a prompt whose behaviour group had equal rewards has zero
  gradient at every later stage, so the authors' code can never select it, even after the policy has learned
  enough to make it useful.  Each stage re-samples a seeded subset of such prompts with the current policy;
  those that now get mixed rewards are scored alongside the pool.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from cropi.config import RunConfig
from cropi.errors import CropiError
from cropi.io import atomic_path, read_json, read_parquet, write_json
from cropi.policy import Policy
from cropi.rollouts.backend import make_backend
from cropi.rollouts.trajectory_store import (SCHEMA, CollectConfig, collect, collection_complete, groups_table,
                                             pass_rates, store_meta, subset_store, write_store)
from cropi.scores.engine import score_pool
from cropi.scores.ranking import selection_size
from cropi.selection import SelectionContext, Selector
from cropi.selection.baselines import select_learnability
from cropi.selection.diagnostics import selection_diagnostics
from cropi.tasks.suite import Suite

TRAINED = "trained"  # RUN/trained/step-NNNNN.parquet: the groups each GRPO step trained on (reuse_rollouts)

@dataclass
class BehaviourStores:
    pool: Path
    validation: dict[str, Path]
    collect_seconds: float


def behaviour_stores(policy: Policy, suite: Suite, cfg: RunConfig, folder: Path,
                     on_event: Callable[[dict], None] | None = None, tag: str = "base",
                     pool_ids: set[str] | None = None) -> BehaviourStores:
    """Collect (or reuse) G responses per pool and validation prompt with ``policy`` (only the pool prompts in
    ``pool_ids`` when given, in pool order).

    The seconds spent are recorded in ``folder/timing.json``, so a run reusing the stores is still charged
    for them (a comparison collects once for all its runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    timing_path = folder / "timing.json"
    timing = read_json(timing_path).get("seconds", {}) if timing_path.exists() else {}
    pool = suite.pool if pool_ids is None else [p for p in suite.pool if p.id in pool_ids]
    jobs = [("pool", pool, folder / "pool")]
    jobs += [(f"val-{name}", probs, folder / f"val-{name}") for name, probs in suite.validation.items()]
    if not suite.validation:
        raise CropiError("influence selection needs at least one validation set (data.validation_files or the "
                         "embedded suite's targeted families)")
    ccfg = CollectConfig.from_rollout(cfg.rollout)
    backend = None  # one engine for every store (a vLLM engine takes seconds to start), closed once at the end
    try:
        for name, problems, path in jobs:
            if (path / "meta.json").exists() and collection_complete(path) and name in timing:
                continue
            if on_event:
                on_event({"event": "collect", "store": name, "prompts": len(problems)})
            t0 = time.perf_counter()
            backend = backend or make_backend(ccfg.backend, policy, ccfg.batch_size)
            # rollout.seed, not train.seed: the behaviour stores are sampled once and shared by every training seed
            collect(policy, problems, path, ccfg, policy_tag=tag, backend=backend)
            timing[name] = timing.get(name, 0.0) + time.perf_counter() - t0
            write_json(timing_path, {"seconds": timing})
    finally:
        if backend is not None:
            backend.close()
    return BehaviourStores(folder / "pool", {n: folder / f"val-{n}" for n in suite.validation},
                           sum(timing.values()))


def stage_bounds(steps: int, stages: int) -> list[int]:
    """Global step at which each stage starts, plus the budget: stage s trains steps [b[s], b[s+1])."""
    return [round(i * steps / stages) for i in range(stages + 1)]


def recollect_seconds(stage_summaries: list[dict]) -> float:
    """Seconds spent sampling with the current policy after the first collection: drift control, scheduled
    refresh and blind-spot re-probes (part of each stage's selection seconds)."""
    return sum(s.get("drift", {}).get("collect_seconds", 0.0) + s.get("refresh", {}).get("collect_seconds", 0.0)
               + s.get("reprobe", {}).get("seconds", 0.0) for s in stage_summaries)


def trained_groups_writer(run_dir: Path, cfg: RunConfig) -> Callable:
    """``train_grpo``'s ``on_batch`` for ``select.reuse_rollouts``: each step's trained groups as store rows in
    ``RUN/trained/step-NNNNN.parquet`` (a resumed run redoes the same steps and rewrites the same files)."""
    folder = Path(run_dir) / TRAINED
    folder.mkdir(parents=True, exist_ok=True)

    def write(step: int, batch) -> None:
        table = groups_table([(g.problem.id, g.gens, g.rewards) for g in batch.groups], f"step-{step}",
                             cfg.rollout.temperature, cfg.rollout.top_p)
        with atomic_path(folder / f"step-{step:05d}.parquet") as tmp:
            pq.write_table(table, tmp)

    return write


def candidate_ids(cfg: RunConfig, suite: Suite, stage: int) -> list[str]:
    """The stage's seeded candidate subset (``select.candidates`` pool ids); at stage 0 static influence and
    cropi of one seed score the same one.  A pure function of (seed, stage), so a refresh can sample exactly
    the candidates of the stages it serves."""
    ids = sorted(p.id for p in suite.pool)
    random.Random(f"candidates:{cfg.train.seed}:{stage}").shuffle(ids)
    return ids[: cfg.select.candidates]


def served_candidates(cfg: RunConfig, suite: Suite, stage: int) -> set[str] | None:
    """What a collection at ``stage`` must sample: with a candidate subset, the candidates of the stages until
    the next scheduled refresh (or the end), since those stages score from this store; else the whole pool
    (None)."""
    sel = cfg.select
    if sel.candidates <= 0:
        return None
    nxt = (stage // sel.refresh_every + 1) * sel.refresh_every if sel.refresh_every > 0 else sel.stages
    return {p for s in range(stage, min(nxt, sel.stages)) for p in candidate_ids(cfg, suite, s)}


def initial_pool_ids(cfg: RunConfig, suite: Suite) -> set[str] | None:
    """The pool prompts the first behaviour store must hold: with candidates and scheduled refreshes, only those
    scored before the first refresh (a fresh collection serves the rest), else the whole pool (None)."""
    return served_candidates(cfg, suite, 0) if cfg.select.candidates > 0 and cfg.select.refresh_every > 0 else None


class Curriculum:
    """Per-stage selection for one run.  ``selection(stage)`` returns the stage's record (selected ids,
    diagnostics, seconds), computing and writing it on first use."""

    def __init__(self, cfg: RunConfig, selector: Selector, suite: Suite, policy: Policy, run_dir: Path,
                 stores: BehaviourStores | None, on_event: Callable[[dict], None] | None = None):
        self.cfg, self.selector, self.suite, self.policy = cfg, selector, suite, policy
        self.run_dir, self.stores, self.on_event = run_dir, stores, on_event

    def stage_dir(self, stage: int) -> Path:
        return self.run_dir / "stages" / f"stage-{stage:02d}"

    def _record(self, stage: int) -> dict | None:
        path = self.stage_dir(stage) / "selection.json"
        return read_json(path) if path.exists() else None

    def stage_summaries(self) -> list[dict]:
        out = []
        for stage in range(self.cfg.select.stages):
            rec = self._record(stage)
            if rec:
                out.append({k: v for k, v in rec.items() if k not in ("selected", "schema_version")})
        return out

    def selection(self, stage: int, fresh: bool) -> dict:
        rec = self._record(stage)
        if rec is not None:
            return rec
        if not fresh:
            raise CropiError(f"{self.stage_dir(stage) / 'selection.json'}: missing, but the run has trained past "
                             f"the start of stage {stage}; start the run again in a new folder")
        t0 = time.perf_counter()
        info: dict = {"stage": stage, "selector": self.selector.name}
        if stage > 0 and not self.selector.every_stage:
            selected = list(self._record(0)["selected"])
            info["reused_from_stage"] = 0
        else:
            ctx = SelectionContext(self.suite.pool, self.cfg.select.ratio, self.cfg.train.seed, stage,
                                   pass_rates=lambda: self._pass_rates(stage), influence=lambda: self._influence(stage, info),
                                   fixed_size=self.cfg.select.size)
            selected = self.selector.select(ctx)
        if not selected:
            raise CropiError(f"stage {stage}: selector {self.selector.name!r} chose no prompts")
        # the rollouts in force for this stage: a refresh or drift re-collection above replaced the older ones
        rates = (pass_rates(info["behaviour"]["pool"]) if "behaviour" in info
                 else self._pass_rates(stage) if self.stores else None)
        previous = self._record(stage - 1)["selected"] if stage > 0 else None
        # as many as a stage selects, also when a candidate refresh left rollouts for only part of the pool
        learn = select_learnability(rates, self.cfg.select.ratio, n=self._size()) if rates else None
        info["diagnostics"] = selection_diagnostics(selected, self.suite.pool, rates, previous, learn)
        if "reprobe" in info:
            info["reprobe"]["selected"] = len(set(selected) & set(info["reprobe"].get("mixed_ids", [])))
        info["seconds"] = time.perf_counter() - t0
        write_json(self.stage_dir(stage) / "selection.json", {**info, "selected": selected})
        if self.on_event:
            self.on_event({"event": "select", "stage": stage, "n": len(selected), "seconds": info["seconds"]})
        return {**info, "selected": selected}

    # -- behaviour stores in force at a stage (drift control may have replaced them) --------------------------
    def _active(self, stage: int) -> tuple[Path, dict[str, Path], list[str]]:
        for s in range(stage - 1, -1, -1):
            rec = self._record(s)
            if rec and "behaviour" in rec:
                b = rec["behaviour"]
                return Path(b["pool"]), {k: Path(v) for k, v in b["validation"].items()}, list(b["overlays"])
        assert self.stores is not None
        return self.stores.pool, dict(self.stores.validation), []

    def _pass_rates(self, stage: int) -> dict[str, float]:
        if self.stores is None:
            raise CropiError(f"selector {self.selector.name!r} needs behaviour rollouts")
        return pass_rates(self._active(stage)[0])

    # -- influence ---------------------------------------------------------------------------------------------
    def _score(self, stage: int, pool: Path, validation: dict[str, Path], overlays: list[str],
               tag: str = "") -> tuple[list[str], dict]:
        """Score the pool (with re-probed overlays replacing their prompts' rows) with the current policy: the
        stage's scores file and its fused ranking, which is what the stage trains on."""
        t0 = time.perf_counter()
        if self.cfg.select.candidates > 0:
            ids = self._candidate_ids(stage)
            pool = subset_store(pool, ids, self.stage_dir(stage) / f"candidates{tag}")
            held = int(store_meta(pool)["num_prompts"])
            if held != len(ids):  # a partial (refreshed) store must hold every candidate it is scored on
                raise CropiError(f"{pool}: holds {held} of the stage's {len(ids)} candidates")
        result = score_pool(self.policy, pool, validation, self.stage_dir(stage) / f"scores{tag}.parquet", self.cfg,
                            overlays=overlays, select_n=self._size())
        rows = result.table.to_pylist()
        # drift is judged on β's pool groups; re-probed groups are on-policy (ESS = 1)
        vals = sorted(r["ess"] for r in rows if r["usable"] and not r.get("reprobed"))
        summary = {
            "candidates": self.cfg.select.candidates or len(self.suite.pool),
            "usable": sum(r["usable"] for r in rows),
            "ess_median": statistics.median(vals) if vals else None,
            "ess_p10": vals[len(vals) // 10] if vals else None,
            "score_seconds": time.perf_counter() - t0,
            "from_reprobe": sum(bool(r.get("reprobed")) for r in rows),
            "mode": result.mode,
        }
        return result.ranking.ids, summary

    def _size(self) -> int:
        return selection_size(len(self.suite.pool), self.cfg.select.ratio, self.cfg.select.size)

    def _candidate_ids(self, stage: int) -> list[str]:
        return candidate_ids(self.cfg, self.suite, stage)

    def _served_candidates(self, stage: int) -> set[str] | None:
        return served_candidates(self.cfg, self.suite, stage)

    def _influence(self, stage: int, info: dict) -> list[str]:
        sel = self.cfg.select
        pool, validation, overlays = self._active(stage)
        if stage > 0 and sel.refresh_every > 0 and stage % sel.refresh_every == 0:
            wanted = self._served_candidates(stage)
            pool, validation, overlays, seconds = self._recollect(stage, wanted)
            info["refresh"] = {"collect_seconds": seconds, "pool_prompts": (len(wanted) if wanted is not None
                                                                            else len(self.suite.pool))}
        # after a refresh every prompt this stage can score was just sampled by this policy: nothing to reuse
        if stage > 0 and sel.reuse_rollouts and "refresh" not in info:
            reused, info["reuse"] = self._reused(stage, pool)
            if reused is not None:
                overlays = [*overlays, str(reused)]  # this stage's only: the next stage rebuilds it from every step
        if stage > 0 and sel.reprobe_prompts > 0 and "refresh" not in info:
            overlay, info["reprobe"] = self._reprobe(stage, pool, overlays)
            if overlay is not None:
                overlays.append(str(overlay))
        ranking, info["ess"] = self._score(stage, pool, validation, overlays)
        info["score_seconds"] = info["ess"]["score_seconds"]
        median = info["ess"]["ess_median"]
        if stage > 0 and sel.drift_ess_threshold > 0 and "refresh" not in info:
            fired = median is not None and median < sel.drift_ess_threshold
            info["drift"] = {"fired": fired, "ess_median": median, "threshold": sel.drift_ess_threshold}
            if fired:
                pool, validation, overlays, info["drift"]["collect_seconds"] = self._recollect(
                    stage, self._served_candidates(stage))
                ranking, info["ess"] = self._score(stage, pool, validation, overlays, tag="-after-drift")
                info["score_seconds"] += info["ess"]["score_seconds"]
        carried = [o for o in overlays if o != info.get("reuse", {}).get("store")]
        info["behaviour"] = {"pool": str(pool), "validation": {k: str(v) for k, v in validation.items()},
                             "overlays": carried}
        return ranking

    def _reused(self, stage: int, pool: Path) -> tuple[Path | None, dict]:
        """The latest trained group of every prompt the stage scores, trained since its behaviour rows were
        sampled, as an overlay store that replaces those rows (``"replaces": "all"``)."""
        t0 = time.perf_counter()
        bounds = stage_bounds(self.cfg.train.steps, self.cfg.select.stages)
        since = 0  # a refresh or drift re-collection made newer behaviour rows than the groups trained before it
        for s in range(stage - 1, -1, -1):
            rec = self._record(s)
            if rec and ("refresh" in rec or (rec.get("drift") or {}).get("fired")):
                since = bounds[s]
                break
        scored = set(self._candidate_ids(stage)) if self.cfg.select.candidates > 0 else {p.id for p in self.suite.pool}
        latest: dict[str, list[dict]] = {}
        for step in range(since, bounds[stage]):
            path = self.run_dir / TRAINED / f"step-{step:05d}.parquet"
            if not path.exists():
                raise CropiError(f"{path}: missing; the run was started without select.reuse_rollouts, or its "
                                 "trained groups were deleted; start it again in a new folder")
            rows: dict[str, list[dict]] = {}
            for r in read_parquet(path, "start the run again in a new folder").to_pylist():
                if r["prompt_id"] in scored:
                    rows.setdefault(r["prompt_id"], []).append(r)
            latest.update(rows)  # a later step's group of the same prompt wins
        info = {"prompts": len(latest), "from_step": since, "to_step": bounds[stage]}
        if not latest:
            return None, {**info, "seconds": time.perf_counter() - t0}
        table = pa.Table.from_pylist([r for rows in latest.values() for r in rows], schema=SCHEMA)
        folder = write_store(table, {**store_meta(pool), "policy_tag": f"trained-{since}-{bounds[stage]}",
                                     "replaces": "all"}, self.stage_dir(stage) / "reused")
        return folder, {**info, "store": str(folder), "seconds": time.perf_counter() - t0}

    def _recollect(self, stage: int, pool_ids: set[str] | None = None) -> tuple[Path, dict[str, Path], list[str], float]:
        """Pool (or only ``pool_ids``) and validation trajectories of the current policy for ``stage`` (refresh
        or drift control): the stores, no overlays, and the seconds spent (timing.json's total, so an
        interrupted and resumed collection is charged in full)."""
        stores = behaviour_stores(self.policy, self.suite, self.cfg, self.stage_dir(stage) / "behaviour",
                                  self.on_event, tag=f"stage-{stage}", pool_ids=pool_ids)
        return stores.pool, dict(stores.validation), [], stores.collect_seconds

    def _reprobe(self, stage: int, pool: Path, overlays: list[str]) -> tuple[Path | None, dict]:
        """Re-sample a seeded subset of zero-variance prompts with the current policy (docs/method.md §8)."""
        t0 = time.perf_counter()
        done = set()
        for o in overlays:
            done |= set(pass_rates(o))
        blind = sorted(pid for pid, p in pass_rates(pool).items() if p in (0.0, 1.0) and pid not in done)
        if self.cfg.select.candidates > 0:  # only prompts this stage scores can be selected
            allowed = set(self._candidate_ids(stage))
            blind = [pid for pid in blind if pid in allowed]
        random.Random(f"reprobe:{self.cfg.train.seed}:{stage}").shuffle(blind)
        chosen = set(blind[: self.cfg.select.reprobe_prompts])
        if not chosen:
            return None, {"probed": 0, "mixed": 0, "mixed_ids": [], "seconds": 0.0}
        problems = [p for p in self.suite.pool if p.id in chosen]
        folder = self.stage_dir(stage) / "reprobe"
        collect(self.policy, problems, folder,
                CollectConfig.from_rollout(self.cfg.rollout, self.cfg.select.reprobe_samples, seed=1000 + stage),
                policy_tag=f"stage-{stage}")
        mixed = sorted(pid for pid, p in pass_rates(folder).items() if 0 < p < 1)
        return (folder if mixed else None), {"probed": len(problems), "mixed": len(mixed), "mixed_ids": mixed,
                                             "seconds": time.perf_counter() - t0}
