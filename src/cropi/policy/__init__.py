"""Policy loading: any Hugging Face causal LM (folder or hub id), the embedded tiny model, or a fetched model.

A ``Policy`` bundles the model, its tokenizer and the one rule for turning a problem prompt into token ids
(the chat template when the tokenizer has one, the raw prompt otherwise)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from cropi.errors import CropiError

EMBEDDED_MODELS = {"tiny": "tiny-policy"}


def embedded_model_path(name: str = "tiny") -> Path:
    return Path(str(resources.files("cropi") / "assets" / EMBEDDED_MODELS[name]))


def resolve_model_path(name_or_path: str) -> str:
    """``tiny`` -> the embedded model; ``smollm2`` -> the fetched folder; else a folder or hub id as given."""
    if name_or_path in EMBEDDED_MODELS:
        return str(embedded_model_path(name_or_path))
    if name_or_path == "smollm2":
        from cropi.policy.fetch import is_complete, smollm2_dir

        p = smollm2_dir()
        if not is_complete(p):
            raise CropiError(f"{p}: SmolLM2 is not fetched yet; run `cropi model fetch smollm2` first")
        return str(p)
    return name_or_path


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device

    @property
    def eos_token_ids(self) -> list[int]:
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen = getattr(self.model, "generation_config", None)
        g_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(g_eos, int):
            ids.add(g_eos)
        elif isinstance(g_eos, (list, tuple)):
            ids.update(int(i) for i in g_eos)
        return sorted(ids)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_token_ids[0])

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a problem prompt, through the chat template when the tokenizer has one."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt)["input_ids"])

    def decode_response(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def fingerprint(self) -> dict[str, str]:
        return {"model": model_fingerprint(self.model), "tokenizer": tokenizer_fingerprint(self.tokenizer)}


def vocabulary_gaps(tokenizer, texts, limit: int = 1000) -> tuple[int, int, str]:
    """How much of ``texts`` (the first ``limit``) ``tokenizer`` cannot represent: (texts checked, texts with an
    unknown token, the characters it maps to the unknown token).  A tokenizer without an unknown token (byte-level
    BPE) has no gaps."""
    unk = getattr(tokenizer, "unk_token_id", None)
    texts = list(texts)[:limit]
    if unk is None or not texts:
        return len(texts), 0, ""
    with_unk = sum(unk in tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts)
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    missing = "".join(c for c in chars if tokenizer(c, add_special_tokens=False)["input_ids"] == [unk])
    return len(texts), with_unk, missing


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes and fp32 values: identifies the weights that produced a store."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    text += str(getattr(tokenizer, "chat_template", "") or "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_policy(name_or_path: str = "tiny", device: str = "auto", dtype: str = "float32",
                trainable_blocks: int = 0, chat_template: bool = True) -> Policy:
    """Load a causal LM and its tokenizer through the Auto classes; with ``trainable_blocks`` > 0 only the last
    that many transformer blocks (and the final norm) keep ``requires_grad`` (``train_top_blocks``); with
    ``chat_template=False`` the tokenizer's chat template is dropped, so prompts are fed as written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # cropi shows its own progress; per-load bars are noise
    path = resolve_model_path(name_or_path)
    if not Path(path).is_dir() and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(path)):
        raise CropiError(f"{path}: no such model folder, and not a hub id (NAME or NAMESPACE/NAME)")
    dev = pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as exc:
        raise CropiError(f"{path}: cannot load model ({str(exc).splitlines()[0]})") from exc
    model.to(dev)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not chat_template:
        tokenizer.chat_template = None
    if trainable_blocks:
        train_top_blocks(model, trainable_blocks)
    return Policy(model=model, tokenizer=tokenizer, name=name_or_path, device=dev)


def load_configured_policy(model, device: str | None = None) -> Policy:
    """The policy a ``config.ModelConfig`` describes (``device`` overrides its device)."""
    return load_policy(model.name, device or model.device, model.dtype, model.trainable_blocks, model.chat_template)


def train_top_blocks(model: torch.nn.Module, n: int) -> list[str]:
    """Freeze every parameter but those of the last ``n`` transformer blocks and of the norm after them (the
    decoder's ``norm``, as in Llama-style models; a final norm under another name stays frozen), and return the
    trainable names.  Training, and the gradients influence is scored on, then cost the top of the
    network only: the backward stops below those blocks."""
    blocks = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)
                   and len(m) == getattr(model.config, "num_hidden_layers", -1)), None)
    if blocks is None:
        raise CropiError(f"model.trainable_blocks={n}: no list of {getattr(model.config, 'num_hidden_layers', '?')} "
                         "transformer blocks found in the model")
    if not 0 < n <= len(blocks):
        raise CropiError(f"model.trainable_blocks={n}: must be between 1 and the model's {len(blocks)} blocks")
    keep = {id(p) for b in list(blocks)[-n:] for p in b.parameters()}
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    final_norm = getattr(decoder, "norm", None) if decoder is not None else None
    if isinstance(final_norm, torch.nn.Module):
        keep |= {id(p) for p in final_norm.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [name for name, p in model.named_parameters() if p.requires_grad]
