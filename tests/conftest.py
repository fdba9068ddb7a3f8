"""Shared fixtures: a randomly initialised micro policy (fast) and a small synthetic suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory) -> Path:
    """An HF folder with the embedded tokenizer and a 2-layer, 32-wide random Llama (seeded)."""
    from cropi.policy.tiny import PretrainConfig, build_model, build_tokenizer

    out = tmp_path_factory.mktemp("micro") / "model"
    tok = build_tokenizer()
    model = build_model(PretrainConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, seed=0), tok)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def micro_policy(micro_model_dir):
    from cropi.policy import load_policy

    return load_policy(str(micro_model_dir), device="cpu")


def small_suite_overrides() -> list[str]:
    return [
        "data.suite.pool_size=40",
        "data.suite.val_size=8",
        "data.suite.test_size_targeted=12",
        "data.suite.test_size_untargeted=6",
    ]


def batch_rule_config(method: str, selector: str = "full", **extra):
    """A small run config for the per-batch rules: 4 prompts x 4 responses a step, one stage, small generation
    batches; ``extra`` as dotted key=value."""
    from cropi.config import load_config

    sets = small_suite_overrides() + [
        "train.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "eval.max_new_tokens=8",
        "train.eval_every=2", "train.checkpoint_every=2", "model.device=cpu", "select.stages=1",
        f"train.filter.method={method}", "train.filter.gen_batch_prompts=8", "train.filter.screen_samples=2",
        "train.filter.greso_min_gen_prompts=2", f"train.selector={selector}",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, sets)


@pytest.fixture(scope="module")
def tiny():
    """The embedded tiny policy (loaded once per module)."""
    from cropi.policy import load_policy

    return load_policy("tiny", "cpu", "float32")


@pytest.fixture(scope="module")
def suite():
    """A 120-prompt draw of the embedded suite with small validation sets."""
    from cropi.tasks.synthetic import SuiteConfig, build_suite

    return build_suite(SuiteConfig(pool_size=120, val_size=8, test_size_targeted=4, test_size_untargeted=4))
