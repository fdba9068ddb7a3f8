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
    # Phase 2, "focus": a short SFT phase from the phase-1 weights on a mixture that over-weights the targeted
    # families (their carries and borrows are what a 0.65M-parameter model learns last) and teaches their
    # misconception more often.  The result *can* carry on more problems but *prefers* the pupil's mistake on
    # many of them: greedy accuracy stays low while sampled groups are mixed — headroom RL can use.
    focus_steps: int = 600
    focus_lr: float = 1e-3
    focus_warmup: int = 20
    focus_weight: float = 3.0  # weight of each targeted family in the phase-2 mixture (others 1)
    focus_misconception_rate: float = 0.75
    focus_threads: int = 1  # the committed model's phase 2 ran single-threaded


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
    """Train the tiny policy from scratch with SFT (phase 1, then the focus phase 2) and save it as an
    ordinary HF folder at ``out_dir``.  ``progress(step, loss)`` counts both phases."""
    threads = torch.get_num_threads()
    try:
        return _pretrain(cfg, out_dir, progress)
    finally:
        torch.set_num_threads(threads)


def sft_data(cfg: PretrainConfig) -> tuple[list, list]:
    """The two phases' SFT examples, holding out the validation and test problems of ``cfg.suite``'s draw."""
    suite = build_suite(cfg.suite)
    held_out = {p.metadata["canonical"] for p in suite.test_problems()}
    held_out |= {p.metadata["canonical"] for v in suite.validation.values() for p in v}
    data = sft_examples(cfg.suite, cfg.examples, cfg.seed, held_out, cfg.misconception_rate)
    return data, (_focus_examples(cfg, held_out) if cfg.focus_steps > 0 else [])


def _focus_examples(cfg: PretrainConfig, exclude: set[str]) -> list:
    """Phase-2 data: drawn like phase 1's, then thinned so each targeted family weighs ``focus_weight``."""
    n = cfg.examples
    drawn = sft_examples(cfg.suite, int(n * 2.5), cfg.seed, exclude, cfg.focus_misconception_rate)
    weight = {f: (cfg.focus_weight if f in cfg.suite.targeted else 1.0) for f in cfg.suite.families}
    total = sum(weight.values())
    out, count = [], {f: 0 for f in weight}
    for p in drawn:
        if count[p.family] < n * weight[p.family] / total:
            out.append(p)
            count[p.family] += 1
    random.Random(cfg.seed).shuffle(out)
    return out


def _sft(model, tokenizer, data, steps: int, lr: float, warmup: int, cfg: PretrainConfig, threads: int,
         progress: Callable[[int, float], None] | None, offset: int = 0) -> list[float]:
    """AdamW with linear warm-up and cosine decay over consecutive batches of ``data``."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    model.train()
    losses = []
    for step in range(steps):
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
            progress(offset + step + 1, losses[-1])
    model.eval()
    return losses


def _pretrain(cfg: PretrainConfig, out_dir: str | Path, progress: Callable[[int, float], None] | None) -> dict:
    from cropi.io import write_json

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)
    t0 = time.time()
    data, focus = sft_data(cfg)
    losses = _sft(model, tokenizer, data, cfg.steps, cfg.lr, cfg.warmup, cfg, cfg.threads, progress)
    phase1_seconds = time.time() - t0
    if cfg.focus_steps > 0:
        losses += _sft(model, tokenizer, focus, cfg.focus_steps, cfg.focus_lr, cfg.focus_warmup, cfg,
                       cfg.focus_threads, progress, offset=cfg.steps)
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
        "phase1_seconds": round(phase1_seconds, 1),
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
    }
    write_json(tmp / "cropi_pretrain.json", info)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return info
