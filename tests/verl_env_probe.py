"""Runs inside verl's own environment (no cropi installed there) for tests/test_verl_env.py; prints one JSON
object.  Each job uses verl's real code: its RL dataset class on a parquet file (and the prompt tokens its agent
loop builds from the rows), its reward-function loader on cropi's reward module, and hydra composition of verl's
trainer config with a command line.

    python verl_env_probe.py JOB.json
"""

import json
import sys


def dataset(job):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    tok = AutoTokenizer.from_pretrained(job["model"])
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 256, "filter_overlong_prompts": True,
                               "filter_overlong_prompts_workers": 1, "cache_dir": job["cache_dir"]})
    ds = RLHFDataset(data_files=[job["parquet"]], tokenizer=tok, config=config)
    rows = [ds[i] for i in range(len(ds))]
    batch = collate_fn(rows)
    return {"n": len(ds), "index": [str(x) for x in batch["index"]],
            "raw_prompt": [r["raw_prompt"] for r in rows], "prompt_ids": rollout_prompt_ids(job["model"], rows),
            "ground_truth": [r["reward_model"]["ground_truth"] for r in rows],
            "data_source": [r["data_source"] for r in rows]}


def rollout_prompt_ids(model: str, rows: list[dict]) -> list[list[int]]:
    """The prompt token ids verl's single-turn agent loop generates from: the dataset row's raw_prompt through
    the token builder it makes from the model config's tokenizer, processor and model type (verl's default
    data.apply_chat_template_kwargs, {})."""
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder
    from verl.workers.config.model import HFModelConfig

    model_cfg = HFModelConfig(path=model)
    builder = create_continuous_token_builder(model_cfg.tokenizer, hf_model_type=model_cfg.hf_config.model_type,
                                              chat_template_kwargs={}, mm_processor_kwargs={},
                                              processor=model_cfg.processor)
    return [[int(t) for t in builder.build_initial_tokens(list(r["raw_prompt"]))] for r in rows]


def reward(job):
    import importlib.util

    from omegaconf import OmegaConf

    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": job["module"], "name": "compute_score",
                                                                    "reward_kwargs": {}}}})
    importable_before = importlib.util.find_spec("cropi") is not None
    fn = get_custom_reward_fn(config)
    # the keywords verl's naive reward manager passes
    return {"scores": [fn(data_source=c["data_source"], solution_str=c["solution"], ground_truth=c["ground_truth"],
                          extra_info={"index": c["index"], "num_turns": None, "rollout_reward_scores": {}})
                       for c in job["cases"]],
            "cropi_importable_before": importable_before, "cropi_used": sys.modules["cropi"].__file__}


def compose(job):
    import os

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    import verl.trainer

    config_dir = os.path.join(os.path.dirname(verl.trainer.__file__), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = hydra_compose(config_name="ppo_trainer", overrides=job["overrides"])
    return {k: OmegaConf.select(cfg, k) for k in job["keys"]}


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        job = json.load(fh)
    print("PROBE-RESULT " + json.dumps({"dataset": dataset, "reward": reward, "compose": compose}[job["job"]](job),
                                       default=str))
