"""A training run: config -> data -> policy -> [score -> select -> GRPO for S steps] x stages -> report.

It wires training, periodic greedy evaluation and the run report together, so it sits above ``training`` and
``evaluation``.

The run folder holds everything needed to understand and reproduce the result:

    config.yaml      the resolved configuration (``cropi train --config RUN/config.yaml`` reruns it)
    metrics.jsonl    one JSON line per GRPO step and per evaluation
    checkpoints/     resumable state (safetensors + JSON)
    stores/          behaviour trajectories of the starting policy (unless ``select.stores`` points elsewhere)
    stages/stage-NN/ selection.json (chosen ids, diagnostics, seconds), scores (influence selectors)
    trained/         the groups each step trained on (a re-scoring selector with select.reuse_rollouts)
    final_model/     the trained policy as an ordinary HF folder
    summary.json, report.md, accuracy.png
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import yaml

from cropi.config import RunConfig, dump_config, from_dict, to_dict, validate
from cropi.errors import ConfigError, CropiError
from cropi.evaluation.evaluate import evaluate
from cropi.runs.locks import claim, holder, release
from cropi.runs.metrics import summarize_curve
from cropi.runs.report import write_run_report
from cropi.io import append_jsonl, read_jsonl, write_json, write_text
from cropi.policy import load_configured_policy
from cropi.selection import make_batch_builder, parse_selector, resolve
from cropi.tasks.loading import load_data
from cropi.tasks.suite import Suite
from cropi.training import checkpoint
from cropi.training.curriculum import (Curriculum, behaviour_stores, initial_pool_ids, recollect_seconds, stage_bounds,
                                      trained_groups_writer)
from cropi.training.grpo import start_session, train_grpo


def resolve_selector(cfg: RunConfig) -> RunConfig:
    """``cfg`` as the run will store and run it (``cropi.selection.resolve``)."""
    return resolve(cfg)


def same_config(stored: str, cfg: RunConfig) -> bool:
    """Whether a run folder's stored config is ``cfg``.  A key added to cropi after the run started reads as its
    default, so the run resumes where that default is what it would run with."""
    if stored == dump_config(cfg):
        return True
    try:
        return dump_config(from_dict(RunConfig, yaml.safe_load(stored) or {})) == dump_config(cfg)
    except (yaml.YAMLError, ConfigError, TypeError, AttributeError):  # not a config of this version: not the same
        return False


def check_run(cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> Suite:
    """Everything that can refuse a run of a loaded (validated) config, before it writes anything: the selector,
    the data files and the run folder (an existing one needs ``resume`` and the same config).  Returns the
    loaded data, for ``run_training``."""
    cfg = resolve_selector(cfg)
    suite = load_data(cfg.data)
    evaluation_sets(cfg, suite)  # an evaluation split with nothing in it stops here
    check_run_dir(cfg, run_dir, resume)
    return suite


def check_run_dir(cfg: RunConfig, run_dir: str | Path, resume: bool) -> None:
    """A run folder may be written by one process at a time, and an existing one only resumed with its own
    config."""
    live = holder(Path(run_dir))
    if live is not None and live != os.getpid():
        raise CropiError(f"{run_dir}: another cropi process (pid {live}) is writing this run folder; wait for it "
                         "to finish or stop it, then resume")
    cfg_path = Path(run_dir) / "config.yaml"
    if cfg_path.exists():
        if not resume:
            raise CropiError(f"{run_dir}: run folder already exists; pass --resume to continue it or choose a new --out")
        if not same_config(cfg_path.read_text(), cfg):
            raise CropiError(f"{cfg_path}: this run was started with a different config; resume with "
                             f"--config {cfg_path} and no overrides")


def _prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool) -> int:
    """Write the resolved config; on resume trim metrics past the last checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    text = dump_config(cfg)
    done = 0
    if resume:
        latest = checkpoint.latest(run_dir / "checkpoints")
        done = int(latest.name.split("-")[1]) if latest else 0
    write_text(cfg_path, text)
    metrics = run_dir / "metrics.jsonl"
    # Rows logged after the last checkpoint are redone by the resumed run (with done == 0, everything is).
    rows = [r for r in read_jsonl(metrics) if done > 0 and r.get("step", 0) <= done]
    write_text(metrics, "".join(json.dumps(r) + "\n" for r in rows))
    return done


def seconds_by_kind(state, collect_seconds: float, stage_info: list[dict]) -> dict[str, float]:
    """Where a run's charged seconds went.  rollouts: sampling the trained groups; refills: groups sampled and
    dropped; screening: the screening samples (online_filter, online_influence); collection: behaviour stores, refreshes,
    drift re-collections and re-probes; scoring: influence scoring (per stage, and a batch rule's per step);
    selection: the rest of choosing a stage's
    prompts; training: the updates.  They add up to the seconds axis of the curves."""
    collection = collect_seconds + recollect_seconds(stage_info)
    scoring = sum(s.get("score_seconds", 0.0) for s in stage_info)
    kinds = {"rollouts": state.rollout_seconds, "refills": state.refill_seconds, "screening": state.screen_seconds,
             "collection": collection, "scoring": scoring + state.step_score_seconds,
             "selection": max(0.0, state.select_seconds - collection - scoring), "training": state.update_seconds}
    return {k: round(v, 2) for k, v in kinds.items()}


def evaluation_sets(cfg: RunConfig, suite: Suite) -> dict:
    """The sets a run is evaluated on (``eval.split``).  validation_unscored drops each validation set's first
    ``select.score.max_val_prompts`` prompts, exactly those that the ``online_influence`` rule reads.
    cropi's scoring reads the first that many *usable* prompts of its stores, which
    reach past them where some groups had equal rewards: for it the split is only mostly unscored."""
    if cfg.eval.split == "test":
        return suite.test
    if cfg.eval.split == "validation":
        return suite.validation
    k = cfg.select.score.max_val_prompts
    out = {name: list(probs)[k:] for name, probs in suite.validation.items()}
    empty = [name for name, probs in out.items() if not probs]
    if empty:
        raise ConfigError(f"eval.split=validation_unscored: validation set {empty[0]!r} has no prompts beyond the "
                          f"first select.score.max_val_prompts={k}")
    return out


def run_training(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    on_event: Callable[[dict], None] | None = None,
    suite: Suite | None = None,
) -> dict:
    """Train with ``cfg`` into ``run_dir`` and return the summary (also written to ``summary.json``).  ``suite``:
    the data ``check_run`` loaded (a caller that checked the run passes it, so the data is read once).

    The curriculum (docs/method.md §5): for each of ``select.stages`` stages — select prompts with the selector
    (scoring with the current policy where it needs influence), then GRPO on them up to the stage's end step,
    evaluating every ``train.eval_every`` steps.  Per-stage artefacts go to ``RUN/stages/stage-NN/``.  Resumable
    at step granularity: a stage's selection is written before it trains, and the policy it was made with is
    the checkpoint at the stage boundary."""
    run_dir = Path(run_dir)
    if suite is None:  # a config built in Python gets the same checks as one loaded from a file
        suite = check_run(validate(cfg), run_dir, resume)
    cfg = resolve_selector(cfg)
    # one writer per run folder: the lock is taken before anything is written, and the folder checked again
    # under it (a comparison that claimed the folder already holds it)
    owned = holder(run_dir) == os.getpid()
    if not owned and not claim(run_dir):
        check_run_dir(cfg, run_dir, resume)  # names the live holder
        raise CropiError(f"{run_dir}: another cropi process is writing this run folder")
    try:
        check_run_dir(cfg, run_dir, resume)
        return _train_run(cfg, suite, run_dir, resume, on_event)
    finally:
        if not owned:
            release(run_dir)


def _train_run(cfg: RunConfig, suite: Suite, run_dir: Path, resume: bool,
               on_event: Callable[[dict], None] | None) -> dict:
    selector = parse_selector(cfg.train.selector)[0]
    eval_sets = evaluation_sets(cfg, suite)
    policy = load_configured_policy(cfg.model)
    done = _prepare_run_dir(run_dir, cfg, resume)
    metrics_path = run_dir / "metrics.jsonl"

    last_items: dict = {}

    def evaluate_fn(pol, step: int) -> dict:
        r = evaluate(pol, eval_sets, suite.targeted, cfg.eval.max_new_tokens, cfg.eval.batch_size)
        last_items.update(step=step, items=r.items)
        return r.to_dict()

    def log(row: dict) -> None:
        append_jsonl(metrics_path, row)
        if on_event:
            on_event(row)

    t0 = time.time()
    # Behaviour stores come from the *starting* policy, so they are made before a checkpoint is loaded.
    stores = None
    if selector.needs_rollouts:
        folder = Path(cfg.select.stores) if cfg.select.stores else run_dir / "stores"
        served = initial_pool_ids(cfg, suite)
        if served is not None:  # a store of this run's first candidates only: not the shared whole-pool one
            folder = run_dir / "stores"
        stores = behaviour_stores(policy, suite, cfg, folder, on_event=on_event, pool_ids=served)
    session = start_session(policy, cfg.train, run_dir)
    if cfg.train.filter.method != "none":
        session.batches = make_batch_builder(cfg, suite.validation)
    state = session.state
    if state.step == 0 and stores is not None:
        state.select_seconds = stores.collect_seconds  # charged even when the stores were reused
    curriculum = Curriculum(cfg, selector, suite, policy, run_dir, stores, on_event)
    bounds = stage_bounds(cfg.train.steps, cfg.select.stages)
    # the trained groups become behaviour rows where a rule re-scores from them or harvests as it trains
    writes_trained = (cfg.select.reuse_rollouts and selector.every_stage) or hasattr(session.batches, "harvested")
    on_batch = trained_groups_writer(run_dir, cfg) if writes_trained else None
    for stage in range(cfg.select.stages):
        start, end = bounds[stage], bounds[stage + 1]
        if state.step >= end:
            continue
        choice = curriculum.selection(stage, fresh=state.step == start)
        if state.step == start:
            state.select_seconds += choice["seconds"]
        by_id = {p.id: p for p in suite.pool}
        problems = [by_id[i] for i in choice["selected"]]
        train_grpo(policy, problems, cfg.train, cfg.rollout, run_dir, evaluate_fn, log=log, steps=end,
                   session=session, on_batch=on_batch)
    if last_items.get("step") == state.step:  # per-problem rewards of the final evaluation (paired SEs)
        write_json(run_dir / "final_eval_items.json", last_items)
    policy.model.save_pretrained(run_dir / "final_model", safe_serialization=True)
    policy.tokenizer.save_pretrained(run_dir / "final_model")

    rows = read_jsonl(metrics_path)
    curve = [{"step": r["step"], "targeted": r["targeted"], "untargeted": r["untargeted"], "seconds": r["seconds"]}
             for r in rows if r.get("event") == "eval"]
    last_eval = [r for r in rows if r.get("event") == "eval"][-1]
    stage_info = curriculum.stage_summaries()
    summary = {
        "selector": cfg.train.selector,
        "seed": cfg.train.seed,
        "steps": state.step,
        "stages": cfg.select.stages,
        "select_ratio": cfg.select.ratio,
        "train_seconds": round(state.train_seconds, 2),
        "collect_seconds": round(stores.collect_seconds, 2) if stores else 0.0,
        "recollect_seconds": round(recollect_seconds(stage_info), 2),
        "select_seconds": round(state.select_seconds, 2),
        "score_seconds": round(sum(s.get("score_seconds", 0.0) for s in stage_info), 2),
        "seconds_by_kind": seconds_by_kind(state, stores.collect_seconds if stores else 0.0, stage_info),
        "filter": cfg.train.filter.method,
        "sampled_sequences": state.sampled_sequences,
        "skipped_prompts": state.skipped_prompts,
        "curve": curve,
        **summarize_curve(curve),
        "stage_summaries": stage_info,
        "model": cfg.model.name,
        "prompts_per_step": cfg.train.prompts_per_step,
        "group_size": cfg.rollout.group_size,
        "steps_per_minute": 60 * state.step / state.train_seconds if state.train_seconds else None,
        "rollout_tokens_per_second": state.response_tokens / state.rollout_seconds if state.rollout_seconds else None,
        "eval_n": last_eval.get("n"),
        "per_family_final": last_eval.get("per_family"),
        "resumed_from_step": done,
        "elapsed_seconds_this_invocation": round(time.time() - t0, 1),
        "config": to_dict(cfg),
    }
    write_run_report(run_dir, summary)
    return summary
