"""`cropi verl`: the stage loop up to verl's trainer, with a launcher stand-in (tests/verl_standin.py) in place of
verl's GPU trainer and merger; the one-line errors before anything is written; the reward module."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cropi.cli import app
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.tasks.problem import Problem

runner = CliRunner()
STANDIN = Path(__file__).with_name("verl_standin.py")
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _problems(prefix, n):
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


def with_chat_template(src: Path, dst: Path, template: str = CHAT_TEMPLATE) -> Path:
    shutil.copytree(src, dst)
    cfg_path = dst / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(tok_cfg))
    return dst


@pytest.fixture(scope="module")
def stores(micro_model_dir, tmp_path_factory):
    """A chat-templated micro model, its pool and validation stores, and the pool file."""
    from cropi.policy import load_policy

    tmp = tmp_path_factory.mktemp("verl")
    model = with_chat_template(micro_model_dir, tmp / "model")
    policy = load_policy(str(model), device="cpu")
    cfg = CollectConfig(group_size=24, max_new_tokens=1, chunk_size=5, temperature=3.0)
    problems = _problems("p", 20)
    pool = collect(policy, problems, tmp / "pool", cfg)
    val = collect(policy, _problems("v", 8), tmp / "val", cfg)
    pool_file, val_file = tmp / "pool.jsonl", tmp / "val.jsonl"
    pool_file.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in problems))
    val_file.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in _problems("v", 8)))
    return {"tmp": tmp, "model": model, "pool": pool, "val": val, "pool_file": pool_file, "val_file": val_file}


def verl_args(s, out, *extra):
    py = sys.executable
    return ["verl", "--out", str(out), "--pool-store", str(s["pool"]), "--val-store", f"count={s['val']}",
            "--model", str(s["model"]), "--device", "cpu", "--pool", str(s["pool_file"]), "--val", f"count={s['val_file']}", "--stages", "2",
            "--steps-per-stage", "2", "--select-ratio", "0.2", "--set", "select.score.k=64",
            "--set", "select.candidates=0", "--set", "select.size=0",  # the whole pool scored, 20% kept
            "--set", "select.score.chunk_size=4", "--set", "select.score.mode=projected",
            "--launcher", f"{py} {STANDIN} train", "--merger", f"{py} {STANDIN} merge",
            "--verl-arg", "actor_rollout_ref.actor.optim.lr=1e-6", *extra]


def calls(log: Path, cmd: str) -> list[dict]:
    rows = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    return [r for r in rows if r["cmd"] == cmd]


def overrides(call: dict) -> dict[str, str]:
    """The trainer's overrides, values without hydra's single quotes (paths with brackets get them)."""
    pairs = (a.split("=", 1) for a in call["argv"])
    return {k: v[1:-1] if len(v) > 1 and v[0] == v[-1] == "'" else v for k, v in pairs}


@pytest.fixture(scope="module")
def run(stores, tmp_path_factory):
    """Two stages with the stand-in: stage 1 interrupted once, then rerun to the end, then rerun again.  The
    folder's name holds brackets, which rich would read as markup."""
    out = stores["tmp"] / "run[bold]"
    log = stores["tmp"] / "standin.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("CROPI_STANDIN_LOG", str(log))
    args = verl_args(stores, out, "--", "trainer.logger=[console,tensorboard]", "trainer.n_gpus_per_node=1")
    try:
        mp.setenv("CROPI_STANDIN_CRASH_FROM", "2")
        interrupted = runner.invoke(app, args)
        mp.delenv("CROPI_STANDIN_CRASH_FROM")
        after_crash = sorted(p.name for p in (out / "checkpoints").glob("global_step_*"))
        finished = runner.invoke(app, args)
        done_before = (out / "stages" / "stage-01" / "done.json").read_text()
        rerun = runner.invoke(app, args)
    finally:
        mp.undo()
    return {"out": out, "log": log, "interrupted": interrupted, "after_crash": after_crash, "finished": finished,
            "rerun": rerun, "done_before": done_before, "args": args}


def test_interrupted_stage_fails_in_one_line_and_restarts_from_its_start_checkpoint(run):
    r = run["interrupted"]
    assert r.exit_code == 2 and "stage 1: verl's trainer exited with code 1" in r.output, r.output
    assert run["after_crash"] == ["global_step_2", "global_step_3"]  # the crash left a step past the stage start
    assert run["finished"].exit_code == 0, run["finished"].output
    trains = calls(run["log"], "train")
    assert [(c["start"], c["total"]) for c in trains] == [(0, 2), (2, 4), (2, 4)]  # stage 0 trained once
    assert trains[2]["checkpoints_at_start"] == ["global_step_2"]  # the leftover step 3 was removed first


def test_progress_lines_print_paths_unchanged(run):
    log = run["out"] / "stages" / "stage-01" / "verl-train.log"
    assert f"stage 1: verl trains 2 steps (log: {log})" in run["finished"].output, run["finished"].output
    assert f"stage 1: model {run['out'] / 'stages' / 'stage-01' / 'model'}" in run["finished"].output


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def with_options(args: list[str], *options: str) -> list[str]:
    """``args`` with ``options`` before its ``--`` (what follows ``--`` are verl overrides)."""
    i = args.index("--") if "--" in args else len(args)
    return args[:i] + list(options) + args[i:]


@pytest.mark.parametrize("options, expect", [
    (("--set", "select.score.mode=exact"), "another config (select.score.mode: 'projected', now 'exact')"),
    (("--set", "rollout.group_size=4"), "another config (rollout.group_size: 8, now 4)"),
    (("--verl-arg", "actor_rollout_ref.actor.optim.lr=2e-6"), "other settings (verl_args:"),
])
def test_rerun_with_other_settings_is_refused_and_writes_nothing(run, options, expect):
    before = files_of(run["out"])
    r = runner.invoke(app, with_options(run["args"], *options))
    _one_line_error(r, expect)
    assert files_of(run["out"]) == before


def test_rerun_of_a_finished_run_skips_every_stage(run):
    assert run["rerun"].exit_code == 0, run["rerun"].output
    assert len(calls(run["log"], "train")) == 3 and len(calls(run["log"], "merge")) == 2
    assert (run["out"] / "stages" / "stage-01" / "done.json").read_text() == run["done_before"]
    assert "stage 0: done, skipped" in run["rerun"].output


def test_stages_resume_the_previous_checkpoint_and_steps_accumulate(run):
    out = run["out"]
    first, _, second = (overrides(c) for c in calls(run["log"], "train"))
    assert first["trainer.resume_mode"] == "disable" and first["trainer.total_training_steps"] == "2"
    assert second["trainer.resume_mode"] == "resume_path" and second["trainer.total_training_steps"] == "4"
    assert second["trainer.resume_from_path"].endswith("resume/stage-01/global_step_2")
    assert second["trainer.default_local_dir"] == str((out / "checkpoints").resolve())
    # the model path stays the base model (verl's reference policy); the weights come from the checkpoint
    assert first["actor_rollout_ref.model.path"] == second["actor_rollout_ref.model.path"]
    import torch

    optim = torch.load(out / "checkpoints" / "global_step_4" / "actor" / "optim_world_size_1_rank_0.pt", weights_only=True)
    assert int(optim["state"][0]["step"]) == 4  # the optimizer state carried through both stages
    assert json.loads((out / "stages" / "stage-01" / "done.json").read_text())["end_step"] == 4


def test_user_overrides_reach_the_command_line_once_and_win_over_the_mapped_defaults(run):
    for call in calls(run["log"], "train"):
        keys = [a.split("=", 1)[0] for a in call["argv"]]
        assert len(keys) == len(set(keys))  # the stand-in also refuses duplicates
        o = overrides(call)
        assert o["actor_rollout_ref.actor.optim.lr"] == "1e-6"  # --verl-arg, over cropi's train.lr
        assert o["trainer.logger"] == "[console,tensorboard]" and o["trainer.n_gpus_per_node"] == "1"  # after --
        assert o["actor_rollout_ref.rollout.n"] == "8" and o["algorithm.adv_estimator"] == "grpo"  # mapped from cropi
        assert o["actor_rollout_ref.actor.optim.betas"] == "[0.9,0.99]"  # cropi's Adam betas, not verl's 0.999
        assert o["reward.custom_reward_function.path"].endswith("cropi/integrations/verl_reward.py")
    assert call["argv"][-3:] == ["actor_rollout_ref.actor.optim.lr=1e-6", "trainer.logger=[console,tensorboard]",
                                 "trainer.n_gpus_per_node=1"]


def test_stage_parquet_ids_equal_cropi_select_with_the_merged_weights(run, stores):
    """Stage 1 trains on what `cropi score` + `cropi select` choose with stage 0's merged model."""
    out, tmp = run["out"], stores["tmp"]
    merged = out / "stages" / "stage-00" / "model"
    r = runner.invoke(app, ["score", "--pool-store", str(stores["pool"]), "--val-store", f"count={stores['val']}",
                            "--model", str(merged), "--device", "cpu", "--k", "64", "--chunk-size", "4",
                            "--mode", "projected", "--select-ratio", "0.2", "--out", str(tmp / "check.parquet")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["select", "--scores", str(tmp / "check.parquet"), "--pool", str(stores["pool_file"]),
                            "--select-ratio", "0.2", "--out", str(tmp / "check.jsonl")])
    assert r.exit_code == 0, r.output
    expected = [json.loads(l)["id"] for l in (tmp / "check.jsonl").read_text().splitlines()]
    stage1 = pq.read_table(out / "stages" / "stage-01" / "train.parquet").to_pylist()
    assert [row["extra_info"]["index"] for row in stage1] == expected and len(expected) == 4
    assert calls(run["log"], "train")[-1]["ids"] == expected  # what the trainer was given
    # the merged weights differ from the base model's, so the two stages' scores differ
    s0 = pq.read_table(out / "stages" / "stage-00" / "scores.parquet").to_pylist()
    s1 = pq.read_table(out / "stages" / "stage-01" / "scores.parquet").to_pylist()
    assert [x["score_count"] for x in s0] != [x["score_count"] for x in s1]


def test_stage_parquet_rows_carry_the_pool_id_prompt_and_gradable_truth(run):
    rows = pq.read_table(run["out"] / "stages" / "stage-00" / "train.parquet").to_pylist()
    ids = json.loads((run["out"] / "stages" / "stage-00" / "train.ids.json").read_text())["ids"]
    assert [r["extra_info"]["index"] for r in rows] == ids
    for r in rows:
        i = int(r["extra_info"]["index"][1:])
        assert r["prompt"] == [{"role": "user", "content": f"count a {'ab' * (i % 3 + 1)}="}]
        assert json.loads(r["reward_model"]["ground_truth"]) == {"answer": str(i % 3 + 1), "family": "count",
                                                                 "synthetic": True}
        assert r["data_source"] == "count" and r["extra_info"]["split"] == "train"
    val = pq.read_table(run["out"] / "val.parquet").to_pylist()
    assert [r["extra_info"]["index"] for r in val] == [f"v{i}" for i in range(8)]


def _one_line_error(r, expect):
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output
    assert len([l for l in r.output.splitlines() if l.strip()]) <= 3


def test_missing_verl_is_one_line_naming_the_extra_and_writes_nothing(stores, tmp_path, monkeypatch):
    import cropi.extras

    real = cropi.extras.importlib.import_module

    def no_verl(name, *a, **k):
        if name == "verl" or name.startswith("verl."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(cropi.extras.importlib, "import_module", no_verl)
    monkeypatch.delenv("CROPI_VERL_PYTHON", raising=False)
    args = [a for a in verl_args(stores, tmp_path / "run") if "verl_standin" not in a]
    args = [a for i, a in enumerate(args) if a not in ("--launcher", "--merger")]
    r = runner.invoke(app, args)
    _one_line_error(r, "pip install 'cropi[verl]'")
    assert not (tmp_path / "run").exists()


def test_verl_python_without_verl_is_one_line_naming_the_extra(stores, tmp_path):
    args = verl_args(stores, tmp_path / "run")
    args = [a for i, a in enumerate(args) if a not in ("--launcher", "--merger") and "verl_standin" not in a]
    r = runner.invoke(app, args + ["--verl-python", sys.executable + "-absent"])
    _one_line_error(r, "cropi[verl]")
    assert not (tmp_path / "run").exists()


def test_override_of_a_key_the_loop_owns_is_refused_before_anything_is_written(stores, tmp_path):
    r = runner.invoke(app, verl_args(stores, tmp_path / "run", "--", "trainer.total_training_steps=99"))
    _one_line_error(r, "trainer.total_training_steps is set by cropi verl")
    r = runner.invoke(app, verl_args(stores, tmp_path / "run", "--", "trainer.save_freq=-1"))
    _one_line_error(r, "trainer.save_freq must be a positive integer")
    r = runner.invoke(app, verl_args(stores, tmp_path / "run", "--", "not an override"))
    _one_line_error(r, "expected a hydra override")
    assert not (tmp_path / "run").exists()


def test_val_store_names_must_equal_the_validation_sets(stores, tmp_path):
    args = verl_args(stores, tmp_path / "run")
    args[args.index("--val-store") + 1] = f"other={stores['val']}"
    _one_line_error(runner.invoke(app, args), "--val-store names ['other'] differ from the validation sets ['count']")
    two = with_options(verl_args(stores, tmp_path / "run"), "--val-store", f"more={stores['val']}")
    _one_line_error(runner.invoke(app, two), "differ from the validation sets ['count']")
    assert not (tmp_path / "run").exists()


def test_store_of_other_prompts_than_the_loaded_data_is_refused(stores, tmp_path):
    swapped = verl_args(stores, tmp_path / "run")
    swapped[swapped.index("--pool-store") + 1] = str(stores["val"])
    _one_line_error(runner.invoke(app, swapped), "than the pool of this run")
    swapped = verl_args(stores, tmp_path / "run")
    swapped[swapped.index("--val-store") + 1] = f"count={stores['pool']}"
    _one_line_error(runner.invoke(app, swapped), "than validation set 'count' of this run")
    reordered = tmp_path / "pool-reversed.jsonl"
    reordered.write_text("".join(reversed(stores["pool_file"].read_text().splitlines(keepends=True))))
    args = verl_args(stores, tmp_path / "run")
    args[args.index("--pool") + 1] = str(reordered)
    _one_line_error(runner.invoke(app, args), "collected from other prompts (or another order)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, expect", [
    ("actor_rollout_ref.actor.optim.lr_scheduler_type=cosine", "only the constant learning-rate schedule"),
    ("++actor_rollout_ref.actor.optim.warmup_style='cosine'", "only the constant learning-rate schedule"),
    ("actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1", "lr_warmup_steps_ratio must be 0"),
    ("data.apply_chat_template_kwargs.enable_thinking=false", "cropi uses the model's own chat template"),
    ("+actor_rollout_ref.model.custom_chat_template='{{ x }}'", "cropi uses the model's own chat template"),
])
def test_override_verl_would_apply_otherwise_per_stage_or_per_prompt_is_refused(stores, tmp_path, override, expect):
    _one_line_error(runner.invoke(app, verl_args(stores, tmp_path / "run", "--", override)), expect)
    assert not (tmp_path / "run").exists()


def test_constant_schedule_with_a_step_warmup_is_accepted():
    from cropi.integrations.verl_overrides import check_verl_args

    check_verl_args(["actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
                     "actor_rollout_ref.actor.optim.warmup_style=null",
                     "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
                     "actor_rollout_ref.actor.optim.lr_warmup_steps=3", "trainer.save_freq=2"])


def test_model_without_chat_template_is_refused_in_one_line(stores, micro_model_dir, tmp_path):
    args = verl_args(stores, tmp_path / "run")
    args[args.index("--model") + 1] = str(micro_model_dir)
    _one_line_error(runner.invoke(app, args), "no chat template")
    assert not (tmp_path / "run").exists()


def load_reward_module():
    """By file path, the way verl's loader imports ``custom_reward_function.path``."""
    from cropi.integrations.verl import REWARD_MODULE

    spec = importlib.util.spec_from_file_location("custom_module", REWARD_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reward_module_grades_cropi_ground_truth_and_plain_answers():
    from cropi.selection.export import verl_ground_truth
    from cropi.tasks import grade
    from cropi.tasks.synthetic import FAMILIES

    fn = load_reward_module().compute_score
    add = Problem("a1", "347+285=", "632", "add")  # the policy writes it least-significant digit first
    assert FAMILIES["add"].reward("632", "236") == 1.0
    gt = verl_ground_truth(add)
    assert fn(data_source="add", solution_str="236", ground_truth=gt, extra_info={"index": "a1"}) == 1.0
    assert fn(data_source="add", solution_str="632", ground_truth=gt, extra_info={"index": "a1"}) == 0.0
    assert fn("add", "236", gt, None, reward_router_address=None) == grade(add, "236")
    gsm = Problem("g1", "q", "72", "gsm8k", source="gsm8k.jsonl")
    assert fn("gsm8k", "so \\boxed{72}", verl_ground_truth(gsm)) == 1.0
    assert fn("openai/gsm8k", "#### 72", "72") == 1.0 and fn("openai/gsm8k", "#### 71", "72") == 0.0
    shot = Problem("f1", "3+4=7\n5+6=", "11", "add", metadata={"style": "few_shot"})  # graded on the first line
    for response in ("11\n2+2=4", "11", "12\n11", "11 2"):
        assert fn("add", response, verl_ground_truth(shot)) == grade(shot, response)
    assert fn("add", "11\n2+2=4", verl_ground_truth(shot)) == 1.0


@pytest.mark.slow  # a second two-stage run plus a re-collection: about 35 s of CPU on top of the file's
def test_refresh_stage_recollects_with_the_merged_model_and_scores_on_it(stores, tmp_path, monkeypatch):
    from cropi.policy import load_policy, model_fingerprint
    from cropi.rollouts.trajectory_store import store_meta

    monkeypatch.setenv("CROPI_STANDIN_LOG", str(tmp_path / "standin.jsonl"))
    out = tmp_path / "run"
    r = runner.invoke(app, verl_args(stores, out, "--set", "select.refresh_every=1", "--set", "rollout.group_size=24",
                                     "--set", "rollout.temperature=3.0", "--set", "rollout.max_new_tokens=1"))
    assert r.exit_code == 0, r.output
    done = [json.loads((out / "stages" / f"stage-0{s}" / "done.json").read_text()) for s in (0, 1)]
    assert done[0]["behaviour"]["pool"] == str(stores["pool"]) and "refresh_collect_seconds" not in done[0]
    refreshed = out / "stages" / "stage-01" / "behaviour"
    assert done[1]["behaviour"] == {"pool": str(refreshed / "pool"), "validation": {"count": str(refreshed / "val-count")}}
    merged = load_policy(str(out / "stages" / "stage-00" / "model"), device="cpu")
    meta = store_meta(refreshed / "pool")
    assert meta["model_fingerprint"] == model_fingerprint(merged.model) and meta["num_prompts"] == 20
    scores_meta = json.loads(pq.read_schema(out / "stages" / "stage-01" / "scores.parquet").metadata[b"cropi"])
    assert scores_meta["pool_store"]["model_fingerprint"] == meta["model_fingerprint"]  # scored on the refresh
    assert scores_meta["pool_store"]["policy_tag"] == "stage-1"
