"""The benchmark code paths of `python -m lab.bench projection` / `python -m lab.bench fidelity` at toy sizes (seconds), so the
benchmark code stays alive: the results schema, merging, markdown verdicts, metrics and the SJLT fold."""

import math

import pytest
import torch

from lab.bench.common import (FIDELITY_KEYS, SPEED_KEYS, TOP_KEYS, parse_config,
                                                 results_paths, target_checks)
from cropi.io import read_json
from cropi.projection import make_projector


def test_config_names_round_trip():
    for name in ("sjlt-k8192-keep1", "sjlt-k1024-cal0.1", "gaussian-k1024-keep0.01", "sjlt-k8192-keep1-noembed"):
        assert parse_config(name).name == name
    assert parse_config("sjlt-k8192-cal0.1").rule == "calibrated"
    with pytest.raises(Exception, match="expected"):
        parse_config("dense-8192")


def test_metrics():
    from lab.bench.fidelity import precision_at, spearman

    ids = [f"p{i}" for i in range(20)]
    exact = [float(i) for i in range(20)]
    assert precision_at(ids, exact, exact) == 1.0
    assert precision_at(ids, exact, [-x for x in exact]) == 0.0
    assert spearman(exact, [x ** 3 for x in exact]) == pytest.approx(1.0)
    assert spearman(exact, [-x for x in exact]) == pytest.approx(-1.0)


@pytest.mark.parametrize("keep", [1.0, 0.3])
def test_sjlt_smaller_k_is_a_fold_of_larger_k(keep):
    # the fidelity benchmark derives k = 1024 sketches from k = 8192 ones (fidelity.py docstring)
    shapes = {"a": (40, 700), "b": (64,), "c": (30000,)}
    g = {n: torch.randn(*s) for n, s in shapes.items()}
    big = make_projector("sjlt", 512, 3, shapes, keep=keep).project(g)
    small = make_projector("sjlt", 64, 3, shapes, keep=keep).project(g)
    torch.testing.assert_close(big.view(-1, 64).sum(0), small, rtol=1e-4, atol=1e-4)


def _check_schema(res):
    assert set(TOP_KEYS) <= set(res)
    for row in res["speed"]:
        assert set(SPEED_KEYS) <= set(row)
    for row in res["fidelity"]:
        assert set(FIDELITY_KEYS) <= set(row)


def test_speed_and_fidelity_quick_paths(tmp_path):
    from lab.bench.fidelity import FidelityPlan, run_fidelity
    from lab.bench.speed import SpeedPlan, model_shapes, run_speed

    out = tmp_path / "results"
    seen = []

    def track(desc, total):
        seen.append(desc)
        return lambda n: None

    speed = SpeedPlan.quick_plan(d_flat=2048, ks=(64, 128), pairs_vectors=5, stream_bytes=1 << 22,
                                 configs=("sjlt-k{k}-keep1", "sjlt-k{k}-cal0.5", "gaussian-k{k}-keep0.1",
                                          "sjlt-k{k}-keep1-noembed"),
                                 fwd_bwd_responses=2, fwd_bwd_tokens=8)
    res = run_speed(speed, out, tmp_path / "work-speed", track, log=lambda m: None)
    _check_schema(res)
    assert res["fidelity"] == [] and res["stream_read_gbps"] > 0 and res["backward_seconds"] > 0
    assert {r["d"] for r in res["speed"]} == {2048, sum(math.prod(s) for s in model_shapes("tiny").values())}
    for r in res["speed"]:
        # JL: <Px, Py> / (|x||y|) has SD sqrt((1 + cos^2) / k) <= sqrt(2 / k) for a dense or sparse JL map.  Over
        # these 10 pairs the RMS reached 1.23 x sqrt(2 / k) at worst (measured, every row, k = 64 and 128);
        # 3 x leaves room for sampling noise and still fails for a mis-scaled or broken projector.
        jl = 3 * math.sqrt(2 / r["k"])
        assert r["seconds_per_gradient"] > 0 and 0 < r["naive_sjlt_ip_rel_error"] < jl, r
        if r["keep"] == 1 or r.get("keep_rule") == "calibrated":
            assert 0 < r["ip_rel_error"] < jl, r
        else:  # uniform sparsifier on heavy-tailed vectors: far worse than JL, which is why calibration exists
            assert math.isfinite(r["ip_rel_error"]) and r["ip_rel_error"] > jl, r
    # a rerun resumes from the finished sections (nothing is measured again)
    seen.clear()
    run_speed(speed, out, tmp_path / "work-speed", track, log=lambda m: None)
    assert seen == []

    fid = FidelityPlan.quick_plan(train_prompts=8, val_prompts=4, block=48, ks=(64, 128), seeds=2,
                                  configs=("sjlt-k{k}-keep1", "sjlt-k{k}-cal0.5-noembed"), scoring_pool=16,
                                  scoring_val_prompts=8)
    res = run_fidelity(fid, out, tmp_path / "work-fid", track, log=lambda m: None)
    _check_schema(res)
    assert res["speed"], "the fidelity command must keep the speed section (merge on write)"
    assert {r["config"] for r in res["fidelity"]} == {"sjlt-k64-keep1", "sjlt-k128-keep1", "sjlt-k64-cal0.5-noembed",
                                                       "sjlt-k128-cal0.5-noembed"}
    for r in res["fidelity"]:
        assert 0 <= r["precision_at_10"] <= 1 and -1 <= r["spearman"] <= 1 and r["exact_cosine_sd"] > 0
    assert res["scoring_cost_ratio"] > 0 and res["scoring"]["prompts_scored_per_second"] > 0
    # an interrupted fidelity run resumes after its last finished prompt and gives the same rows
    records = tmp_path / "work-fid" / "train_records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join(lines[:3]) + "\n")
    again = run_fidelity(fid, out, tmp_path / "work-fid", track, log=lambda m: None)
    assert len(records.read_text().splitlines()) == len(lines)
    for a, b in zip(res["fidelity"], again["fidelity"]):
        assert a["precision_at_10"] == pytest.approx(b["precision_at_10"]) and a["spearman"] == pytest.approx(b["spearman"])
    md = results_paths(out)[1].read_text()
    assert "## Targets" in md and "met" in md
    assert len(target_checks(read_json(results_paths(out)[0]))) == 4


def test_exact_scoring_quick_path_ranks_exactly_as_the_fp64_reference(tmp_path):
    from lab.bench.exact_scoring import run
    from lab.bench.fidelity import FidelityPlan

    plan = FidelityPlan.quick_plan(train_prompts=20, val_prompts=6, threads=1)
    res = run(plan, tmp_path / "out", tmp_path / "work", k=256, log=lambda m: None)
    exact, projected = res["modes"]
    assert exact["mode"] == "exact" and exact["precision_at_10"] == 1.0 and exact["max_abs_cosine_error"] < 1e-5
    assert projected["max_abs_cosine_error"] > exact["max_abs_cosine_error"]  # k = 256: visible projection noise
    assert res["train_prompts"] == 20 and (tmp_path / "out" / "exact_scoring.md").exists()


def _write_probe_run(run_dir, curve, finished, sampled=10):
    import json
    run_dir.mkdir(parents=True)
    rows = []
    for step, acc in curve:
        rows.append({"event": "step", "step": step, "sampled_sequences": sampled})
        rows.append({"event": "eval", "step": step, "seconds": float(step), "targeted": acc, "n": {"add": 100}})
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if finished:
        (run_dir / "summary.json").write_text("{}")


def test_probe_summary_ignores_a_stopped_runs_cut_short_last_point(tmp_path):
    from lab.bench.probe_summary import summarize_probe

    full = [(0, 0.3), (10, 0.4), (20, 0.5), (30, 0.6), (40, 0.6)]  # smoothed best 0.6 (last point, run finished)
    _write_probe_run(tmp_path / "runs" / "full-s0", full, finished=True)
    # stopped: its last two points smooth to 0.625 there, a crossing only the missing right neighbour allows
    # (the complete window at step 30 is 0.517)
    _write_probe_run(tmp_path / "runs" / "spike-s0", [(0, 0.3), (10, 0.4), (20, 0.3), (30, 0.4), (40, 0.85)],
                     finished=False)
    # stopped, crossing where its window is complete: smoothed 0.4, 0.6, 0.7 at 10, 20, 30 -> 0.6 at step 20
    _write_probe_run(tmp_path / "runs" / "early-s0", [(0, 0.3), (10, 0.5), (20, 0.6), (30, 0.7), (40, 0.8), (50, 0.2)],
                     finished=False)
    res = summarize_probe(tmp_path)
    assert abs(res["threshold"]["targeted"] - 0.6) < 1e-9
    assert res["threshold"]["full_steps"] == 40.0
    assert res["runs"]["spike-s0"]["steps_to_threshold"] is None
    early = res["runs"]["early-s0"]
    # slow reference: the smoothed value at step 20 is (0.5 + 0.6 + 0.7) / 3 = 0.6, the first at the threshold
    assert abs(early["steps_to_threshold"] - 20.0) < 1e-9
    assert abs(early["step_acceleration"] - 2.0) < 1e-9
    assert abs(early["seconds_to_threshold"] - 20.0) < 1e-9  # these rows' seconds equal their steps
    assert abs(early["wall_acceleration"] - 2.0) < 1e-9
    assert early["sequences_to_threshold"] == 30  # steps 0, 10 and 20, 10 responses each
    assert abs(early["last3"] - (0.7 + 0.8 + 0.2) / 3) < 1e-9


def test_cost_model_sets_each_runs_seconds_against_full_data_on_its_own_machine(tmp_path):
    """Full data takes 1 s/step on machine A and 3 s/step on B (mean 2 s); a run on B that trains 6 s/step is 4 s
    on the mean machine's scale, and a run on a machine with no full-data run is left out."""
    from lab.bench.cost_model import Workload, measure, model
    from cropi.io import write_json

    runs = tmp_path / "runs"

    def run(name, host, per_step, kinds, stages=()):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.jsonl").write_text("".join(
            f'{{"event": "step", "step": {i}, "rollout_seconds": {per_step}, "train_seconds": {per_step}}}\n'
            for i in range(1, 5)))
        write_json(runs / name / "summary.json", {
            "host": host, "steps": 4, "prompts_per_step": 2, "group_size": 2, "collect_seconds": 0.0,
            "seconds_by_kind": {k: v * 4 for k, v in kinds.items()}, "stage_summaries": list(stages),
            "config": {"select": {"candidates": 0, "refresh_every": 0, "score": {"max_val_prompts": 1}},
                       "data": {"suite": {"pool_size": 10}}}})

    run("full-s0", "A", 1.0, {"rollouts": 1.0, "training": 1.0})
    run("full-s0@B", "B", 3.0, {"rollouts": 3.0, "training": 3.0})
    ess = {"ess": {"usable": 3, "candidates": 6, "score_seconds": 12.0}, "behaviour": {"validation": {"a": 0}}}
    run("x-s0", "B", 0.0, {"rollouts": 3.0, "training": 6.0, "selection": 0.5}, [ess])
    run("x-s1", "C", 0.0, {"rollouts": 100.0, "training": 100.0})
    write_json(tmp_path / "results.json", {"selectors": {
        "full": {"seeds": {"0": {}}, "median": {"step_acceleration": None}},  # its median seed missed the mean's best
        "x": {"seeds": {"0": {}, "1": {}}, "median": {"step_acceleration": 2.0}}}})
    m = measure(tmp_path)
    assert m.rollout_seconds_per_step == 2.0 and m.update_seconds_per_step == 2.0
    x = m.methods["x"]
    assert x["seeds_timed"] == 1 and x["seconds_per_step"] == {"rollouts": 2.0, "training": 4.0, "selection": 0.5}
    # 12 s over 3 usable + 1 validation prompt on B is 2 s per gradient on the mean machine, against 1 s of
    # update per trained prompt there
    assert m.score_multiple == pytest.approx(2.0) and m.usable_share == 0.5
    # full data's steps are the workload's by definition; x takes half as many, at its own cost per step
    block = model(m, Workload(), 650)["0.5"]["methods"]
    assert block["full"]["steps"] == 650 and block["x"]["steps"] == 325 and block["full"]["wall_acceleration"] == 1.0
    assert any(name.startswith("authors' regime") for name in block)
    # re-read against a longer full-data run's best: x's steps follow the plateau check's median, and a method
    # the check does not read is left out rather than priced to another threshold
    from lab.bench.cost_model import reread_accelerations

    longer = reread_accelerations(m, {"selectors": {"full": {"median": {"step_acceleration": 1.0}},
                                                    "x": {"median": {"step_acceleration": 5.0}}}})
    assert longer.methods["x"]["step_acceleration"] == 5.0 and m.methods["x"]["step_acceleration"] == 2.0
    assert model(longer, Workload(), 650)["0.5"]["methods"]["x"]["steps"] == 130
    assert set(reread_accelerations(m, {"selectors": {"full": {"median": {"step_acceleration": 1.0}}}}).methods) == {"full"}
    # a comparison where no run scored a pool prices every method but not the authors' regime
    write_json(runs / "x-s0" / "summary.json", {**read_json(runs / "x-s0" / "summary.json"), "stage_summaries": []})
    unscored = measure(tmp_path)
    assert unscored.score_multiple is None and unscored.methods["x"] == m.methods["x"]
    assert set(model(unscored, Workload(), 650)["0.5"]["methods"]) == {"full", "x"}
