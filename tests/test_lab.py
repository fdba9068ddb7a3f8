"""The lab's readings (lab/readings.py, lab/scripts): results across machines, contention, draws, plateau
readings, and the scripts that keep a long comparison's run records between machines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.readings import compute_results_across_machines as compute_results


def _curve(ys, dt=10.0, t0=0.0):
    return [{"step": 10 * i, "targeted": y, "untargeted": 0.5, "seconds": t0 + dt * i} for i, y in enumerate(ys)]


def _draw(full_ys, cropi_ys_by_seed):
    summaries = {"full": {0: {"curve": _curve(full_ys)}, 1: {"curve": _curve(full_ys)}},
                 "cropi": {s: {"curve": _curve(ys)} for s, ys in cropi_ys_by_seed.items()}}
    return compute_results(summaries, "m", 60)


def test_draw_spread_is_the_range_of_draw_medians_beside_the_range_of_seeds(tmp_path):
    from lab.readings import draw_spread

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


def test_the_draw_spread_script_writes_its_named_report_from_each_draws_results(tmp_path):
    import subprocess
    import sys

    from lab.readings import draw_spread

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast, slow = [0.30, 0.40, 0.44, 0.45, 0.45, 0.45, 0.45], [0.30, 0.32, 0.35, 0.38, 0.41, 0.44, 0.44]
    draws = {"d0": _draw(full, {0: fast, 1: fast}), "d1": _draw(full, {0: fast, 1: slow})}
    args = []
    for name, results in draws.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(results))
        args.append(f"{name}={tmp_path / name}.json")
    script = Path(__file__).resolve().parents[1] / "lab" / "scripts" / "draw_spread.py"
    subprocess.run([sys.executable, str(script), *args, "--out", str(tmp_path), "--name", "draws-clean"], check=True)
    written = json.loads((tmp_path / "draws-clean.json").read_text())
    assert written["selectors"] == json.loads(json.dumps(draw_spread(draws)))["selectors"]
    report = (tmp_path / "draws-clean.md").read_text()
    assert "| d0 | d1 |" in report.replace("selector | ", "")
    bad = subprocess.run([sys.executable, str(script), "d0", "--out", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "NAME=results.json" in bad.stderr


def test_draw_spread_leaves_out_selectors_missing_from_a_draw_and_counts_never():
    from lab.readings import draw_spread

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    a = _draw(full, {0: [0.30, 0.31, 0.32, 0.32, 0.32, 0.32, 0.32]})  # never reaches the threshold
    b = compute_results({"full": {0: {"curve": _curve(full)}}}, "m", 60)
    assert set(draw_spread({"a": a, "b": b})["selectors"]) == {"full"}
    never = draw_spread({"a": a})["selectors"]["cropi"]["step_acceleration"]
    assert never["never"] == 1 and never["between_draws"] is None and never["between_seeds_max"] is None


def test_wall_clock_acceleration_divides_by_full_datas_seconds_on_the_runs_own_machine(tmp_path):
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


def test_a_contended_run_has_no_wall_clock_acceleration_and_is_no_machines_seconds_reference(tmp_path):
    from lab.readings import contended, cores_of

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


def test_plateau_reading_against_hand_computed_values(tmp_path):
    from lab.bench.plateau import main as plateau_main
    from lab.readings import plateau_reading

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
    script = Path(__file__).resolve().parents[1] / "lab" / "scripts" / "read_compare_runs.py"
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


def _scenario_results(rows: dict[str, list[tuple]]) -> dict:
    """A results.json of the shape cropi compare writes: per selector, per seed (steps to threshold, wall accel.,
    final targeted), medians over seeds."""
    import statistics

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    out = {"threshold_targeted": 0.5, "full_steps_to_threshold": 600, "full_seconds_to_threshold": 900.0,
           "noise_floor": None, "selectors": {}}
    for name, seeds in rows.items():
        per = {str(i): {"steps_to_threshold": s, "step_acceleration": (600 / s if s else None),
                        "wall_acceleration": w, "final_targeted": f, "best_untargeted": 0.4}
               for i, (s, w, f) in enumerate(seeds)}
        out["selectors"][name] = {"seeds": per, "median": {k: med([r[k] for r in per.values()]) for k in
                                                           ("step_acceleration", "wall_acceleration", "final_targeted",
                                                            "best_untargeted")}}
    return out


def test_scenario_table_puts_medians_side_by_side_and_judges_the_targets(tmp_path):
    from lab.readings import scenario_table, write_scenario_table

    clean = _scenario_results({"full": [(600, 1.0, 0.50)] * 3,
                               "cropi_harvest": [(300, 1.4, 0.57), (320, 1.5, 0.56), (280, 1.3, 0.58)],
                               "online_filter": [(250, 1.6, 0.59)] * 3, "greso": [(320, 1.3, 0.57)] * 3})
    noisy = _scenario_results({"full": [(600, 1.0, 0.45)] * 3,
                               "cropi_harvest": [(200, 2.0, 0.55), (220, 1.8, 0.54), (None, None, 0.40)],
                               "online_filter": [(None, None, 0.44)] * 3, "greso": [(300, 1.5, 0.50)] * 3})
    scarce = _scenario_results({"full": [(600, 1.0, 0.45)] * 3, "cropi_harvest": [(400, 1.2, 0.49)] * 3,
                                "online_filter": [(300, 1.7, 0.48)] * 3})
    table = scenario_table({"clean": clean, "noisy_keys": noisy, "off_target": scarce})
    h = table["selectors"]["cropi_harvest"]
    assert h["clean"]["wall_acceleration"] == 1.4 and h["clean"]["final_targeted"] == 0.57
    assert h["noisy_keys"]["never"] == 1 and h["noisy_keys"]["wall_acceleration"] == pytest.approx(1.9)
    assert table["selectors"]["greso"]["off_target"] is None  # not run there
    assert table["targets"]["clean"] == {"best_peer": "online_filter", "wall_ratio_to_best_peer": pytest.approx(1.4 / 1.6)}
    # noisy: the online filter never got there (beaten in wall), greso is slower and lower
    assert table["targets"]["noisy_keys"] == {"beats_every_peer_in_wall": True, "beats_every_peer_in_final": True,
                                              "peers": ["greso", "online_filter"]}
    assert table["targets"]["off_target"]["beats_every_peer_in_wall"] is False
    assert table["targets"]["off_target"]["beats_every_peer_in_final"] is True
    write_scenario_table(table, tmp_path / "scenarios-table")
    md = (tmp_path / "scenarios-table.md").read_text()
    assert "| cropi_harvest | 1.40× | 1.90× | 1.20× |" in md and "never (3/3)" in md and "| greso | " in md
    assert (tmp_path / "scenarios-table.json").exists()


def test_ordering_verdict_ranks_by_each_measure_with_never_last_and_full_at_one():
    from lab.readings import method_order, ordering_verdict

    toy = _scenario_results({"full": [(600, None, 0.53)] * 3, "cropi_harvest": [(300, 1.4, 0.57)] * 3,
                             "online_filter": [(240, 1.6, 0.59)] * 3, "greso": [(320, 1.3, 0.57)] * 3})
    real = _scenario_results({"full": [(150, None, 0.20)], "cropi_harvest": [(100, 1.2, 0.22)],
                              "online_filter": [(None, None, 0.18)]})
    sel = ["full", "cropi_harvest", "online_filter", "greso"]
    assert method_order(toy, sel, "wall_acceleration") == ["online_filter", "cropi_harvest", "greso", "full"]
    assert method_order(real, sel, "wall_acceleration") == ["cropi_harvest", "full", "online_filter"]
    assert method_order(real, sel, "step_acceleration") == ["cropi_harvest", "full", "online_filter"]
    v = ordering_verdict(toy, real, sel, ("the toy", "SmolLM2"))
    assert v["selectors"] == ["full", "cropi_harvest", "online_filter"]  # greso was not run on SmolLM2
    assert v["holds"] == {"wall_acceleration": False, "step_acceleration": False, "final_targeted": False}
    assert v["verdict"].startswith("the toy's ordering does not hold on SmolLM2: seconds to full data's best "
                                   "(cropi_harvest > full > online_filter against online_filter > cropi_harvest > full)")
    mixed = ordering_verdict(toy, _scenario_results({"full": [(150, None, 0.20)], "cropi_harvest": [(30, 3.3, 0.21)],
                                                     "online_filter": [(40, 1.5, 0.22)]}), sel, ("the toy", "SmolLM2"))
    assert mixed["holds"] == {"wall_acceleration": False, "step_acceleration": False, "final_targeted": True}
    assert mixed["verdict"] == ("the toy's ordering holds on SmolLM2 in final targeted accuracy, not in seconds to full "
                                "data's best (cropi_harvest > online_filter > full against online_filter > cropi_harvest "
                                "> full), nor in steps to it (cropi_harvest > online_filter > full against online_filter "
                                "> cropi_harvest > full).")
    same = ordering_verdict(toy, toy, sel, ("the toy", "the toy again"))
    assert all(same["holds"].values()) and "holds on the toy again in every measure" in same["verdict"]


def test_trained_noisy_keys_counts_the_mis_keyed_share_of_the_trained_targeted_groups(tmp_path):
    """lab/scripts/trained_noisy_keys.py against a hand count on a run folder whose trained groups are chosen
    here: first trainings and repeats apart, untargeted groups out of the shares."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cropi.config import dump_config, load_config
    from cropi.io import read_json
    from cropi.tasks.synthetic import build_suite

    cfg = load_config(None, ["data.suite.scenario=noisy_keys", "data.suite.pool_size=400"])
    suite = build_suite(cfg.data.suite)
    bad = next(p.id for p in suite.pool if p.metadata.get("noisy_key"))
    good = next(p.id for p in suite.pool if p.family in suite.targeted and not p.metadata.get("noisy_key"))
    other = next(p.id for p in suite.pool if p.family not in suite.targeted)
    run = tmp_path / "cropi_harvest-s0"
    (run / "trained").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    steps = {0: [(bad, [1.0, 0.0, 0.0, 1.0]), (good, [1.0, 0.0, 1.0, 1.0]), (other, [0.0, 1.0, 0.0, 0.0])],
             1: [(bad, [1.0, 1.0, 1.0, 0.0])]}
    for step, groups in steps.items():
        rows = [(pid, r) for pid, rewards in groups for r in rewards]
        pq.write_table(pa.table({"prompt_id": [p for p, _ in rows], "reward": [r for _, r in rows]}),
                       run / "trained" / f"step-{step:05d}.parquet")
    script = Path(__file__).resolve().parents[1] / "lab" / "scripts" / "trained_noisy_keys.py"
    out = tmp_path / "trained.json"
    subprocess.run([sys.executable, str(script), str(run), "--out", str(out)], check=True, capture_output=True)
    got = read_json(out)["runs"][0]
    n_targeted = sum(p.family in suite.targeted for p in suite.pool)
    assert got["pool_targeted"] == n_targeted
    assert got["pool_mis_keyed"] == sum(bool(p.metadata.get("noisy_key")) for p in suite.pool)
    assert got["trained_groups"] == 4 and got["targeted_share_of_trained"] == 0.75
    assert got["all"] == {"targeted_groups": 3, "mis_keyed": 2, "mis_keyed_share": 0.6667,
                          "mis_keyed_mean_reward": 0.625}
    assert got["first_trainings"]["mis_keyed_share"] == 0.5
    assert got["repeats"] == {"targeted_groups": 1, "mis_keyed": 1, "mis_keyed_share": 1.0,
                              "mis_keyed_mean_reward": 0.75}
    assert got["distinct_mis_keyed_trained"] == 1 and got["distinct_targeted_trained"] == 2


def test_results_across_machines_rereads_only_the_seconds_of_a_folder_whose_runs_span_machines(tmp_path):
    """lab/scripts/results_across_machines.py: the package's results.json of a folder carried over to a second
    machine, with each run's wall-clock acceleration against full data's seconds on its own machine (the reference
    run full-s0@b there) and every other number as the package wrote it."""
    import subprocess
    import sys

    from cropi.io import read_json, write_json
    from cropi.runs.metrics import compute_results as package_results

    full = [0.30, 0.33, 0.36, 0.39, 0.42, 0.42, 0.42]
    fast = [0.30, 0.45, 0.46, 0.46, 0.46, 0.46, 0.46]
    calm = {"mean": 2.0, "samples": 7, "cores": 2}
    folder = tmp_path / "compare-x"
    plans = {"full-s0": (full, 10.0, "a"), "full-s1": (full, 12.0, "a"), "cropi-s0": (fast, 2.0, "b"),
             "cropi-s1": (fast, 4.0, "a"), "full-s0@b": ([0.2] * 7, 5.0, "b")}
    for name, (ys, dt, host) in plans.items():
        write_json(folder / "runs" / name / "summary.json", {"curve": _curve(ys, dt=dt)})
        write_json(folder / "runs" / name / "host.json", {"schema_version": 1, "host": host,
                                                          "machine": "EPYC, 2 cores", "load_1min_at_evals": calm})
    # the package's results know no machine: every run divided by full data's seconds, whichever machine's
    package = package_results({"full": {0: {"curve": _curve(full)}, 1: {"curve": _curve(full, dt=12.0)}},
                               "cropi": {0: {"curve": _curve(fast, dt=2.0)}, 1: {"curve": _curve(fast, dt=4.0)}}},
                              60)
    package["selectors"]["cropi"]["seeds"]["0"]["training_signal"] = [{"stage": 0, "reward_mean": 0.25}]
    write_json(folder / "results.json", package)
    script = Path(__file__).resolve().parents[1] / "lab" / "scripts" / "results_across_machines.py"
    out = tmp_path / "across.json"
    subprocess.run([sys.executable, str(script), str(folder), "--out", str(out)], check=True, capture_output=True)
    got = read_json(out)
    s0, s1 = got["selectors"]["cropi"]["seeds"]["0"], got["selectors"]["cropi"]["seeds"]["1"]
    # full data's seconds at its crossing step: on a the mean of seeds 0 and 1 (10 and 12 s per evaluation), on b
    # the reference's (5 s per evaluation), so a's are 2.2 times b's
    assert (s0["host"], s1["host"]) == ("b", "a")
    assert s0["wall_acceleration"] == pytest.approx(
        got["hosts"]["b"]["full_seconds_to_threshold"] / s0["seconds_to_threshold"])
    assert s1["wall_acceleration"] == pytest.approx(
        got["hosts"]["a"]["full_seconds_to_threshold"] / s1["seconds_to_threshold"])
    assert got["hosts"]["a"]["full_seconds_to_threshold"] == pytest.approx(
        2 * got["hosts"]["b"]["full_seconds_to_threshold"] * 1.1)
    assert s0["wall_acceleration"] != package["selectors"]["cropi"]["seeds"]["0"]["wall_acceleration"]
    # everything but the seconds is the package's
    assert s0["training_signal"] == [{"stage": 0, "reward_mean": 0.25}]
    for key in ("threshold_targeted", "full_steps_to_threshold", "budget_steps"):
        assert got[key] == package[key]
    assert s0["steps_to_threshold"] == package["selectors"]["cropi"]["seeds"]["0"]["steps_to_threshold"]
    assert got["seconds_across_machines"] == ["a", "b"]
    # a results.json from other runs is refused
    package["threshold_targeted"] += 0.01
    write_json(folder / "results.json", package)
    refused = subprocess.run([sys.executable, str(script), str(folder), "--out", str(out)], capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "threshold" in refused.stderr


def test_shrink_png_keeps_a_plot_readable_in_a_palette_and_fewer_bytes(tmp_path):
    """lab/scripts/shrink_png.py: the committed plots rewritten in a 256-colour palette, same size, each pixel
    close to the original, fewer bytes; a palette file is left alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    import runpy

    shrink = runpy.run_path(str(Path(__file__).resolve().parents[1] / "lab" / "scripts" / "shrink_png.py"))["shrink"]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.linspace(0, 600, 200)
    for k in range(6):
        ax.plot(x, np.sin(x / 50 + k) + k, label=f"rule {k}")
        ax.fill_between(x, np.sin(x / 50 + k) + k - 0.2, np.sin(x / 50 + k) + k + 0.2, alpha=0.2)
    ax.legend()
    png = tmp_path / "plot.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    before = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    size_before, size_after = shrink(png)
    assert size_after == len(png.read_bytes()) < size_before
    with Image.open(png) as im:
        assert im.mode == "P"
        after = np.asarray(im.convert("RGB"), dtype=int)
    assert after.shape == before.shape
    assert np.abs(after - before).mean() < 2.0 and np.percentile(np.abs(after - before).max(axis=2), 99) < 40
    assert shrink(png) == (size_after, size_after)  # already a palette
