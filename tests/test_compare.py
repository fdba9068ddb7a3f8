"""`cropi compare`: acceleration arithmetic against hand-computed values, the report, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cropi.io import read_jsonl
from cropi.runs.metrics import compute_results, first_crossing, paired_se, smooth
from cropi.runs.report import write_comparison_report


def _curve(ys, dt=10.0, t0=0.0):
    return [{"step": 10 * i, "targeted": y, "untargeted": 0.5, "seconds": t0 + dt * i} for i, y in enumerate(ys)]


def test_smooth_and_first_crossing():
    assert smooth([0, 3, 6, 9]) == [1.5, 3, 6, 7.5]
    assert first_crossing([0, 10, 20], [0.1, 0.3, 0.5], 0.4) == pytest.approx(15.0)
    assert first_crossing([0, 10], [0.5, 0.6], 0.4) == 0.0
    assert first_crossing([0, 10], [0.1, 0.2], 0.4) is None


def test_accelerations_match_hand_computation():
    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast = [0.30, 0.40, 0.44, 0.45, 0.45, 0.45, 0.45]
    never = [0.30, 0.31, 0.32, 0.32, 0.32, 0.32, 0.32]
    summaries = {
        "full": {0: {"curve": _curve(full)}, 1: {"curve": _curve(full)}},
        "cropi": {0: {"curve": _curve(fast, t0=30.0), "collect_seconds": 20.0, "score_seconds": 10.0}},
        "random": {0: {"curve": _curve(never)}},
    }
    r = compute_results(summaries, "test machine", 60)
    # full smoothed: [.315,.33,.36,.39,.41,.42,.42] -> threshold .42, first reached at step 50 (t = 50 s)
    assert r["threshold_targeted"] == pytest.approx(0.42)
    assert r["full_steps_to_threshold"] == pytest.approx(50.0)
    # cropi smoothed: [.35,.38,.43,...]: crosses .42 between step 10 (.38) and 20 (.43) at 18
    row = r["selectors"]["cropi"]["seeds"]["0"]
    assert row["steps_to_threshold"] == pytest.approx(18.0)
    assert row["step_acceleration"] == pytest.approx(50 / 18)
    assert row["seconds_to_threshold"] == pytest.approx(30 + 18.0)  # seconds = 30 + step
    assert row["wall_acceleration"] == pytest.approx(50 / 48)
    assert row["final_targeted"] == pytest.approx(0.45) and row["best_targeted"] == 0.45
    assert r["selectors"]["random"]["seeds"]["0"]["step_acceleration"] is None
    assert r["selectors"]["random"]["median"]["step_acceleration"] is None
    assert r["selectors"]["full"]["median"]["step_acceleration"] == pytest.approx(1.0)
    for key in ("schema_version", "machine", "budget_steps", "selectors"):
        assert key in r


def test_run_at_threshold_from_its_first_evaluation_is_reached_not_never():
    """A crossing at step 0 is a real value: a run already at the threshold at its first evaluation must not be
    reported as never reaching it (0.0 is falsy), and its acceleration, with no steps to divide by, is the
    documented lower bound over the first evaluation interval."""
    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    summaries = {"full": {0: {"curve": _curve(full)}},
                 "cropi": {0: {"curve": _curve([0.45] * 7)}}}  # smoothed 0.45 >= 0.42 at step 0, t = 0 s
    row = compute_results(summaries, "m", 60)["selectors"]["cropi"]["seeds"]["0"]
    assert row["steps_to_threshold"] == 0.0 and row["seconds_to_threshold"] == 0.0
    # full data reaches 0.42 at step 50 / 50 s; the first evaluation interval is 10 steps / 10 s
    assert row["step_acceleration"] == pytest.approx(5.0) and row["step_acceleration_is_lower_bound"]
    assert row["wall_acceleration"] == pytest.approx(5.0) and row["wall_acceleration_is_lower_bound"]


def test_full_data_at_threshold_from_the_start_gives_zero_or_equal_acceleration(tmp_path):
    """Full data already at its best at step 0 (S_full = 0): a run that needs steps is 0x as fast, a run there
    from the start too is as fast (1x) — neither is "never"."""
    flat = [0.42, 0.42, 0.40, 0.38]  # smoothed [.42, .413, .40, .39]: threshold .42 at step 0
    summaries = {"full": {0: {"curve": _curve(flat)}}, "cropi": {0: {"curve": _curve([0.30, 0.50, 0.50, 0.50])}}}
    r = compute_results(summaries, "m", 30)
    assert r["full_steps_to_threshold"] == 0.0
    cropi, full = r["selectors"]["cropi"]["seeds"]["0"], r["selectors"]["full"]["seeds"]["0"]
    assert cropi["steps_to_threshold"] is not None and cropi["step_acceleration"] == 0.0
    assert full["step_acceleration"] == 1.0 and not full["step_acceleration_is_lower_bound"]
    assert r["partial_gain"]["0.5"]["selectors"]["full"]["median_step_acceleration"] == 1.0
    write_comparison_report(r, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| full | 1.00× | 1.00× |" in text


def test_later_collections_are_charged_as_collection():
    stages = [{"stage": 0}, {"stage": 1, "refresh": {"collect_seconds": 7.0}},
              {"stage": 2, "drift": {"fired": True, "collect_seconds": 3.0}, "reprobe": {"seconds": 2.0}}]
    summaries = {"full": {0: {"curve": _curve([0.3, 0.4, 0.5])}},
                 "cropi": {0: {"curve": _curve([0.3, 0.45, 0.5]), "collect_seconds": 20.0, "stage_summaries": stages}}}
    row = compute_results(summaries, "m", 20)["selectors"]["cropi"]["seeds"]["0"]
    assert row["collect_seconds"] == pytest.approx(20.0 + 7.0 + 3.0 + 2.0)


def test_paired_se():
    a = {"a1": 1.0, "a2": 0.0, "a3": 1.0, "a4": 1.0}
    b = {"a1": 1.0, "a2": 0.0, "a3": 0.0, "a4": 1.0}
    # differences 0,0,1,0: sd = 0.5, n = 4 -> 0.25; one family
    assert paired_se(a, b, {"add": ["a1", "a2", "a3", "a4"]}) == pytest.approx(0.25)
    assert paired_se(a, a, {"add": list(a)}) == 0.0


def test_report_from_a_small_results_file(tmp_path):
    summaries = {"full": {0: {"curve": _curve([0.3, 0.35, 0.4])}},
                 "cropi": {0: {"curve": _curve([0.3, 0.42, 0.45]), "collect_seconds": 5.0, "score_seconds": 2.0}}}
    r = compute_results(summaries, "m", 20)
    write_comparison_report(r, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| cropi |" in text and "## Overhead" in text and "accuracy_vs_steps.png" in text
    assert "## Targets" in text and "step-level acceleration >= 3.0x" in text
    assert (tmp_path / "accuracy_vs_steps.png").stat().st_size > 0 and (tmp_path / "accuracy_vs_seconds.png").exists()


def test_without_the_overhead_divides_each_runs_wall_acceleration_by_its_bare_share(tmp_path):
    """The overhead table: share = overhead / charged seconds (seed mean); without it = median over seeds of
    wall acceleration / (1 - share), each run against full data on its own machine."""
    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]  # full reaches the threshold at 50 s
    fast = [0.30, 0.40, 0.44, 0.45, 0.45, 0.45, 0.45]  # crosses at step 18; at 18 * 2 = 36 s with dt = 20
    kinds = {"rollouts": 10.0, "refills": 5.0, "screening": 15.0, "collection": 0.0, "scoring": 20.0,
             "selection": 0.0, "training": 50.0}  # overhead 40 of 100 s
    summaries = {"full": {0: {"curve": _curve(full)}},
                 "cropi": {0: {"curve": _curve(fast, dt=20.0), "seconds_by_kind": kinds}},
                 "random": {0: {"curve": _curve(fast)}}}
    r = compute_results(summaries, "m", 60)
    wall = r["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"]
    assert wall == pytest.approx(50.0 / 36.0)
    write_comparison_report(r, tmp_path)
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## Overhead"):]
    assert f"| cropi | 40% | {wall:.2f}× | {wall / 0.6:.2f}× |" in section
    assert "| random |" not in section and "| full |" not in section  # no overhead, no row
    # the per-seed table splits the same seconds: extra sampling 20, scoring 20, training 60
    assert "| cropi | 0 | unrecord | 18 | 36 | 45.0 | 20 | 20 | 60 |" in text


def test_training_signal_per_stage_and_its_report_table(tmp_path):
    from cropi.runs.metrics import training_signal

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"event": "step", "step": t, "reward_mean": 0.1 * t, "mixed_groups": 1.0 if t <= 2 else 0.5}
            for t in range(1, 5)] + [{"event": "eval", "step": 4, "targeted": 0.4}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sig = training_signal(read_jsonl(metrics), stages=2, steps=4)  # stage 0: steps 1-2, stage 1: steps 3-4
    assert [s["stage"] for s in sig] == [0, 1] and [s["end_step"] for s in sig] == [2, 4]
    # stages that do not divide the budget follow the trainer's bounds (round(i * steps / stages)): 0, 2, 3, 5
    odd = tmp_path / "odd.jsonl"
    odd.write_text("\n".join(json.dumps({"event": "step", "step": t, "reward_mean": float(t), "mixed_groups": 1.0})
                             for t in range(1, 6)) + "\n")
    assert [(s["end_step"], s["reward_mean"]) for s in training_signal(read_jsonl(odd), stages=3, steps=5)] == \
        [(2, 1.5), (3, 3.0), (5, 4.5)]
    assert sig[0]["reward_mean"] == pytest.approx(0.15) and sig[1]["reward_mean"] == pytest.approx(0.35)
    assert sig[0]["mixed_groups"] == 1.0 and sig[1]["mixed_groups"] == 0.5
    summaries = {"full": {0: {"curve": _curve([0.3, 0.35, 0.4])}}}
    r = compute_results(summaries, "m", 20)
    r["selectors"]["full"]["seeds"]["0"]["training_signal"] = [{**s, "end_step": 10 * (i + 1)} for i, s in enumerate(sig)]
    write_comparison_report(r, tmp_path)
    text = (tmp_path / "report.md").read_text()
    # stage 0 ends at step 10 (accuracy 35%), stage 1 at step 20 (40%)
    assert "| full | 0.15 / 1.00 / 35.0 @ 10 | 0.35 / 0.50 / 40.0 @ 20 |" in text


def test_many_short_stages_are_shown_as_the_means_of_the_stages_in_each_span(tmp_path):
    """A selector re-selecting every 10 steps is grouped into the spans of a 2-stage one: each cell the mean of
    its stages ending in that span, and the accuracy at the last of them."""
    summaries = {"full": {0: {"curve": _curve([0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75])}},
                 "gradalign": {0: {"curve": _curve([0.3] * 10)}}}
    r = compute_results(summaries, "m", 90)
    r["selectors"]["full"]["seeds"]["0"]["training_signal"] = [
        {"stage": 0, "end_step": 40, "reward_mean": 0.2, "mixed_groups": 0.5},
        {"stage": 1, "end_step": 90, "reward_mean": 0.4, "mixed_groups": 0.5}]
    r["selectors"]["gradalign"]["seeds"]["0"]["training_signal"] = [
        {"stage": i, "end_step": 10 * (i + 1), "reward_mean": 0.1 * i, "mixed_groups": 1.0} for i in range(9)]
    write_comparison_report(r, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| selector | steps 0–40 | steps 40–90 |" in text
    assert "| full | 0.20 / 0.50 / 50.0 @ 40 | 0.40 / 0.50 / 75.0 @ 90 |" in text
    # stages 0-3 end at 10..40 (rewards 0, .1, .2, .3: mean .15); stages 4-8 at 50..90 (mean .6)
    assert "| gradalign | 0.15 / 1.00 / 30.0 @ 40 | 0.60 / 1.00 / 30.0 @ 90 |" in text


def test_target_verdicts_against_hand_computed_values():
    from cropi.runs.report import target_verdicts

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    summaries = {
        "full": {0: {"curve": _curve(full)}},
        # smoothed [.35,.38,.43,...] crosses .42 at step 18: 50/18 = 2.78x (< 3); seconds 30 + step: 50/48 < 2
        "cropi": {0: {"curve": _curve([0.30, 0.40, 0.44, 0.45, 0.45, 0.45, 0.45], t0=30.0)}},
        # smoothed [.40,.433,.50,...] crosses .42 at step 6: 50/6 steps and 50/6 wall (seconds = step)
        "cropi+refresh": {0: {"curve": _curve([0.30, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50])}},
        "random": {0: {"curve": _curve([0.30] * 7)}},
    }
    v = {(x["selector"], x["target"].split(" >=")[0].split(" not")[0]): x for x in target_verdicts(compute_results(summaries, "m", 60))}
    assert not v[("cropi", "step-level acceleration")]["met"] and "2.78x" in v[("cropi", "step-level acceleration")]["measured"]
    assert not v[("cropi", "wall-clock acceleration")]["met"]
    assert v[("cropi", "final targeted")]["met"]  # 0.45 >= full 0.42 and random 0.30
    assert v[("cropi+refresh", "step-level acceleration")]["met"] and v[("cropi+refresh", "wall-clock acceleration")]["met"]
    assert "8.33x" in v[("cropi+refresh", "step-level acceleration")]["measured"]
    assert v[("cropi", "best untargeted")]["met"]  # 0.5 everywhere: equal is not below
    assert not any(x["selector"] == "random" for x in target_verdicts(compute_results(summaries, "m", 60)))


def test_compare_cli_end_to_end(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cropi.cli import app
    from tests.conftest import small_suite_overrides

    # the load recorded at evaluations is this machine's; fixed here so a busy test machine does not make the
    # runs contended (which would leave the cost model below without a full-data scale)
    monkeypatch.setattr("cropi.training.grpo.os.getloadavg", lambda: (0.5, 0.5, 0.5))

    args = ["compare", "--selectors", "cropi_curriculum,dapo,cropi", "--seeds", "0", "--steps", "4", "--stages", "2",
            "--out", str(tmp_path / "cmp"), "--select-ratio", "0.25"]
    for s in small_suite_overrides() + ["data.suite.val_size=16", "model.device=cpu", "train.prompts_per_step=4",
                                        "rollout.max_new_tokens=8", "eval.max_new_tokens=8", "train.eval_every=1",
                                        "select.score.k=256", "select.score.max_val_prompts=8"]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(res["selectors"]) == {"full", "cropi_curriculum", "dapo", "cropi"}
    row = res["selectors"]["cropi_curriculum"]["seeds"]["0"]
    assert len(row["curve"]) == 5 and row["collect_seconds"] > 0 and row["score_seconds"] > 0
    assert "paired_se_vs_full" in row
    # every charged second has a kind, and a peer's dropped groups are charged as refills
    kinds = res["selectors"]["dapo"]["seeds"]["0"]["seconds_by_kind"]
    assert kinds["refills"] > 0 and kinds["collection"] == 0 and res["noise_floor"]["step_acceleration"]["seeds"]
    # cropi's default screens and scores inside its steps, with no behaviour store
    kinds = res["selectors"]["cropi"]["seeds"]["0"]["seconds_by_kind"]
    assert kinds["screening"] > 0 and kinds["scoring"] > 0 and kinds["collection"] == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Seconds by kind" in report and "| machine load |" in report
    # each run's load beside it, from its evaluations (5 here), goes with its seconds
    assert res["selectors"]["dapo"]["seeds"]["0"]["load_1min_at_evals"]["n"] == 5
    # the cost model reads the same folder
    from lab.bench.cost_model import main as cost_model

    cost_model(["--compare", str(tmp_path / "cmp"), "--out", str(tmp_path / "cost")])
    model = json.loads((tmp_path / "cost" / "cost_model.json").read_text())
    for block in model["model"].values():
        assert block["update_seconds_per_step"] > 0 and set(block["methods"]) >= {"full", "cropi", "dapo"}
    # it needs only what keep_compare_runs.sh keeps of a run (no stages/ folder, no stores)
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "cmp", kept, ignore=shutil.ignore_patterns("stages", "stores", "final_model", "checkpoints"))
    cost_model(["--compare", str(kept), "--out", str(tmp_path / "cost-kept")])
    assert json.loads((tmp_path / "cost-kept" / "cost_model.json").read_text())["measured"] == model["measured"]
    # with full data's only run contended there is no scale: one clear error, nothing written
    from cropi.errors import CropiError

    summary = json.loads((kept / "runs" / "full-s0" / "summary.json").read_text())
    summary["load_1min_at_evals"] = {"mean": 99.0}
    (kept / "runs" / "full-s0" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(CropiError, match="no finished full-data run ran uncontended"):
        cost_model(["--compare", str(kept), "--out", str(tmp_path / "cost-contended")])
    assert not (tmp_path / "cost-contended").exists()
    assert "report.md" in r.output and (tmp_path / "cmp" / "report.md").exists()
    # the stores were collected once and shared
    assert (tmp_path / "cmp" / "stores" / "pool" / "meta.json").exists()
    assert not (tmp_path / "cmp" / "runs" / "cropi_curriculum-s0" / "stores").exists()
    # rerunning resumes: nothing is redone — no run starts, and no finished run's files are rewritten
    runs = tmp_path / "cmp" / "runs"
    finished = sorted(p for p in runs.rglob("*") if p.is_file() and p.name in ("summary.json", "metrics.jsonl")
                      or p.parent.name == "final_model")
    assert {p.relative_to(runs).as_posix() for p in finished} >= {"full-s0/summary.json", "cropi-s0/metrics.jsonl"}
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished}
    folders = sorted(p.name for p in runs.iterdir())
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0, r2.output
    assert sorted(p.name for p in runs.iterdir()) == folders
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished} == before
    assert not any(runs.glob("*/.lock"))
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["selectors"] == res["selectors"]


def test_selector_variants_switch_on_our_departures():
    from cropi.errors import ConfigError
    from cropi.selection.variants import parse_selector

    assert parse_selector("cropi_curriculum") == ("cropi_curriculum", {})
    base, settings = parse_selector("cropi_curriculum+drift+reprobe")
    assert base == "cropi_curriculum" and settings["select.drift_ess_threshold"] > 0 and settings["select.reprobe_prompts"] > 0
    with pytest.raises(ConfigError):
        parse_selector("cropi_curriculum+bogus")
    with pytest.raises(ConfigError):
        parse_selector("random+drift")
    assert parse_selector("cropi_curriculum+refresh+candidates2000") == ("cropi_curriculum", {"select.refresh_every": 1,
                                                                        "select.candidates": 2000})
    assert parse_selector("static_influence+candidates30") == ("static_influence", {"select.candidates": 30})
    assert parse_selector("cropi_curriculum+refresh+stages8") == ("cropi_curriculum", {"select.refresh_every": 1, "select.stages": 8})
    assert parse_selector("cropi_curriculum+greso") == ("cropi_curriculum", {"train.filter.method": "greso"})
    assert parse_selector("cropi_curriculum+reuse") == ("cropi_curriculum", {"select.reuse_rollouts": True})
    for bad in ("random+candidates30", "cropi_curriculum+candidates0", "static_influence+refresh", "cropi_curriculum+stages2",
                "static_influence+stages8", "static_influence+reuse"):
        with pytest.raises(ConfigError):
            parse_selector(bad)


def test_peers_are_the_full_pool_with_their_batch_rule_and_gradalign_is_refreshed_cropi_rounds(tmp_path):
    from cropi.config import RunConfig
    from cropi.runs.compare import run_config

    cfg = RunConfig()
    for peer in ("dapo", "greso", "online_filter"):
        c = run_config(cfg, tmp_path, peer, 1)
        assert (c.train.selector, c.train.filter.method, c.train.seed) == ("full", peer, 1)
    c = run_config(cfg, tmp_path, "gradalign", 0)
    # fresh on-policy rollouts each round, 10 steps a round, the top 1/20 of 1,280 candidates
    assert c.train.selector == "cropi_curriculum" and c.select.refresh_every == 1 and c.train.filter.method == "none"
    assert c.select.stages * 10 == c.train.steps and c.select.candidates == 1280
    assert c.select.size == 64


def test_run_lock_claims_once_and_takes_over_stale_locks(tmp_path):
    from cropi.runs.locks import claim, holder, release

    run = tmp_path / "r"
    assert holder(run) is None  # no folder, no lock
    assert claim(run) and not claim(run)  # held by this (live) process
    assert holder(run) == os.getpid()
    (run / ".lock").write_text("999999999")  # a pid that cannot exist: a crashed run
    assert holder(run) is None
    assert claim(run) and (run / ".lock").read_text() == str(os.getpid())
    (run / ".lock").write_text("not a pid")
    assert holder(run) is None
    release(run)
    assert holder(run) is None and claim(run)


def test_partial_gain_accelerations():
    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast = [0.30, 0.40, 0.44, 0.45, 0.45, 0.45, 0.45]
    r = compute_results({"full": {0: {"curve": _curve(full)}}, "cropi": {0: {"curve": _curve(fast)}}}, "m", 60)
    half = r["partial_gain"]["0.5"]
    # start 0.30, threshold 0.42 -> level 0.36; full smoothed [.315,.33,.36,...] reaches it at step 20;
    # cropi smoothed [.35,.38,...] between steps 0 and 10: 0 + (0.36-0.35)/(0.38-0.35)*10 = 3.33
    assert half["level"] == pytest.approx(0.36) and half["full_steps"] == pytest.approx(20.0)
    assert half["selectors"]["cropi"]["median_step_acceleration"] == pytest.approx(20 / (10 / 3))
    assert half["selectors"]["full"]["median_step_acceleration"] == pytest.approx(1.0)


def test_worker_runs_only_unclaimed_runs_and_writes_no_results(tmp_path):
    from cropi.config import load_config
    from cropi.runs.compare import run_compare
    from tests.conftest import small_suite_overrides

    out = tmp_path / "cmp"
    run = out / "runs" / "full-s0"
    run.mkdir(parents=True)
    (run / ".lock").write_text(str(os.getpid()))  # claimed by a live process (this one): the worker leaves it
    cfg = load_config(None, small_suite_overrides() + ["model.device=cpu", "train.steps=2", "select.stages=1"])
    assert run_compare(cfg, ["full"], [0], out, worker=True) is None
    assert not (out / "results.json").exists() and not (run / "config.yaml").exists()


def test_demo_verdict_says_faster_only_when_fewer_steps_and_less_time():
    from cropi.cli import demo_verdict

    def res(step, wall):
        return {"selectors": {"cropi": {"median": {"step_acceleration": step, "wall_acceleration": wall}}}}

    assert demo_verdict(res(2.0, 1.5)) == ("verdict: cropi is faster than full data to full data's best: "
                                           "2.00x fewer steps and 1.50x less time")
    assert "is not faster" in demo_verdict(res(2.0, 0.5)) and "2.00x more time" in demo_verdict(res(2.0, 0.5))
    assert "never reached" in demo_verdict(res(None, None))
    assert "never sooner in seconds" in demo_verdict(res(1.2, None))
    busy = res(1.2, None)
    busy["selectors"]["cropi"]["wall_contended"] = 1  # reached it, but its seconds are not comparable
    assert demo_verdict(busy) == ("verdict: cropi reached full data's best in 1.20x fewer steps; its seconds not "
                                  "measured (1 run(s) shared the cores with more processes than cores)")


def test_peer_targets_and_the_noise_floor_call_a_slower_cropi_not_met_and_a_spread_a_tie():
    from cropi.runs.report import target_verdicts

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    summaries = {
        "full": {0: {"curve": _curve(full)}, 1: {"curve": _curve([0.30, 0.35, 0.40, 0.42, 0.42, 0.42, 0.42])}},
        "cropi": {0: {"curve": _curve([0.30, 0.35, 0.40, 0.42, 0.42, 0.42, 0.42])}},  # as full data's seed 1
        "dapo": {0: {"curve": _curve([0.30, 0.45, 0.46, 0.46, 0.46, 0.46, 0.46])}},
    }
    results = compute_results(summaries, "m", 60)
    v = {(x["selector"], x["target"]): x for x in target_verdicts(results)}
    peer = v[("cropi", "step-level acceleration >= every peer's (median)")]
    assert not peer["met"] and "dapo" in peer["measured"]
    floor = results["noise_floor"]["step_acceleration"]
    cropi_acc = results["selectors"]["cropi"]["median"]["step_acceleration"]
    assert cropi_acc > 1 and floor["max"] == pytest.approx(cropi_acc)  # as quick as full data's faster seed
    assert "a tie" in v[("cropi", "step-level acceleration >= 3.0x (median over seeds)")]["measured"]


def _draw(full_ys, cropi_ys_by_seed):
    summaries = {"full": {0: {"curve": _curve(full_ys)}, 1: {"curve": _curve(full_ys)}},
                 "cropi": {s: {"curve": _curve(ys)} for s, ys in cropi_ys_by_seed.items()}}
    return compute_results(summaries, "m", 60)


def test_draw_spread_is_the_range_of_draw_medians_beside_the_range_of_seeds(tmp_path):
    from cropi.runs.metrics import draw_spread

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast = [0.30, 0.40, 0.44, 0.45, 0.45, 0.45, 0.45]   # crosses 0.42 at step 18
    slow = [0.30, 0.32, 0.35, 0.38, 0.41, 0.44, 0.44]   # later, at step ~ 45
    a = _draw(full, {0: fast, 1: fast})
    b = _draw(full, {0: fast, 1: slow})
    sp = draw_spread({"a": a, "b": b})
    step = sp["selectors"]["cropi"]["step_acceleration"]
    ma, mb = a["selectors"]["cropi"]["median"]["step_acceleration"], b["selectors"]["cropi"]["median"]["step_acceleration"]
    assert step["medians"] == {"a": ma, "b": mb}
    assert step["between_draws"] == pytest.approx(abs(ma - mb)) and step["between_draws"] > 0
    seeds_b = [r["step_acceleration"] for r in b["selectors"]["cropi"]["seeds"].values()]
    assert step["between_seeds"]["a"] == pytest.approx(0.0)
    assert step["between_seeds"]["b"] == pytest.approx(max(seeds_b) - min(seeds_b))
    assert step["between_seeds_max"] == pytest.approx(step["between_seeds"]["b"])
    # against full data's seed mean in the same draw: cropi's fast seeds end at .45, full data's at .42
    vs = sp["selectors"]["cropi"]["final_targeted_vs_full"]
    assert vs["medians"]["a"] == pytest.approx(0.03) and vs["between_seeds"]["a"] == pytest.approx(0.0)
    # one draw: no spread between draws to speak of; the same draw twice: none
    assert draw_spread({"a": a})["selectors"]["cropi"]["final_targeted"]["between_draws"] is None
    assert draw_spread({"a": a, "a2": a})["selectors"]["full"]["step_acceleration"]["between_draws"] == 0
    # a wall-clock acceleration not measured (a contended run) is left out but is no "never reached"
    c = json.loads(json.dumps(b))
    c["selectors"]["cropi"]["seeds"]["1"]["wall_acceleration"] = None
    wall = draw_spread({"a": a, "c": c})["selectors"]["cropi"]["wall_acceleration"]
    assert wall["never"] == 0 and wall["between_seeds"]["c"] == pytest.approx(0.0)


def test_draw_spread_leaves_out_selectors_missing_from_a_draw_and_counts_never():
    from cropi.runs.metrics import draw_spread

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    a = _draw(full, {0: [0.30, 0.31, 0.32, 0.32, 0.32, 0.32, 0.32]})  # never reaches the threshold
    b = compute_results({"full": {0: {"curve": _curve(full)}}}, "m", 60)
    assert set(draw_spread({"a": a, "b": b})["selectors"]) == {"full"}
    never = draw_spread({"a": a})["selectors"]["cropi"]["step_acceleration"]
    assert never["never"] == 1 and never["between_draws"] is None and never["between_seeds_max"] is None


def test_draws_cli_writes_its_report_and_refuses_a_folder_without_results(tmp_path):
    from typer.testing import CliRunner

    from cropi.cli import app
    from cropi.io import write_json

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    for name, ys in (("draw-a", [0.30, 0.40, 0.44, 0.45, 0.45, 0.45, 0.45]),
                     ("draw-b", [0.30, 0.32, 0.35, 0.38, 0.41, 0.44, 0.44])):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "results.json", _draw(full, {0: ys}))
    r = CliRunner().invoke(app, ["draws", str(tmp_path / "draw-a"), str(tmp_path / "draw-b"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "o" / "draws.md").read_text()
    assert "draw-a" in text and "between draws" in text and "| cropi |" in text
    # full data's identical seeds put its own acceleration (1x) inside the noise floor; cropi's is outside it
    assert "| full | 1.00× (tie) |" in text and "| cropi | 1.00×" not in text and "(tie)" not in text.split("| cropi |")[1].split("\n")[0]
    assert json.loads((tmp_path / "o" / "draws.json").read_text())["schema_version"]
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(app, ["draws", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "results.json" in r.output and not (tmp_path / "o2").exists()


def test_wall_clock_acceleration_divides_by_full_datas_seconds_on_the_runs_own_machine(tmp_path):
    from cropi.runs.report import target_verdicts

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast = [0.30, 0.45, 0.46, 0.46, 0.46, 0.46, 0.46]
    here = {"full": {0: {"curve": _curve(full), "machine": "Xeon, 2 cores", "host": "a"}},
            "cropi": {0: {"curve": _curve(fast, dt=4.0), "machine": "Xeon, 2 cores", "host": "a"}}}
    one = compute_results(here, "m", 60)
    # the same work on a machine k times as fast, its full data a reference run repeating seed 0 there
    k = 2.5
    moved = {"full": here["full"], "cropi": {0: {"curve": _curve(fast, dt=4.0 / k), "machine": "EPYC", "host": "b"}}}
    ref = {"curve": _curve([0.2] * 7, dt=10.0 / k), "machine": "EPYC", "host": "b", "config": {"train": {"seed": 0}}}
    two = compute_results(moved, "m", 60, references=[ref])
    assert two["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"] == pytest.approx(
        one["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"])
    # a reference gives seconds only: the threshold and the steps are full data's own
    assert two["threshold_targeted"] == one["threshold_targeted"]
    assert two["full_steps_to_threshold"] == one["full_steps_to_threshold"]
    assert two["hosts"]["b"] == {"cpu": "EPYC", "runs": 1, "reference_runs": 1,
                                 "full_seconds_to_threshold": pytest.approx(one["full_seconds_to_threshold"] / k)}
    # without a full-data run on its machine a run has no wall-clock number, and the target is not met
    alone = compute_results(moved, "m", 60)
    row = alone["selectors"]["cropi"]["seeds"]["0"]
    assert row["wall_acceleration"] is None and not row["wall_reference"]
    assert alone["selectors"]["cropi"]["wall_unreferenced"] == 1
    wall = "wall-clock acceleration >= 2.0x (median over seeds)"
    verdicts = {x["target"]: x for x in target_verdicts(alone) if x["selector"] == "cropi"}
    assert one["selectors"]["cropi"]["median"]["wall_acceleration"] >= 2.0
    assert not verdicts[wall]["met"] and "no uncontended full-data run on their machine" in verdicts[wall]["measured"]
    write_comparison_report(two, tmp_path)
    assert "Runs from 2 machines" in (tmp_path / "report.md").read_text()


def test_a_contended_run_has_no_wall_clock_acceleration_and_is_no_machines_seconds_reference(tmp_path):
    from cropi.runs.metrics import contended, cores_of
    from cropi.runs.report import target_verdicts

    assert cores_of("AMD EPYC, 2 cores, 24 GiB RAM, no GPU") == 2 and cores_of("EPYC") is None and cores_of(None) is None
    two = "Xeon, 2 cores"
    assert not contended({"machine": two, "load_1min_at_evals": {"mean": 2.5}})  # two runs on two cores
    assert contended({"machine": two, "load_1min_at_evals": {"mean": 2.51}})
    assert not contended({"machine": "Xeon", "load_1min_at_evals": {"mean": 9.0}})  # cores unknown
    assert not contended({"machine": two})  # load not recorded

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast = [0.30, 0.45, 0.46, 0.46, 0.46, 0.46, 0.46]
    calm, busy = {"mean": 2.0, "max": 2.2, "n": 7}, {"mean": 3.2, "max": 5.0, "n": 7}

    def run(ys, dt, load, seed=0):
        return {"curve": _curve(ys, dt=dt), "machine": two, "host": "a", "load_1min_at_evals": load,
                "config": {"train": {"seed": seed}}}

    clean = compute_results({"full": {0: run(full, 10.0, calm)}, "cropi": {0: run(fast, 4.0, calm)}}, "m", 60)
    # full data measured while sharing the cores (1.5x slower): not a reference; a clean repeat of it is
    slow = {"full": {0: run(full, 15.0, busy)}, "cropi": {0: run(fast, 4.0, calm)}}
    alone = compute_results(slow, "m", 60)
    row = alone["selectors"]["cropi"]["seeds"]["0"]
    assert row["wall_acceleration"] is None and not row["wall_reference"] and not row["contended"]
    assert alone["selectors"]["full"]["seeds"]["0"]["contended"]
    write_comparison_report(alone, tmp_path)
    assert "not measured in seconds" in (tmp_path / "report.md").read_text()
    fixed = compute_results(slow, "m", 60, references=[run([0.2] * 7, 10.0, calm)])
    assert fixed["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"] == pytest.approx(
        clean["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"])
    assert fixed["selectors"]["full"]["seeds"]["0"]["wall_acceleration"] is None  # its own seconds are inflated
    # the report's full-data seconds to the threshold are the uncontended runs' only
    assert alone["full_seconds_to_threshold"] is None
    assert clean["full_seconds_to_threshold"] == pytest.approx(compute_results(
        {"full": {0: run(full, 10.0, calm), 1: run(full, 15.0, busy, seed=1)}}, "m", 60)["full_seconds_to_threshold"])
    assert fixed["reference_runs"][0]["contended"] is False
    # a contended selector run: its step acceleration stands, its seconds give none, and the target says why
    crowded = compute_results({"full": {0: run(full, 10.0, calm)}, "cropi": {0: run(fast, 4.0, busy)}}, "m", 60)
    c = crowded["selectors"]["cropi"]
    assert c["seeds"]["0"]["wall_acceleration"] is None and c["seeds"]["0"]["contended"] and c["wall_contended"] == 1
    assert c["median"]["wall_acceleration"] is None
    assert c["median"]["step_acceleration"] == clean["selectors"]["cropi"]["median"]["step_acceleration"]
    assert clean["selectors"]["cropi"]["median"]["wall_acceleration"] >= 2.0
    wall = {x["target"]: x for x in target_verdicts(crowded) if x["selector"] == "cropi"}[
        "wall-clock acceleration >= 2.0x (median over seeds)"]
    assert not wall["met"] and "more processes than cores" in wall["measured"]


def test_a_comparison_resumed_on_another_machine_repeats_full_datas_first_seed_there(tmp_path):
    from cropi.runs.compare import reference_run
    from cropi.runs.report import host_id
    from cropi.io import write_json

    pending = [("full", 3, "full-s3"), ("full", 4, "full-s4"), ("cropi", 3, "cropi-s3")]
    for run, host in (("full-s3", "elsewhere"), ("full-s4", "elsewhere")):
        write_json(tmp_path / "runs" / run / "summary.json", {"host": host, "curve": []})
    assert reference_run(tmp_path, pending) == f"full-s3@{host_id()[:8]}"
    write_json(tmp_path / "runs" / "cropi-s3" / "summary.json", {"host": "elsewhere", "curve": []})
    assert reference_run(tmp_path, pending) is None  # nothing left to run here
    (tmp_path / "runs" / "cropi-s3" / "summary.json").unlink()
    write_json(tmp_path / "runs" / "full-s4" / "summary.json", {"host": host_id(), "curve": []})
    assert reference_run(tmp_path, pending) is None  # full data already ran on this machine
    # ... unless it ran there contended: its seconds are inflated, so it is repeated
    write_json(tmp_path / "runs" / "full-s4" / "summary.json",
               {"host": host_id(), "curve": [], "machine": "X, 2 cores", "load_1min_at_evals": {"mean": 3.2}})
    assert reference_run(tmp_path, pending) == f"full-s3@{host_id()[:8]}"
    # one begun here for another seed is finished rather than a second begun
    (tmp_path / "runs" / f"full-s9@{host_id()[:8]}").mkdir()
    assert reference_run(tmp_path, pending) == f"full-s9@{host_id()[:8]}"
    # a clean reference already made here, for another seed, is enough
    write_json(tmp_path / "runs" / f"full-s9@{host_id()[:8]}" / "summary.json",
               {"host": host_id(), "curve": [], "machine": "X, 2 cores", "load_1min_at_evals": {"mean": 2.0}})
    assert reference_run(tmp_path, pending) is None
    # and one made here that was contended too is not tried again (those runs get no wall-clock number)
    write_json(tmp_path / "runs" / f"full-s9@{host_id()[:8]}" / "summary.json",
               {"host": host_id(), "curve": [], "machine": "X, 2 cores", "load_1min_at_evals": {"mean": 3.0}})
    assert reference_run(tmp_path, pending) is None


def test_no_reference_run_while_full_data_still_has_a_run_to_do_here(tmp_path):
    from cropi.runs.compare import reference_run
    from cropi.runs.report import host_id
    from cropi.io import write_json

    pending = [("full", 0, "full-s0"), ("full", 1, "full-s1"), ("cropi", 0, "cropi-s0")]
    # only a reference made on another machine has finished; full-s0 and full-s1 will run here
    write_json(tmp_path / "runs" / "full-s0@elsewhe" / "summary.json", {"host": "elsewhere", "curve": []})
    assert reference_run(tmp_path, pending) is None
    write_json(tmp_path / "runs" / "full-s0" / "summary.json", {"host": "elsewhere", "curve": []})
    assert reference_run(tmp_path, pending) is None  # full-s1 is still to do here
    write_json(tmp_path / "runs" / "full-s1" / "summary.json", {"host": "elsewhere", "curve": []})
    assert reference_run(tmp_path, pending) == f"full-s0@{host_id()[:8]}"  # now only cropi-s0 runs here




def test_resumed_comparison_gets_a_full_data_reference_on_the_new_machine(tmp_path, monkeypatch):
    import cropi.runs.compare as compare_mod
    import cropi.runs.run as run_mod
    from cropi.config import load_config
    from cropi.io import read_json
    from tests.conftest import small_suite_overrides

    def on(host):
        monkeypatch.setattr(compare_mod, "host_id", lambda: host)
        monkeypatch.setattr(run_mod, "host_id", lambda: host)

    # the real load would make these runs count as contended on a busy machine (metrics.contended)
    monkeypatch.setattr("cropi.training.grpo.machine_load", lambda: {})

    out = tmp_path / "cmp"
    cfg = load_config(None, small_suite_overrides() + ["model.device=cpu", "train.steps=2", "train.eval_every=1",
                                                       "select.stages=1"])
    on("machine-a")
    compare_mod.run_compare(cfg, ["random"], [0], out)
    assert not list((out / "runs").glob("*@*"))  # one machine: no reference
    (out / "runs" / "random-s0" / "summary.json").unlink()  # as if it had not finished before the move
    on("machine-b")
    res = compare_mod.run_compare(cfg, ["random"], [0], out)
    ref = read_json(out / "runs" / "full-s0@machine-" / "summary.json")
    full = read_json(out / "runs" / "full-s0" / "summary.json")
    assert ref["host"] == "machine-b" and full["host"] == "machine-a"
    # the same seed: the same training, evaluation for evaluation (only its seconds are this machine's)
    assert [c["targeted"] for c in ref["curve"]] == [c["targeted"] for c in full["curve"]]
    assert set(res["hosts"]) == {"machine-a", "machine-b"} and res["hosts"]["machine-b"]["reference_runs"] == 1
    assert res["selectors"]["random"]["seeds"]["0"]["host"] == "machine-b"
    assert res["selectors"]["random"]["seeds"]["0"]["wall_reference"]
    assert list(res["selectors"]["full"]["seeds"]) == ["0"]  # the reference is not another full-data seed
    # a reference begun on a third machine by a resume with seed 1 is finished there, with seed 1
    (out / "runs" / "random-s0" / "summary.json").unlink()
    on("thirdbox-c")
    (out / "runs" / "full-s1@thirdbox").mkdir()
    compare_mod.run_compare(cfg, ["random"], [0], out)
    third = read_json(out / "runs" / "full-s1@thirdbox" / "summary.json")
    assert third["host"] == "thirdbox-c" and third["config"]["train"]["seed"] == 1
    assert not (out / "runs" / "full-s0@thirdbox").exists()


def test_restore_leaves_out_kept_runs_whose_machine_has_no_full_data_run(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "scripts").mkdir()
    shutil.copy(repo / "scripts" / "keep_compare_runs.sh", tmp_path / "scripts")
    kept = tmp_path / "benchmarks" / "results" / "compare-runs" / "compare-peers"
    for name, host in [("full-s0", "A"), ("full-s0@B", "B"), ("cropi-s0", "A"), ("cropi-s1", "B"),
                       ("cropi-s2", "C"), ("dapo-s0", None)]:
        (kept / name).mkdir(parents=True)
        (kept / name / "summary.json").write_text(json.dumps({"host": host} if host else {}))
        (kept / name / "metrics.jsonl").write_text("{}\n")
    out = subprocess.run(["bash", "lab/scripts/keep_compare_runs.sh", "restore"], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                                                     "FOLDERS": "compare-peers"}).stdout
    restored = sorted(p.name for p in (tmp_path / "runs" / "compare-peers" / "runs").iterdir())
    assert restored == ["cropi-s0", "cropi-s1", "full-s0", "full-s0@B"]
    assert "not restored cropi-s2" in out and "not restored dapo-s0" in out
    assert (tmp_path / "runs" / "compare-peers" / "runs" / "cropi-s1" / "metrics.jsonl").read_text() == "{}\n"


def test_save_keeps_started_unfinished_runs_for_reading_only_and_drops_them_once_finished(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "scripts").mkdir()
    shutil.copy(repo / "scripts" / "keep_compare_runs.sh", tmp_path / "scripts")
    runs = tmp_path / "runs" / "compare-peers" / "runs"
    rows = [{"event": "eval", "step": 0}, {"event": "step", "step": 1}, {"event": "step", "step": 2}]
    for name, finished in [("full-s0", True), ("dapo-s0", False)]:
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "config.yaml").write_text("train: {}\n")
        (runs / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if finished:
            (runs / name / "summary.json").write_text(json.dumps({"host": "A"}))
    # claimed by a worker that was stopped before its first step: an empty curve, nothing to keep
    (runs / "greso-s0").mkdir()
    (runs / "greso-s0" / "metrics.jsonl").write_text("")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "FOLDERS": "compare-peers"}

    def script(verb):
        return subprocess.run(["bash", "lab/scripts/keep_compare_runs.sh", verb], cwd=tmp_path, check=True,
                              capture_output=True, text=True, env=env).stdout

    script("save")
    kept = tmp_path / "benchmarks" / "results" / "compare-runs" / "compare-peers"
    assert sorted(p.name for p in kept.iterdir()) == ["full-s0", "unfinished"]
    assert sorted(p.name for p in (kept / "unfinished").iterdir()) == ["dapo-s0"]
    partial = kept / "unfinished" / "dapo-s0"
    assert sorted(p.name for p in partial.iterdir()) == ["config.yaml", "metrics.jsonl", "unfinished.json"]
    info = json.loads((partial / "unfinished.json").read_text())
    assert info["last_step"] == 2 and info["finished"] is False and info["host"]
    # a new machine: the unfinished run is not restored (it has no checkpoints), the finished one is
    shutil.rmtree(tmp_path / "runs")
    script("restore")
    assert sorted(p.name for p in runs.iterdir()) == ["full-s0"]
    # once the run finishes, its partial copy goes
    (runs / "dapo-s0").mkdir()
    for f in ("config.yaml", "metrics.jsonl", "summary.json"):
        shutil.copy(runs / "full-s0" / f, runs / "dapo-s0" / f)
    script("save")
    assert not partial.exists() and (kept / "dapo-s0" / "summary.json").exists()


def test_an_acceleration_is_a_tie_only_inside_full_datas_seed_spread_on_both_sides():
    from cropi.runs.report import _tie_note

    res = {"noise_floor": {"wall_acceleration": {"max": 1.25}}}
    assert _tie_note(res, "wall_acceleration", 1.1) and _tie_note(res, "wall_acceleration", 0.85)
    assert not _tie_note(res, "wall_acceleration", 1.3)  # faster than any full-data seed
    assert not _tie_note(res, "wall_acceleration", 0.6)  # slower than 1/1.25: not a tie either
    assert not _tie_note({}, "wall_acceleration", 1.0)


def test_plateau_reading_against_hand_computed_values(tmp_path):
    from lab.bench.plateau import main as plateau_main
    from cropi.runs.metrics import plateau_reading

    def curve(ys, secs):
        return [{"step": 2 * i, "targeted": y, "seconds": t} for i, (y, t) in enumerate(zip(ys, secs))]

    # the long run repeats the main one for its first three evaluations, on a machine half as fast
    long = {"budget_steps": 8, "selectors": {"full": {"seeds": {"0": {
        "curve": curve([0.1, 0.2, 0.3, 0.4, 0.5], [0, 10, 20, 30, 40]), "host": "slow"}}}}}
    main = {"budget_steps": 4, "threshold_targeted": 0.25, "full_steps_to_threshold": 4.0, "reference_runs": [],
            "selectors": {"full": {"seeds": {"0": {"curve": curve([0.1, 0.2, 0.3], [0, 5, 10]), "host": "fast"}}},
                          "x": {"seeds": {"0": {"curve": curve([0.3, 0.5, 0.5], [0, 4, 8]), "host": "fast"}}}}}
    r = plateau_reading(long, main, block=4)
    # smoothed long curve .15 .2 .3 .4 .45: best .45, crossed at step 8, 40 s; 20 s at the main budget
    assert r["threshold_long"] == pytest.approx(0.45) and r["full_steps_to_threshold_long"] == pytest.approx(8.0)
    assert r["full_mean_targeted_per_block"] == pytest.approx({"4": 0.25, "8": 0.45})
    assert r["repeat"]["0"] == {"evaluations": 3, "max_abs_diff": 0.0, "first_differing_step": None}
    # x: smoothed .4 .433 .5 crosses .45 at step 2.5, 5 s; full data on x's machine: 10 s at step 4, × 40/20
    x = r["selectors"]["x"]["seeds"]["0"]
    assert x["steps_to_threshold"] == pytest.approx(2.5)
    assert x["step_acceleration"] == pytest.approx(8 / 2.5) and x["wall_acceleration"] == pytest.approx(20 / 5)
    assert r["selectors"]["full"]["never"] == 1 and r["selectors"]["full"]["median"]["step_acceleration"] is None
    crowded = json.loads(json.dumps(main))
    crowded["selectors"]["x"]["seeds"]["0"]["contended"] = True  # its seconds are inflated: no wall estimate
    cx = plateau_reading(long, crowded, block=4)["selectors"]["x"]["seeds"]["0"]
    assert cx["wall_acceleration"] is None and cx["step_acceleration"] == pytest.approx(8 / 2.5)

    (tmp_path / "long.json").write_text(json.dumps(long))
    (tmp_path / "main.json").write_text(json.dumps(main))
    assert plateau_main(["--long", str(tmp_path / "long.json"), "--compare", str(tmp_path / "main.json"),
                         "--out", str(tmp_path)]) == 0
    md = (tmp_path / "plateau.md").read_text()
    assert "| x | 3.20× | 4.00× | 1/1 | 2 |" in md  # 2.5 steps, printed to the nearest even step
    assert r["block_steps"] == 4 and r["long_eval_every"] == 2
    assert "evaluated every 2 steps" in md and "over 6 steps" in md  # the smoothing window, in steps
    # --block sets the table's spans: one column per 8 steps
    assert plateau_main(["--long", str(tmp_path / "long.json"), "--compare", str(tmp_path / "main.json"),
                         "--out", str(tmp_path / "b8"), "--block", "8"]) == 0
    assert "| seed mean | 35.0% |" in (tmp_path / "b8" / "plateau.md").read_text()  # mean of .2 .3 .4 .5 (step 0 left out)
    assert plateau_main(["--long", str(tmp_path / "long.json"), "--compare", str(tmp_path / "main.json"),
                         "--out", str(tmp_path / "b0"), "--block", "0"]) == 2
    assert not (tmp_path / "b0").exists()
    # a "long" file whose budget is not longer is refused, and nothing is written
    assert plateau_main(["--long", str(tmp_path / "main.json"), "--compare", str(tmp_path / "main.json"),
                         "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()


def test_status_reads_each_runs_progress_without_touching_it(tmp_path):
    from typer.testing import CliRunner
    from cropi.cli import app
    from cropi.runs.compare import comparison_status
    from cropi.io import write_json

    runs = tmp_path / "runs"

    def run(name, steps, evals, budget=100, done=False, pid=None, load=None, summary_load=None):
        d = runs / name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(f"train:\n  steps: {budget}\n")
        rows = [{"event": "step", "step": i, "seconds": 2.0 * i} for i in range(1, steps + 1)]
        rows += [{"event": "eval", "step": k, "targeted": v, **({} if load is None else {"load_1min": load})}
                 for k, v in evals.items()]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"event": "st')  # torn
        if done:
            write_json(d / "summary.json", {"curve": [], **({} if summary_load is None else {
                "machine": "X, 2 cores", "load_1min_at_evals": {"mean": summary_load}})})
        if pid is not None:
            (d / ".lock").write_text(str(pid))

    from cropi.machine import usable_cores

    run("full-s0", 100, {0: 0.3, 40: 0.4, 80: 0.5}, done=True, summary_load=3.2)  # its summary decides
    run("cropi-s0", 50, {0: 0.3, 40: 0.45}, pid=os.getpid(), load=usable_cores() + 0.7)  # this machine's cores
    run("dapo-s0", 30, {0: 0.3}, pid=2 ** 22 + 12345, load=usable_cores() + 0.4)  # a dead claimer: resumable
    run("full-s0@hostb123", 0, {})
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    rows = {r["run"]: r for r in comparison_status(tmp_path)}
    assert rows["full-s0"]["state"] == "done" and rows["full-s0"]["eta_seconds"] is None
    c = rows["cropi-s0"]
    assert c["state"] == "running" and (c["step"], c["steps"], c["seconds"]) == (50, 100, 100.0)
    assert c["eta_seconds"] == pytest.approx(100.0)  # 50 steps left at 2 s a step
    assert (c["eval_step"], c["targeted"], c["full_targeted"]) == (40, 0.45, 0.4)
    assert rows["dapo-s0"]["state"] == "stopped" and rows["dapo-s0"]["full_targeted"] == 0.3
    assert rows["full-s0@hostb123"]["state"] == "waiting" and rows["full-s0@hostb123"]["eta_seconds"] is None
    # contention: a finished run's summary decides; an unfinished one is its eval loads against the cores here
    assert (rows["full-s0"]["load"], rows["full-s0"]["contended"]) == (3.2, True)
    assert c["load"] == pytest.approx(usable_cores() + 0.7) and c["contended"]
    assert rows["dapo-s0"]["load"] == pytest.approx(usable_cores() + 0.4) and not rows["dapo-s0"]["contended"]
    assert (rows["full-s0@hostb123"]["load"], rows["full-s0@hostb123"]["contended"]) == (None, False)
    assert {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()} == before
    r = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert r.exit_code == 0 and "cropi-s0" in r.output and "45.0% @40" in r.output
    assert "3.20*" in r.output and "* contended" in r.output
    r = CliRunner().invoke(app, ["status", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "runs" in r.output



def test_finished_run_readings_apply_the_comparisons_rule_to_summaries_only_with_references_apart(tmp_path):
    """lab/scripts/read_compare_runs.py: the rule of ``compute_results`` on the runs that have a summary, each
    full-s*@HOST folder entering only as a reference, a contended-* repeat and an unfinished run left out."""
    import subprocess
    import sys

    from cropi.io import read_json, write_json

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast = [0.30, 0.45, 0.46, 0.46, 0.46, 0.46, 0.46]
    calm = {"mean": 2.0, "max": 2.2, "n": 7}

    def run(ys, dt, host, seed=0):
        return {"curve": _curve(ys, dt=dt), "machine": "EPYC, 2 cores", "host": host, "load_1min_at_evals": calm,
                "config": {"train": {"seed": seed}}}

    runs = tmp_path / "runs"
    summaries = {"full": {0: run(full, 10.0, "a"), 1: run(full, 12.0, "a", seed=1)},
                 "cropi": {0: run(fast, 2.0, "b"), 1: run(fast, 4.0, "a", seed=1)}}
    for selector, by_seed in summaries.items():
        for seed, summary in by_seed.items():
            write_json(runs / f"{selector}-s{seed}" / "summary.json", summary)
    reference = run([0.2] * 7, 5.0, "b")
    write_json(runs / "full-s0@b" / "summary.json", reference)
    write_json(runs / "contended-full-s0@a" / "summary.json", run(full, 30.0, "a"))
    (runs / "dapo-s0").mkdir()
    (runs / "dapo-s0" / "metrics.jsonl").write_text('{"event": "step", "step": 1}\n')
    script = Path(__file__).resolve().parents[1] / "scripts" / "read_compare_runs.py"
    out = tmp_path / "readings.json"
    printed = subprocess.run([sys.executable, str(script), str(runs), "--budget", "60", "--out", str(out)],
                             check=True, capture_output=True, text=True).stdout
    got = read_json(out)
    assert got.pop("finished_runs_only") is True
    expected = json.loads(json.dumps(compute_results(summaries, "EPYC, 2 cores", 60, references=[reference])))
    assert {k: v for k, v in got.items() if k != "schema_version"} == {
        k: v for k, v in expected.items() if k != "schema_version"}
    assert set(got["selectors"]) == {"full", "cropi"}
    # cropi seed 0 ran on machine b, so its seconds are divided by the reference's there, not by seed 0's on a
    assert got["selectors"]["cropi"]["seeds"]["0"]["wall_reference"]
    assert got["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"] > 0
    assert compute_results(summaries, "m", 60)["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"] is None
    assert "cropi-s0: crosses at" in printed and "dapo" not in printed


def test_a_run_pinned_to_one_core_is_read_against_the_machines_cores_that_its_load_counts():
    from cropi.runs.metrics import contended
    from cropi.runs.run import load_summary
    from cropi.training.grpo import machine_load

    rows = [{"event": "eval", "step": 40 * i, "load_1min": load, "load_cores": 2} for i, load in enumerate([1.9, 2.0])]
    summary = {"machine": "EPYC, 1 cores", "load_1min_at_evals": load_summary(rows)}
    assert summary["load_1min_at_evals"] == {"mean": 1.95, "max": 2.0, "n": 2, "cores": 2}
    assert not contended(summary)  # two single-threaded runs on two cores, one of them pinned
    assert contended({**summary, "load_1min_at_evals": {"mean": 2.6, "cores": 2}})
    # rows from before the cores were recorded: the machine description's cores decide, as before
    old = load_summary([{k: v for k, v in r.items() if k != "load_cores"} for r in rows])
    assert "cores" not in old and contended({"machine": "EPYC, 1 cores", "load_1min_at_evals": old})
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(allowed)})  # pinned as `taskset -c` pins a run
        try:
            now = machine_load()
        finally:
            os.sched_setaffinity(0, allowed)
        assert now["load_cores"] == os.cpu_count() > 1


def test_run_names_round_trip_and_a_folder_of_another_form_is_no_run():
    from cropi.runs.compare import parse_run_name, run_name

    for selector, seed, host in [("cropi", 2, None), ("full", 0, "f703f209"),
                                 ("cropi_curriculum+candidates1280+size80+stages60", 11, None)]:
        assert parse_run_name(run_name(selector, seed, host)) == (selector, seed, host)
    for name in ("unfinished", "cropi-sx", "notes"):
        with pytest.raises(ValueError):
            parse_run_name(name)
