"""The embedded tiny policy: tokenizer round trip, deterministic pretraining recipe, committed assets."""

import json

import torch
from safetensors.torch import load_file

from cropi.policy import embedded_model_path, load_policy
from cropi.policy.tiny import CHARS, PretrainConfig, build_tokenizer, pretrain
from cropi.tasks.synthetic import SuiteConfig, build_suite


def test_char_tokenizer_round_trips_every_suite_prompt():
    tok = build_tokenizer()
    suite = build_suite(SuiteConfig(pool_size=200))
    for p in suite.pool:
        ids = tok(p.prompt)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert len(ids) == len(p.prompt) + 1
        assert tok.decode(ids, skip_special_tokens=True) == p.prompt
    assert len(set(CHARS)) == len(CHARS)


def test_pretrain_is_deterministic(tmp_path):
    cfg = PretrainConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, steps=4, focus_steps=3, batch_size=16,
                         examples=256, suite=SuiteConfig(pool_size=80, val_size=10, test_size_targeted=10,
                                                         test_size_untargeted=5))
    a = pretrain(cfg, tmp_path / "a")
    b = pretrain(cfg, tmp_path / "b")
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["final_loss"] == b["final_loss"]
    info = json.loads((tmp_path / "a" / "cropi_pretrain.json").read_text())
    assert info["schema_version"] == 1 and info["recipe"]["steps"] == 4
    pol = load_policy(str(tmp_path / "a"), device="cpu")
    assert pol.encode_prompt("1+2=")[-1] == pol.tokenizer.convert_tokens_to_ids("=")


def test_embedded_model_is_committed_small_and_loads():
    path = embedded_model_path("tiny")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    pol = load_policy("tiny", device="cpu")
    assert pol.tokenizer.chat_template is None  # raw prompts for the char model
    logits = pol.model(torch.tensor([pol.encode_prompt("12+34=")])).logits
    assert torch.isfinite(logits).all()


def test_a_missing_local_model_path_is_one_clear_error(tmp_path):
    import pytest

    from cropi.errors import CropiError
    from cropi.policy import load_policy

    with pytest.raises(CropiError, match="no such model folder, and not a hub id"):
        load_policy(str(tmp_path / "no" / "such" / "model"), device="cpu")


def test_training_only_the_top_blocks_freezes_the_rest_and_scores_on_what_trains():
    import pytest
    import torch

    from cropi.errors import CropiError
    from cropi.policy import load_policy
    from cropi.projection.params import param_shapes_of

    policy = load_policy("tiny", device="cpu", trainable_blocks=1)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("model.layers.2.") or n == "model.norm.weight" for n in trainable)
    assert "model.norm.weight" in trainable and list(param_shapes_of(policy.model)) == trainable
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    out = policy.model(input_ids=torch.tensor([[1, 8, 8, 41, 10, 9, 45, 13]])).logits
    out.log_softmax(-1)[0, -1, 5].backward()
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
    opt.step()
    moved = {n for n, p in policy.model.named_parameters() if not torch.equal(before[n], p)}
    assert moved == set(trainable)
    with pytest.raises(CropiError, match="between 1 and the model's 3 blocks"):
        load_policy("tiny", device="cpu", trainable_blocks=4)
