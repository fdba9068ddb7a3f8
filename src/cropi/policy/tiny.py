"""The embedded tiny policy: a character-level tokenizer and a small Llama-style model, pretrained by
supervised fine-tuning on the synthetic suite (``cropi pretrain``).

It is deliberately under-trained: RL needs prompts the policy sometimes solves.  The training recipe is
deterministic (seeded data, seeded init, single process), so the committed weights can be reproduced."""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cropi.tasks.synthetic import FAMILIES, SuiteConfig, build_suite, sft_examples

CHARS = "0123456789abcdefghijklmnopqrstuvwxyz +-*/=%,.?!:;()<>'"
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>"]


def build_tokenizer():
    """A character-level fast tokenizer (one token per character) with bos/eos/pad/unk."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        padding_side="left",
    )


@dataclass
class PretrainConfig:
    seed: int = 0
    hidden_size: int = 128
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 384
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    examples: int = 200_000
    # Share of add / sub / mul / word SFT examples that teach a systematic mistake (see
    # ``tasks.synthetic.misconception``): the base policy then samples right and wrong answers, room for RL.
    misconception_rate: float = 0.5
    # CPU float results depend on the thread count; the committed model was trained with two.
    threads: int = 2
    suite: SuiteConfig = field(default_factory=SuiteConfig)


def build_model(cfg: PretrainConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def _batch(tokenizer, examples, device):
    """Right-padded (prompt + target + eos) with labels only on target + eos."""
    seqs, labels = [], []
    for p in examples:
        prompt = tokenizer(p.prompt)["input_ids"]
        target = tokenizer(FAMILIES[p.family].target_text(p.answer), add_special_tokens=False)["input_ids"]
        ids = prompt + target + [tokenizer.eos_token_id]
        seqs.append(ids)
        labels.append([-100] * len(prompt) + target + [tokenizer.eos_token_id])
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l)
        att[i, : len(s)] = 1
    return ids.to(device), att.to(device), lab.to(device)


def pretrain(cfg: PretrainConfig, out_dir: str | Path, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train the tiny policy from scratch with SFT and save it as an ordinary HF folder at ``out_dir``."""
    threads = torch.get_num_threads()
    try:
        return _pretrain(cfg, out_dir, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(cfg: PretrainConfig, out_dir: str | Path, progress: Callable[[int, float], None] | None) -> dict:
    from cropi.io import atomic_path, write_json

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)
    suite = build_suite(cfg.suite)
    held_out = {p.metadata["canonical"] for p in suite.test_problems()}
    held_out |= {p.metadata["canonical"] for v in suite.validation.values() for p in v}
    data = sft_examples(cfg.suite, cfg.examples, cfg.seed, held_out, cfg.misconception_rate)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))),
    )
    model.train()
    t0 = time.time()
    losses = []
    for step in range(cfg.steps):
        start = (step * cfg.batch_size) % max(1, len(data) - cfg.batch_size)
        ids, att, lab = _batch(tokenizer, data[start : start + cfg.batch_size], "cpu")
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, float(loss))
    model.eval()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = {
        "recipe": {k: v for k, v in asdict(cfg).items()},
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.time() - t0, 1),
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
    }
    write_json(tmp / "cropi_pretrain.json", info)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return info
