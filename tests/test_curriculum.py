"""Selectors on a toy pool with known answers; the curriculum driver's stages, artefacts and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from cropi.config import load_config
from cropi.selection import RULES, SelectionContext, make_selector
from cropi.tasks.problem import Problem
from tests.conftest import small_suite_overrides

# -- selectors on a toy pool ---------------------------------------------------------------------------------

RATES = {f"p{i}": r for i, r in enumerate([0.0, 0.125, 0.25, 0.5, 0.5, 0.75, 0.875, 1.0, 1.0, 0.0] * 2)}
POOL = [Problem(pid, "1+1=", "2", "add") for pid in RATES]
INFLUENCE = sorted(RATES, key=lambda p: -int(p[1:]))  # a known ranking: highest index first


def _ctx(ratio=0.2, seed=0, stage=0):
    return SelectionContext(POOL, ratio, seed, stage, pass_rates=lambda: RATES, influence=lambda: list(INFLUENCE))


def test_learnability_ranks_half_solved_first():
    chosen = make_selector("learnability").select(_ctx(ratio=0.2))
    assert len(chosen) == 4 and all(RATES[p] == 0.5 for p in chosen)


def test_pass_rate_never_picks_always_or_never_solved():
    for seed in range(5):
        chosen = make_selector("pass_rate").select(_ctx(ratio=0.4, seed=seed))
        assert len(chosen) == 8 and all(0 < RATES[p] < 1 for p in chosen)
    # with more room than eligible prompts it takes every eligible one and nothing else
    chosen = make_selector("pass_rate").select(_ctx(ratio=1.0))
    assert sorted(chosen) == sorted(p for p, r in RATES.items() if 0 < r < 1)


def test_random_full_and_influence_selectors():
    r0 = make_selector("random").select(_ctx(seed=0))
    assert len(r0) == 4 and len(set(r0)) == 4 and r0 == make_selector("random").select(_ctx(seed=0))
    assert r0 != make_selector("random").select(_ctx(seed=1))
    assert sorted(make_selector("full").select(_ctx())) == sorted(RATES)
    for name in ("static_influence", "cropi"):
        assert make_selector(name).select(_ctx(ratio=0.2)) == INFLUENCE[:4]
    assert RULES["cropi"].every_stage and not RULES["static_influence"].every_stage


def test_unknown_selector_is_a_config_error():
    from cropi.errors import ConfigError

    with pytest.raises(ConfigError, match="learnability"):
        make_selector("bogus")


# -- the curriculum driver -----------------------------------------------------------------------------------


def _sets(model_dir, selector="cropi", steps=6, stages=3, **extra):
    # The embedded tiny policy (not the random micro model): influence needs mixed reward groups, in the
    # validation sets too, and a random policy never solves an arithmetic problem.
    return small_suite_overrides() + [
        "data.suite.val_size=16", "model.name=tiny", "model.device=cpu", f"train.selector={selector}",
        f"train.steps={steps}", f"select.stages={stages}", "select.ratio=0.25", "train.prompts_per_step=4",
        "rollout.group_size=8", "rollout.max_new_tokens=8", "eval.max_new_tokens=8", "train.eval_every=2",
        "train.checkpoint_every=1",
        "train.lr=3e-3", "select.score.k=256", "select.score.max_val_prompts=8",
        "select.candidates=0", "select.size=0",  # the whole pool scored, the ratio kept: the authors' regime
    ] + [f"{k}={v}" for k, v in extra.items()]


def test_cropi_stages_write_artefacts(micro_model_dir, tmp_path):
    from cropi.runs.run import run_training

    summary = run_training(load_config(None, _sets(micro_model_dir)), tmp_path / "run")
    run = tmp_path / "run"
    recs = [json.loads((run / "stages" / f"stage-{s:02d}" / "selection.json").read_text()) for s in range(3)]
    for s, rec in enumerate(recs):
        assert rec["schema_version"] == 1 and rec["stage"] == s and 0 < len(rec["selected"]) <= 10
        d = rec["diagnostics"]
        assert sum(d["families"].values()) == len(rec["selected"])
        assert sum(d["pass_rate_hist"].values()) == len(rec["selected"])
        assert d["pass_rate_hist"]["0"] == d["pass_rate_hist"]["1"] == 0  # zero-variance groups have no gradient
        assert rec["ess"]["usable"] > 0 and (s > 0 or rec["ess"]["ess_median"] == pytest.approx(1.0))
        assert (run / "stages" / f"stage-{s:02d}" / "scores.parquet").exists()
    assert recs[0]["diagnostics"]["overlap_previous"] is None and recs[1]["diagnostics"]["overlap_previous"] is not None
    assert [c["step"] for c in summary["curve"]] == [0, 2, 4, 6]
    assert summary["collect_seconds"] > 0 and summary["score_seconds"] > 0
    # the curve's seconds include collection and scoring, not only training
    assert summary["curve"][0]["seconds"] >= summary["collect_seconds"]
    assert summary["select_seconds"] >= summary["collect_seconds"] + summary["score_seconds"] - 1e-6
    assert len(summary["stage_summaries"]) == 3


def test_each_stage_trains_on_its_scores_files_fused_ranking_made_with_the_trained_policy(micro_model_dir, tmp_path):
    from cropi.policy import load_policy, model_fingerprint
    from cropi.runs.run import run_training

    run_training(load_config(None, _sets(micro_model_dir)), tmp_path / "run")
    # the policy after the first 2 steps, from a run that stops there (same seed, same stage-0 choice)
    run_training(load_config(None, _sets(micro_model_dir, steps=2, stages=1)), tmp_path / "two")
    after_stage0 = model_fingerprint(load_policy(str(tmp_path / "two" / "final_model"), device="cpu").model)
    base = model_fingerprint(load_policy("tiny", device="cpu").model)
    prints = []
    for s in range(3):
        stage = tmp_path / "run" / "stages" / f"stage-{s:02d}"
        table = pq.read_table(stage / "scores.parquet")
        meta = json.loads(table.schema.metadata[b"cropi"])
        ranked = sorted((r, p) for p, r in zip(table.column("prompt_id").to_pylist(),
                                               table.column("fused_rank").to_pylist()) if r is not None)
        selected = json.loads((stage / "selection.json").read_text())["selected"]
        assert [p for _, p in ranked] == selected and meta["select_n"] == 10 and meta["mode"] == "exact"  # auto: the tiny policy's means fit
        prints.append(meta["model_fingerprint"])
    assert prints[0] == base and prints[1] == after_stage0 and len(set(prints)) == 3


def test_static_selectors_choose_once(micro_model_dir, tmp_path):
    from cropi.runs.run import run_training

    run_training(load_config(None, _sets(micro_model_dir, "static_influence", steps=4, stages=2)), tmp_path / "s")
    a, b = (json.loads((tmp_path / "s" / "stages" / f"stage-{s:02d}" / "selection.json").read_text()) for s in (0, 1))
    assert a["selected"] == b["selected"] and b["reused_from_stage"] == 0 and b["seconds"] < a["seconds"]


def test_drift_control_fires_exactly_when_the_median_ess_is_below_the_threshold(micro_model_dir, tmp_path):
    from cropi.runs.run import run_training
    from cropi.rollouts.trajectory_store import pass_rates, store_meta

    extra = {"select.candidates": 30, "select.reprobe_prompts": 6, "select.reprobe_samples": 4}
    recs = {}
    for name, threshold in (("never", 1e-9), ("always", 1.0)):
        sets = _sets(micro_model_dir, steps=4, stages=2, **{"select.drift_ess_threshold": threshold, **extra})
        run_training(load_config(None, sets), tmp_path / name)
        recs[name] = json.loads((tmp_path / name / "stages" / "stage-01" / "selection.json").read_text())
    for name, rec in recs.items():  # the median drift control judged is the one of the stage's scores file
        table = pq.read_table(tmp_path / name / "stages" / "stage-01" / "scores.parquet").to_pylist()
        ess = sorted(r["ess"] for r in table if r["usable"] and not r.get("reprobed"))
        median = (ess[len(ess) // 2] if len(ess) % 2 else (ess[len(ess) // 2 - 1] + ess[len(ess) // 2]) / 2)
        assert rec["drift"]["ess_median"] == pytest.approx(median) and 0 < median < 1
    assert not recs["never"]["drift"]["fired"] and "collect_seconds" not in recs["never"]["drift"]
    assert not (tmp_path / "never" / "stages" / "stage-01" / "behaviour").exists()
    rec = recs["always"]
    assert rec["drift"]["fired"] and rec["drift"]["collect_seconds"] > 0
    assert rec["behaviour"]["pool"].endswith("stage-01/behaviour/pool")
    assert rec["reprobe"]["probed"] == 6 and 0 <= rec["reprobe"]["selected"] <= rec["reprobe"]["mixed"]
    assert rec["ess"]["candidates"] == 30 and rec["ess"]["usable"] <= 30 + rec["reprobe"]["mixed"]
    # only the stage's candidates are re-probed (others could never be selected), and drift re-collects only them
    stage1 = tmp_path / "always" / "stages" / "stage-01"
    candidates = set(pass_rates(stage1 / "candidates"))
    assert set(pass_rates(stage1 / "reprobe")) <= candidates
    assert set(pass_rates(rec["behaviour"]["pool"])) == candidates and store_meta(rec["behaviour"]["pool"])["num_prompts"] == 30
    assert (stage1 / "scores-after-drift.parquet").exists()


def test_reprobed_prompts_of_earlier_stages_outside_the_candidates_cannot_be_chosen(micro_model_dir, tmp_path):
    from cropi.runs.run import run_training

    sets = _sets(micro_model_dir, steps=6, stages=3, **{"select.candidates": 20, "select.reprobe_prompts": 8,
                                                          "select.reprobe_samples": 4})
    run_training(load_config(None, sets), tmp_path / "c")
    for s in range(3):
        stage = tmp_path / "c" / "stages" / f"stage-{s:02d}"
        rec = json.loads((stage / "selection.json").read_text())
        candidates = set(pq.read_table(stage / "scores.parquet").column("prompt_id").to_pylist())
        assert len(candidates) == 20 and set(rec["selected"]) <= candidates


def test_scheduled_refresh_recollects_before_scoring(micro_model_dir, tmp_path):
    from cropi.runs.run import run_training

    from cropi.rollouts.trajectory_store import pass_rates, store_meta

    sets = _sets(micro_model_dir, steps=4, stages=4, **{"select.refresh_every": 2, "select.candidates": 20,
                                                          "select.drift_ess_threshold": 1.0})
    run_training(load_config(None, sets), tmp_path / "r")
    recs = [json.loads((tmp_path / "r" / "stages" / f"stage-{s:02d}" / "selection.json").read_text()) for s in range(4)]
    assert "refresh" not in recs[1] and recs[1]["drift"]["fired"]  # drift still guards the stages in between
    assert recs[2]["refresh"]["collect_seconds"] > 0 and "drift" not in recs[2]  # scored once, on fresh rollouts
    assert recs[2]["behaviour"]["pool"].endswith("stage-02/behaviour/pool")
    assert recs[2]["ess"]["ess_median"] == pytest.approx(1.0)  # the current policy is the behaviour policy
    assert not (tmp_path / "r" / "stages" / "stage-02" / "scores-after-drift.parquet").exists()
    # diagnostics read the refreshed rollouts: every chosen prompt has mixed rewards in them
    hist = recs[2]["diagnostics"]["pass_rate_hist"]
    assert hist["0"] == hist["1"] == 0 and sum(hist.values()) == len(recs[2]["selected"])
    # with a candidate subset the refresh samples only the candidates of the stages it serves (2 and 3) ...
    stage3 = tmp_path / "r" / "stages" / "stage-03"
    served = set(pass_rates(tmp_path / "r" / "stages" / "stage-02" / "candidates")) | set(pass_rates(stage3 / "candidates"))
    assert len(served) > 20 and recs[2]["refresh"]["pool_prompts"] == len(served)
    assert store_meta(recs[2]["behaviour"]["pool"])["num_prompts"] == len(served) < 40  # the pool holds 40
    # ... so stage 3 scores its own candidates on the refreshed rollouts before drift control re-collects
    assert (stage3 / "scores.parquet").exists() and recs[3]["drift"]["fired"]
    assert pq.read_table(stage3 / "scores.parquet").num_rows == 20
    # drift control at stage 3 re-collects only what the stages until the next refresh score: stage 3's candidates
    assert set(pass_rates(recs[3]["behaviour"]["pool"])) == set(pass_rates(stage3 / "candidates-after-drift"))
    # learnability overlap is measured against a full-size learnability choice (top 10 = 0.25 x the 40-prompt
    # pool, from the 20-odd refreshed prompts), not the top quarter of the refreshed store
    from cropi.selection.baselines import select_learnability

    learn = select_learnability(pass_rates(recs[2]["behaviour"]["pool"]), 0.25, n=10)
    chosen = set(recs[2]["selected"])
    assert recs[2]["diagnostics"]["overlap_learnability"] == pytest.approx(len(chosen & set(learn)) / len(chosen))


_CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    import cropi.training.grpo as grpo
    from cropi.config import load_config
    from cropi.runs.run import run_training
    kill_at = int(os.environ.get("KILL_AT_CALL", "0"))
    calls = [0]
    real = grpo.policy_loss
    def policy_loss(*a, **k):  # the loss of a GRPO update: dying here is dying mid-step
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    grpo.policy_loss = policy_loss
    run_training(load_config(None, sys.argv[2:]), sys.argv[1], resume=os.environ.get("RESUME") == "1")
""")


def _child(run, sets, **env):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    return subprocess.run([sys.executable, "-c", _CHILD, str(run), *sets], env=e, capture_output=True, text=True)


def test_sigkill_mid_step_then_resume_is_bitwise_equal(micro_model_dir, tmp_path):
    sets = _sets(micro_model_dir, steps=6, stages=3)
    ref = _child(tmp_path / "ref", sets)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # one update per step: the 4th loss call is step 4, inside stage 1 (steps 2-3), after the step-3 checkpoint
    killed = _child(tmp_path / "run", sets, KILL_AT_CALL="4")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "final_model").exists()
    resumed = _child(tmp_path / "run", sets, RESUME="1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "ref" / "final_model" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "final_model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sel = lambda r, s: json.loads((r / "stages" / f"stage-{s:02d}" / "selection.json").read_text())["selected"]
    assert all(sel(tmp_path / "ref", s) == sel(tmp_path / "run", s) for s in range(3))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and [c["step"] for c in summary["curve"]] == [0, 2, 4, 6]


def test_reuse_scores_trained_prompts_from_their_latest_trained_group(micro_model_dir, tmp_path):
    """select.reuse_rollouts: every step's trained groups are kept; the next stage scores each trained prompt
    from its latest group (an on-policy row then), and one whose latest group had equal rewards is left out."""
    from cropi.runs.run import run_training
    from cropi.rollouts.trajectory_store import prompt_groups, read_store

    run = tmp_path / "r"
    run_training(load_config(None, _sets(micro_model_dir, steps=4, stages=2, **{"select.reuse_rollouts": True})), run)
    steps = [pq.read_table(run / "trained" / f"step-{s:05d}.parquet").to_pylist() for s in range(4)]
    assert all(len(rows) == 4 * 8 for rows in steps)  # prompts_per_step x G rows each
    latest = {}
    for rows in steps[:2]:  # stage 1 starts at step 2: it sees the groups of steps 0 and 1
        latest.update({g.prompt_id: g for g in prompt_groups(rows)})
    rec = json.loads((run / "stages" / "stage-01" / "selection.json").read_text())
    assert rec["reuse"]["prompts"] == len(latest) and (rec["reuse"]["from_step"], rec["reuse"]["to_step"]) == (0, 2)
    assert "reuse" not in json.loads((run / "stages" / "stage-00" / "selection.json").read_text())
    reused = {g.prompt_id: g for g in prompt_groups(read_store(rec["reuse"]["store"]).to_pylist())}
    assert reused.keys() == latest.keys()
    # this seed's groups hold both kinds, so both branches below are checked
    assert {g.zero_variance for g in latest.values()} == {True, False}
    for pid, g in latest.items():  # the overlay holds exactly the latest trained group
        assert reused[pid].rewards == g.rewards and reused[pid].response_ids == g.response_ids
    table = pq.read_table(run / "stages" / "stage-01" / "scores.parquet").to_pylist()
    rows = {r["prompt_id"]: r for r in table}
    for pid, g in latest.items():
        assert rows[pid]["reprobed"] and rows[pid]["usable"] == (not g.zero_variance)
        if g.zero_variance:  # learned (or hopeless) since β sampled it: no score, cannot be chosen
            assert rows[pid]["fused_rank"] is None and pid not in rec["selected"]
    assert not any(r["reprobed"] for pid, r in rows.items() if pid not in latest)
    # the carried behaviour is β's: the next stage rebuilds the overlay from every step
    assert rec["behaviour"]["overlays"] == []
