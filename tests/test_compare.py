"""`cropi compare`: acceleration arithmetic against hand-computed values, the report, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os

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
    r = compute_results(summaries, 60)
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
    for key in ("schema_version", "budget_steps", "selectors"):
        assert key in r


def test_run_at_threshold_from_its_first_evaluation_is_reached_not_never():
    """A crossing at step 0 is a real value: a run already at the threshold at its first evaluation must not be
    reported as never reaching it (0.0 is falsy), and its acceleration, with no steps to divide by, is the
    documented lower bound over the first evaluation interval."""
    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    summaries = {"full": {0: {"curve": _curve(full)}},
                 "cropi": {0: {"curve": _curve([0.45] * 7)}}}  # smoothed 0.45 >= 0.42 at step 0, t = 0 s
    row = compute_results(summaries, 60)["selectors"]["cropi"]["seeds"]["0"]
    assert row["steps_to_threshold"] == 0.0 and row["seconds_to_threshold"] == 0.0
    # full data reaches 0.42 at step 50 / 50 s; the first evaluation interval is 10 steps / 10 s
    assert row["step_acceleration"] == pytest.approx(5.0) and row["step_acceleration_is_lower_bound"]
    assert row["wall_acceleration"] == pytest.approx(5.0) and row["wall_acceleration_is_lower_bound"]


def test_full_data_at_threshold_from_the_start_gives_zero_or_equal_acceleration(tmp_path):
    """Full data already at its best at step 0 (S_full = 0): a run that needs steps is 0x as fast, a run there
    from the start too is as fast (1x) — neither is "never"."""
    flat = [0.42, 0.42, 0.40, 0.38]  # smoothed [.42, .413, .40, .39]: threshold .42 at step 0
    summaries = {"full": {0: {"curve": _curve(flat)}}, "cropi": {0: {"curve": _curve([0.30, 0.50, 0.50, 0.50])}}}
    r = compute_results(summaries, 30)
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
    row = compute_results(summaries, 20)["selectors"]["cropi"]["seeds"]["0"]
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
    r = compute_results(summaries, 20)
    write_comparison_report(r, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| cropi |" in text and "## Overhead" in text and "accuracy_vs_steps.png" in text
    assert "## Verdicts" in text and "- cropi reached full data's best" in text
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
    r = compute_results(summaries, 60)
    wall = r["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"]
    assert wall == pytest.approx(50.0 / 36.0)
    write_comparison_report(r, tmp_path)
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## Overhead"):]
    assert f"| cropi | 40% | {wall:.2f}× | {wall / 0.6:.2f}× |" in section
    assert "| random |" not in section and "| full |" not in section  # no overhead, no row
    # the per-seed table splits the same seconds: extra sampling 20, scoring 20, training 60
    assert "| cropi | 0 | 18 | 36 | 45.0 | 20 | 20 | 60 |" in text


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
    r = compute_results(summaries, 20)
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
    r = compute_results(summaries, 90)
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


def test_compare_cli_end_to_end(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cropi.cli import app
    from tests.conftest import small_suite_overrides

    args = ["compare", "--selectors", "cropi,dapo,online_influence", "--seeds", "0", "--steps", "4", "--stages", "2",
            "--out", str(tmp_path / "cmp"), "--select-ratio", "0.25"]
    for s in small_suite_overrides() + ["data.suite.val_size=16", "model.device=cpu", "train.prompts_per_step=4",
                                        "rollout.max_new_tokens=8", "eval.max_new_tokens=8", "train.eval_every=1",
                                        "select.score.k=256", "select.score.max_val_prompts=8"]:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(res["selectors"]) == {"full", "cropi", "dapo", "online_influence"}
    row = res["selectors"]["cropi"]["seeds"]["0"]
    assert len(row["curve"]) == 5 and row["collect_seconds"] > 0 and row["score_seconds"] > 0
    assert "paired_se_vs_full" in row
    # every charged second has a kind, and a peer's dropped groups are charged as refills
    kinds = res["selectors"]["dapo"]["seeds"]["0"]["seconds_by_kind"]
    assert kinds["refills"] > 0 and kinds["collection"] == 0 and res["noise_floor"]["step_acceleration"]["seeds"]
    # online_influence screens and scores inside its steps, with no behaviour store
    kinds = res["selectors"]["online_influence"]["seeds"]["0"]["seconds_by_kind"]
    assert kinds["screening"] > 0 and kinds["scoring"] > 0 and kinds["collection"] == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Seconds by kind" in report and "## Verdicts" in report and "machine" not in report
    # nothing in a run records the machine it ran on
    summary = json.loads((tmp_path / "cmp" / "runs" / "dapo-s0" / "summary.json").read_text())
    assert not {"machine", "host", "load_1min_at_evals"} & set(summary)
    assert not any("load_1min" in row for row in read_jsonl(tmp_path / "cmp" / "runs" / "dapo-s0" / "metrics.jsonl"))
    # the cost model reads the same folder
    from lab.bench.cost_model import main as cost_model

    cost_model(["--compare", str(tmp_path / "cmp"), "--out", str(tmp_path / "cost")])
    model = json.loads((tmp_path / "cost" / "cost_model.json").read_text())
    for block in model["model"].values():
        assert block["update_seconds_per_step"] > 0 and set(block["methods"]) >= {"full", "cropi", "dapo"}
    # it needs only a run's summary and metrics (no stages/ folder, no stores)
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "cmp", kept, ignore=shutil.ignore_patterns("stages", "stores", "final_model", "checkpoints"))
    cost_model(["--compare", str(kept), "--out", str(tmp_path / "cost-kept")])
    assert json.loads((tmp_path / "cost-kept" / "cost_model.json").read_text())["measured"] == model["measured"]
    assert "report.md" in r.output and (tmp_path / "cmp" / "report.md").exists()
    # the stores were collected once and shared
    assert (tmp_path / "cmp" / "stores" / "pool" / "meta.json").exists()
    assert not (tmp_path / "cmp" / "runs" / "cropi-s0" / "stores").exists()
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

    def parsed(spec):
        rule, settings = parse_selector(spec)
        return rule.name, settings

    assert parsed("cropi") == ("cropi", {})
    name, settings = parsed("cropi+drift+reprobe")
    assert name == "cropi" and settings["select.drift_ess_threshold"] > 0 and settings["select.reprobe_prompts"] > 0
    with pytest.raises(ConfigError):
        parse_selector("cropi+bogus")
    with pytest.raises(ConfigError):
        parse_selector("random+drift")
    assert parsed("cropi+refresh+candidates2000") == ("cropi", {"select.refresh_every": 1, "select.candidates": 2000})
    assert parsed("static_influence+candidates30") == ("static_influence", {"select.candidates": 30})
    assert parsed("cropi+refresh+stages8") == ("cropi", {"select.refresh_every": 1, "select.stages": 8})
    assert parsed("cropi+greso") == ("cropi", {"train.filter.method": "greso"})
    assert parsed("cropi+online_influence") == ("cropi", {"train.filter.method": "online_influence"})
    assert parsed("cropi+reuse") == ("cropi", {"select.reuse_rollouts": True})
    for bad in ("random+candidates30", "cropi+candidates0", "static_influence+refresh", "cropi+stages2",
                "static_influence+stages8", "static_influence+reuse", "cropi_curriculum", "influence_filter"):
        with pytest.raises(ConfigError):
            parse_selector(bad)


def test_cropis_defaults_fill_only_what_is_unset_and_its_stored_config_says_what_ran():
    from cropi.config import load_config
    from cropi.selection import resolve

    c = resolve(load_config(None, ["train.selector=cropi"]))
    assert (c.train.selector, c.select.stages, c.select.candidates, c.select.size) == ("cropi", 60, 1280, 80)
    assert resolve(load_config(None, ["train.selector=cropi", "train.steps=40"])).select.stages == 4  # 10-step stages
    # the authors' regime: the whole pool scored at every stage, the top ratio kept
    c = resolve(load_config(None, ["train.selector=cropi", "select.candidates=0", "select.size=0", "select.stages=7"]))
    assert (c.select.stages, c.select.candidates, c.select.size) == (7, 0, 0)
    # the other selectors keep the general defaults; the default selector builds its batches with its own rule
    c = resolve(load_config(None, ["train.selector=static_influence"]))
    assert (c.select.stages, c.select.candidates, c.select.size) == (4, 0, 0)
    assert resolve(c) == c  # resolving twice changes nothing
    c = resolve(load_config(None, []))
    assert (c.train.selector, c.train.filter.method, c.select.stages) == ("cropi_harvest", "cropi_harvest", 4)
    assert resolve(c) == c


def test_peers_are_the_full_pool_with_their_batch_rule_and_gradalign_is_refreshed_cropi_rounds(tmp_path):
    from cropi.config import RunConfig
    from cropi.runs.compare import run_config
    from cropi.selection import make_selector, resolve

    cfg = RunConfig()
    for peer in ("dapo", "greso", "online_filter"):
        c = resolve(run_config(cfg, tmp_path, peer, 1))
        assert (c.train.selector, c.train.filter.method, c.train.seed) == (peer, peer, 1)
        assert make_selector(peer).stage(_ctx(["a", "b"])) == ["a", "b"]  # the whole pool
    c = resolve(run_config(cfg, tmp_path, "gradalign", 0))
    # fresh on-policy rollouts each round, 10 steps a round, the top 1/20 of 1,280 candidates
    assert c.select.refresh_every == 1 and c.train.filter.method == "none" and make_selector("gradalign").every_stage
    assert c.select.stages * 10 == c.train.steps and c.select.candidates == 1280
    assert c.select.size == 64


def _ctx(ids):
    from types import SimpleNamespace

    from cropi.selection import SelectionContext

    return SelectionContext([SimpleNamespace(id=i) for i in ids], 0.1, 0, 0, dict, list)


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
    r = compute_results({"full": {0: {"curve": _curve(full)}}, "cropi": {0: {"curve": _curve(fast)}}}, 60)
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


def test_an_acceleration_is_a_tie_only_inside_full_datas_seed_spread_on_both_sides():
    from cropi.runs.report import _tie_note

    res = {"noise_floor": {"wall_acceleration": {"max": 1.25}}}
    assert _tie_note(res, "wall_acceleration", 1.1) and _tie_note(res, "wall_acceleration", 0.85)
    assert not _tie_note(res, "wall_acceleration", 1.3)  # faster than any full-data seed
    assert not _tie_note(res, "wall_acceleration", 0.6)  # slower than 1/1.25: not a tie either
    assert not _tie_note({}, "wall_acceleration", 1.0)


def test_status_reads_each_runs_progress_without_touching_it(tmp_path):
    from typer.testing import CliRunner
    from cropi.cli import app
    from cropi.runs.compare import comparison_status
    from cropi.io import write_json

    runs = tmp_path / "runs"

    def run(name, steps, evals, budget=100, done=False, pid=None):
        d = runs / name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(f"train:\n  steps: {budget}\n")
        rows = [{"event": "step", "step": i, "seconds": 2.0 * i} for i in range(1, steps + 1)]
        rows += [{"event": "eval", "step": k, "targeted": v} for k, v in evals.items()]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"event": "st')  # torn
        if done:
            write_json(d / "summary.json", {"curve": []})
        if pid is not None:
            (d / ".lock").write_text(str(pid))

    run("full-s0", 100, {0: 0.3, 40: 0.4, 80: 0.5}, done=True)
    run("cropi-s0", 50, {0: 0.3, 40: 0.45}, pid=os.getpid())
    run("dapo-s0", 30, {0: 0.3}, pid=2 ** 22 + 12345)  # a dead claimer: resumable
    run("greso-s0", 0, {})
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    rows = {r["run"]: r for r in comparison_status(tmp_path)}
    assert rows["full-s0"]["state"] == "done" and rows["full-s0"]["eta_seconds"] is None
    c = rows["cropi-s0"]
    assert c["state"] == "running" and (c["step"], c["steps"], c["seconds"]) == (50, 100, 100.0)
    assert c["eta_seconds"] == pytest.approx(100.0)  # 50 steps left at 2 s a step
    assert (c["eval_step"], c["targeted"], c["full_targeted"]) == (40, 0.45, 0.4)
    assert rows["dapo-s0"]["state"] == "stopped" and rows["dapo-s0"]["full_targeted"] == 0.3
    assert rows["greso-s0"]["state"] == "waiting" and rows["greso-s0"]["eta_seconds"] is None
    assert {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()} == before
    r = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert r.exit_code == 0 and "cropi-s0" in r.output and "45.0% @40" in r.output
    r = CliRunner().invoke(app, ["status", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "runs" in r.output


def test_run_names_round_trip_and_a_folder_of_another_form_is_no_run():
    from cropi.runs.compare import parse_run_name, run_name

    for selector, seed in [("cropi", 2), ("full", 0), ("cropi+candidates2000+greso", 11)]:
        assert parse_run_name(run_name(selector, seed)) == (selector, seed)
    for name in ("unfinished", "cropi-sx", "notes"):
        with pytest.raises(ValueError):
            parse_run_name(name)
