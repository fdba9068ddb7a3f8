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
