"""cropi's verl files read by verl's real code, in verl's own environment ($CROPI_VERL_PYTHON, default
~/venvs/verl/bin/python as the README sets it up; skipped when absent): RLHFDataset on the stage parquet and the prompt tokens verl's
agent loop builds from its rows (against cropi's), verl's reward-function loader on cropi's reward module, hydra
composition of the trainer command line, and verl's model merger on a checkpoint in the layout the launcher
stand-in writes.

All slow: each starts verl's interpreter in a subprocess (verl pins transformers < 5.11, so it cannot share
cropi's test environment), and the merger and dataset imports take tens of seconds."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from cropi.config import load_config
from cropi.integrations.verl import REWARD_MODULE, VerlPlan, VerlRun
from cropi.integrations.verl_overrides import CHAT_TEMPLATE_KEYS, SCHEDULE_KEYS
from cropi.selection.export import verl_ground_truth, write_verl_problems
from cropi.tasks import grade
from cropi.tasks.problem import Problem

from tests.test_verl_loop import with_chat_template

VERL_PYTHON = os.environ.get("CROPI_VERL_PYTHON", str(Path.home() / "venvs" / "verl" / "bin" / "python"))
PROBE = Path(__file__).with_name("verl_env_probe.py")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(VERL_PYTHON).is_file(), reason=f"no verl environment at {VERL_PYTHON}")]


def probe(job: dict, tmp_path: Path) -> dict:
    path = tmp_path / f"job-{job['job']}.json"
    path.write_text(json.dumps(job))
    # a clean environment: nothing of cropi's test interpreter leaks into verl's
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([VERL_PYTHON, str(PROBE), str(path)], capture_output=True, text=True, env=env, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("PROBE-RESULT "))
    return json.loads(line[len("PROBE-RESULT "):])


PROBLEMS = [Problem("add-7", "347+285=", "632", "add", difficulty=3),
            Problem("gsm8k-12", "Tom has 3 apples and buys 4. How many?", "7", "gsm8k", source="gsm8k.jsonl"),
            Problem("count-3", "count a abab=", "2", "count")]


def test_rlhf_dataset_reads_cropi_parquet_prompts_index_and_ground_truth(micro_model_dir, tmp_path):
    model = with_chat_template(micro_model_dir, tmp_path / "model")
    parquet = write_verl_problems(PROBLEMS, tmp_path / "train.parquet", ranks=[1, 2, 3])
    out = probe({"job": "dataset", "model": str(model), "parquet": str(parquet), "cache_dir": str(tmp_path / "cache")},
                tmp_path)
    assert out["n"] == 3
    assert out["index"] == [p.id for p in PROBLEMS]  # the pool ids, not verl's fallback 0
    assert out["raw_prompt"] == [[{"role": "user", "content": p.prompt}] for p in PROBLEMS]
    assert out["ground_truth"] == [verl_ground_truth(p) for p in PROBLEMS]
    assert out["data_source"] == ["add", "gsm8k", "count"]


# special tokens and a generation prompt, so that a doubled or missing BOS / generation prompt shows
ROLE_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def test_verl_rollout_prompt_tokens_equal_policy_encode_prompt(micro_model_dir, tmp_path):
    """The tokens verl samples from (its dataset row through its agent loop's token builder) are the tokens
    cropi's sampler and scorer use for the same prompt."""
    from cropi.policy import load_policy

    model = with_chat_template(micro_model_dir, tmp_path / "model", ROLE_TEMPLATE)
    parquet = write_verl_problems(PROBLEMS, tmp_path / "train.parquet")
    out = probe({"job": "dataset", "model": str(model), "parquet": str(parquet), "cache_dir": str(tmp_path / "cache")},
                tmp_path)
    policy = load_policy(str(model), device="cpu")
    expected = [policy.encode_prompt(p.prompt) for p in PROBLEMS]
    assert out["prompt_ids"] == expected
    bos, eos = policy.tokenizer.bos_token_id, policy.tokenizer.eos_token_id
    assert all(ids[0] == bos and ids.count(bos) == 1 and ids.count(eos) == 1 for ids in expected)


def test_verl_reward_loader_runs_cropi_reward_module_standalone(tmp_path):
    cases = [(PROBLEMS[0], "236"), (PROBLEMS[0], "632"), (PROBLEMS[1], "so the answer is \\boxed{7}"),
             (PROBLEMS[1], "#### 8"), (PROBLEMS[2], "2")]
    job = {"job": "reward", "module": str(REWARD_MODULE),
           "cases": [{"data_source": p.family, "solution": s, "ground_truth": verl_ground_truth(p), "index": p.id}
                     for p, s in cases]}
    out = probe(job, tmp_path)
    assert out["scores"] == [grade(p, s) for p, s in cases] == [1.0, 0.0, 1.0, 0.0, 1.0]
    if not out["cropi_importable_before"]:  # verl's environment has no cropi: the module found the source tree
        assert out["cropi_used"] == str(Path(__file__).resolve().parents[1] / "src" / "cropi" / "__init__.py")


def test_trainer_command_line_composes_with_verls_config(micro_model_dir, tmp_path):
    model = with_chat_template(micro_model_dir, tmp_path / "model")
    cfg = load_config(None, [f"model.name={model}", "select.stages=2", "train.steps=6", "rollout.group_size=4"])
    # the overrides of the README's example, and a value with a space
    user = ["actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16", "trainer.n_gpus_per_node=1",
            "actor_rollout_ref.actor.optim.lr=1e-6", "+data.extra_flag=spaced value"]
    run = VerlRun(cfg, VerlPlan(Path("pool"), {"v": Path("val")}, user), tmp_path / "run folder")  # quoted paths
    (run.step_dir(3) / "actor").mkdir(parents=True)
    (run.step_dir(3) / "data.pt").write_bytes(b"")
    train = write_verl_problems(PROBLEMS, tmp_path / "train.parquet")
    keys = ["data.train_files", "trainer.total_training_steps", "trainer.resume_mode", "trainer.resume_from_path",
            "trainer.save_freq", "actor_rollout_ref.rollout.n", "actor_rollout_ref.actor.optim.lr",
            "reward.custom_reward_function.path", "actor_rollout_ref.actor.loss_agg_mode", "trainer.logger",
            "algorithm.adv_estimator", "data.extra_flag", "actor_rollout_ref.model.path", "trainer.total_epochs",
            "data.val_files", "actor_rollout_ref.rollout.name", "actor_rollout_ref.actor.optim.betas",
            *SCHEDULE_KEYS, *CHAT_TEMPLATE_KEYS]
    out = probe({"job": "compose", "overrides": run.trainer_args(1, train, 3), "keys": keys}, tmp_path)
    assert out["data.train_files"] == str(train.resolve())
    assert out["trainer.total_training_steps"] == 6 and out["trainer.total_epochs"] == 6
    assert out["trainer.resume_mode"] == "resume_path" and out["trainer.save_freq"] == 3
    assert out["trainer.resume_from_path"].endswith("resume/stage-01/global_step_3")
    assert not (Path(out["trainer.resume_from_path"]) / "data.pt").exists()
    assert (Path(out["trainer.resume_from_path"]) / "actor").is_dir()
    assert out["actor_rollout_ref.rollout.n"] == 4 and out["actor_rollout_ref.actor.optim.lr"] == 1e-6
    assert out["reward.custom_reward_function.path"] == str(REWARD_MODULE.resolve())
    assert out["actor_rollout_ref.actor.loss_agg_mode"] == "seq-mean-token-mean"
    assert out["trainer.logger"] == "['console']" and out["algorithm.adv_estimator"] == "grpo"
    assert out["data.extra_flag"] == "spaced value" and out["actor_rollout_ref.model.path"] == str(model.resolve())
    assert out["data.val_files"] == str((tmp_path / "run folder" / "val.parquet").resolve())
    assert out["actor_rollout_ref.rollout.name"] == "vllm"
    assert out["actor_rollout_ref.actor.optim.betas"] in ([0.9, 0.99], "[0.9, 0.99]")  # cropi's Adam betas
    # the keys cropi verl guards exist in verl's config, at the values it accepts by default
    assert [out[k] for k in SCHEDULE_KEYS] == ["constant", None, 0.0]
    assert [out[k] for k in CHAT_TEMPLATE_KEYS] == ["{}", None]  # the probe writes an empty mapping as text


def test_verl_model_merger_reads_the_standin_checkpoint_layout(micro_model_dir, tmp_path):
    """The stand-in's checkpoint layout is verl's: verl's own merger turns it into the same weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    spec = importlib.util.spec_from_file_location("verl_standin", Path(__file__).with_name("verl_standin.py"))
    standin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standin)
    weights = {k: v + 0.01 for k, v in load_file(micro_model_dir / "model.safetensors").items()}
    standin.save_checkpoint(tmp_path / "ckpt", 2, weights, 2, micro_model_dir, 3)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([VERL_PYTHON, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir",
                        str(tmp_path / "ckpt" / "global_step_2" / "actor"), "--target_dir", str(tmp_path / "hf")],
                       capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
    for k, v in weights.items():  # the merger stores bfloat16
        assert torch.equal(merged[k], v.bfloat16().float()), k


def test_two_stages_in_verls_environment_with_verls_own_merger(micro_model_dir, tmp_path):
    """The whole loop run by verl's interpreter (cropi from this source tree, transformers < 5.11 there): the
    stand-in trains, verl's real merger writes each stage's model, and cropi scores stage 1 with it."""
    from tests.test_verl_loop import STANDIN

    model = with_chat_template(micro_model_dir, tmp_path / "model")
    setup = f"""
import json
from pathlib import Path
from cropi.policy import load_policy
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.tasks.problem import Problem
def _problems(prefix, n):  # as in tests/test_verl_loop.py
    return [Problem(f"{{prefix}}{{i}}", f"count a {{'ab' * (i % 3 + 1)}}=", str(i % 3 + 1), "count") for i in range(n)]
pol = load_policy({str(model)!r}, device="cpu")
cfg = CollectConfig(group_size=24, max_new_tokens=1, chunk_size=5, temperature=3.0)
collect(pol, _problems("p", 20), "pool", cfg)
collect(pol, _problems("v", 8), "val", cfg)
for name, n, pre in (("pool.jsonl", 20, "p"), ("val.jsonl", 8, "v")):
    Path(name).write_text("".join(json.dumps(p.to_dict()) + "\\n" for p in _problems(pre, n)))
"""
    src = Path(__file__).resolve().parents[1]
    env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}, "PYTHONPATH": f"{src / 'src'}:{src}",
           "CROPI_STANDIN_LOG": str(tmp_path / "standin.jsonl")}
    r = subprocess.run([VERL_PYTHON, "-c", setup], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    args = ["-m", "cropi.cli", "verl", "--out", "run", "--pool-store", "pool", "--val-store", "count=val", "--model",
            str(model), "--device", "cpu", "--pool", "pool.jsonl", "--val", "count=val.jsonl", "--stages", "2",
            "--steps-per-stage", "2", "--select-ratio", "0.2", "--set", "select.score.k=64", "--set",
            "select.score.mode=projected", "--launcher", f"{VERL_PYTHON} {STANDIN} train"]
    r = subprocess.run([VERL_PYTHON, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    merge_log = (tmp_path / "run" / "stages" / "stage-00" / "verl-merge.log").read_text()
    assert "-m verl.model_merger merge --backend fsdp" in merge_log  # the default merger, verl's own
    done = json.loads((tmp_path / "run" / "stages" / "stage-01" / "done.json").read_text())
    assert done["scored_with"] == "run/stages/stage-00/model" and done["selected"] == 4
    assert (tmp_path / "run" / "stages" / "stage-01" / "model" / "config.json").is_file()
