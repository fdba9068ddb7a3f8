"""Checkpoints without pickle: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step-NNNNNNN`` written under a temporary name and renamed when complete, so
``latest`` never returns a torn one; it also passes over one damaged afterwards.  Only the newest ``keep`` checkpoints are kept."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cropi.errors import DataError
from cropi.io import first_line, log, read_json, write_json


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    groups = meta["param_groups"]
    for g in groups:  # JSON turns tuples into lists
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state,
         keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Tied weights share storage; safetensors refuses aliases, so store each tensor once by name.
    seen: dict[int, str] = {}
    unique, aliases = {}, {}
    for k, v in weights.items():
        ptr = v.data_ptr()
        if ptr in seen and v.shape == weights[seen[ptr]].shape:
            aliases[k] = seen[ptr]
        else:
            seen[ptr] = k
            unique[k] = v.clone()
    save_file(unique, str(tmp / "model.safetensors"))
    meta = {"step": step, "aliases": aliases, "state": dataclasses.asdict(state) if state is not None else None}
    if optimizer is not None:
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = opt_meta
    write_json(tmp / "checkpoint.json", meta)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(ckpt_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def damage(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded whole (``None`` when it can)."""
    try:
        meta = json.loads((Path(path) / "checkpoint.json").read_text())
        names = ["model.safetensors"] + (["optimizer.safetensors"] if "optimizer" in meta else [])
        for name in names:
            load_file(str(Path(path) / name))
    except Exception as exc:  # json, safetensors and the OS raise different types for a cut file
        return f"{type(exc).__name__}: {first_line(exc)}"
    return None


def latest(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that loads whole.  A damaged newer one is reported in one line and passed over, so a
    resumed run restarts from the one before it (``save`` keeps two) and redoes the steps in between."""
    found = sorted(p for p in Path(ckpt_dir).glob("step-*") if (p / "checkpoint.json").exists())
    for path in reversed(found):
        reason = damage(path)
        if reason is None:
            return path
        log.warning("%s is damaged (%s); resuming from an earlier checkpoint", path, reason)
    return None


def load_weights(path: Path, model: torch.nn.Module) -> dict:
    meta = read_json(Path(path) / "checkpoint.json")
    tensors = load_file(str(Path(path) / "model.safetensors"))
    for alias, target in meta.get("aliases", {}).items():
        tensors[alias] = tensors[target]
    model.load_state_dict(tensors, strict=True)
    return meta


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state_cls):
    meta = load_weights(path, model)
    if optimizer is not None and "optimizer" in meta:
        tensors = load_file(str(Path(path) / "optimizer.safetensors"))
        _restore_optimizer(optimizer, tensors, meta["optimizer"])
    return state_cls(**meta["state"]) if meta.get("state") else state_cls(step=meta["step"])


def save_initial(ckpt_dir: Path, model: torch.nn.Module) -> None:
    """The starting weights (the KL reference), kept for resumed runs."""
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    save(Path(ckpt_dir) / "initial", 0, model, None, None, keep=1)


def load_initial(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    path = latest(Path(ckpt_dir) / "initial")
    if path is None:
        raise DataError(str(Path(ckpt_dir) / "initial"), None, "the starting weights (the KL reference) are missing or "
                        "damaged; the run cannot be resumed: start it again in a new --out")
    meta = json.loads((path / "checkpoint.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))
    for alias, target in meta.get("aliases", {}).items():
        tensors[alias] = tensors[target]
    return tensors
