"""A launcher stand-in for verl's trainer and model merger in the CPU tests (verl's trainer needs GPUs).

    python verl_standin.py train KEY=VALUE ...          (the overrides `cropi verl` appends to the trainer)
    python verl_standin.py merge --backend fsdp --local_dir ACTOR --target_dir OUT

``train`` checks the command line and the parquet files it names, then writes a checkpoint in verl's FSDP
layout (global_step_N/actor/{model,optim,extra_state}_world_size_1_rank_0.pt, fsdp_config.json, huggingface/,
global_step_N/data.pt, latest_checkpointed_iteration.txt): the previous weights moved by one seeded
perturbation per step, and an optimizer step count that continues from the checkpoint it resumed.  ``merge``
writes that state as a Hugging Face folder.  Each call is appended as one JSON line to $CROPI_STANDIN_LOG.
$CROPI_STANDIN_CRASH_FROM=N: a training call that starts at global step N saves step N+1 and exits 1 (an
interrupted stage).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

LOG_ENV = "CROPI_STANDIN_LOG"
CRASH_ENV = "CROPI_STANDIN_CRASH_FROM"
REQUIRED = ("data.train_files", "data.val_files", "actor_rollout_ref.model.path", "trainer.default_local_dir",
            "trainer.total_training_steps", "trainer.total_epochs", "trainer.resume_mode", "trainer.save_freq",
            "reward.custom_reward_function.path")


def fail(msg: str) -> None:
    print(f"standin: {msg}", file=sys.stderr)
    sys.exit(3)


def parse_overrides(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in args:
        key, eq, value = a.lstrip("+").partition("=")
        if not eq:
            fail(f"not an override: {a!r}")
        if key in out:
            fail(f"override given twice: {key}")  # hydra would take one silently; the loop must not rely on it
        out[key] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return out


def check_parquet(path: str, split: str) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    if not rows:
        fail(f"{path}: empty")
    for r in rows:
        if set(r) != {"data_source", "prompt", "ability", "reward_model", "extra_info"}:
            fail(f"{path}: columns {sorted(r)}")
        if [m["role"] for m in r["prompt"]] != ["user"] or r["reward_model"]["style"] != "rule":
            fail(f"{path}: bad prompt or reward_model {r}")
        if "answer" not in json.loads(r["reward_model"]["ground_truth"]):
            fail(f"{path}: ground truth without an answer")
        if r["extra_info"]["index"] != r["extra_info"]["id"] or r["extra_info"]["split"] != split:
            fail(f"{path}: extra_info {r['extra_info']}")
    return rows


def step_of(folder: Path) -> int:
    return int(str(folder).split("global_step_")[-1])


def save_checkpoint(ckpt_root: Path, step: int, weights: dict, optim_steps: int, hf_source: Path, rows: int) -> None:
    actor = ckpt_root / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True, exist_ok=True)
    torch.save(weights, actor / "model_world_size_1_rank_0.pt")
    torch.save({"state": {0: {"step": torch.tensor(float(optim_steps))}}, "param_groups": [{"params": [0]}]},
               actor / "optim_world_size_1_rank_0.pt")
    torch.save({"lr_scheduler": {"last_epoch": step}, "rng": {}}, actor / "extra_state_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 1, "world_size": 1}))
    hf = actor / "huggingface"
    hf.mkdir(exist_ok=True)
    for f in hf_source.iterdir():
        if f.is_file() and f.suffix == ".json":
            shutil.copy(f, hf / f.name)
    torch.save({"dataset_rows": rows}, actor.parent / "data.pt")
    (ckpt_root / "latest_checkpointed_iteration.txt").write_text(str(step))


def train(args: list[str]) -> None:
    o = parse_overrides(args)
    missing = [k for k in REQUIRED if k not in o]
    if missing:
        fail(f"missing overrides {missing}")
    rows = check_parquet(o["data.train_files"], "train")
    check_parquet(o["data.val_files"], "validation")
    ckpt_root, total = Path(o["trainer.default_local_dir"]), int(o["trainer.total_training_steps"])
    base = Path(o["actor_rollout_ref.model.path"])
    existing = sorted(p.name for p in ckpt_root.glob("global_step_*"))
    if o["trainer.resume_mode"] == "disable":
        start, optim_steps = 0, 0
        weights = load_file(base / "model.safetensors")
    elif o["trainer.resume_mode"] == "resume_path":
        resume = Path(o["trainer.resume_from_path"])
        if (resume / "data.pt").exists():
            fail(f"{resume}: resumes the previous stage's dataloader state")
        start = step_of(resume)
        weights = torch.load(resume / "actor" / "model_world_size_1_rank_0.pt", weights_only=True)
        optim = torch.load(resume / "actor" / "optim_world_size_1_rank_0.pt", weights_only=True)
        optim_steps = int(optim["state"][0]["step"])
    else:
        fail(f"unexpected resume_mode {o['trainer.resume_mode']}")
    if int(o["trainer.total_epochs"]) < total - start:
        fail("total_epochs leaves no room for the stage's steps")
    with open(os.environ[LOG_ENV], "a") as fh:
        fh.write(json.dumps({"cmd": "train", "argv": args, "start": start, "total": total,
                             "checkpoints_at_start": existing, "ids": [r["extra_info"]["index"] for r in rows]}) + "\n")
    crash = os.environ.get(CRASH_ENV)
    for step in range(start + 1, total + 1):
        g = torch.Generator().manual_seed(step)
        weights = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=g) for k, v in sorted(weights.items())}
        if crash is not None and int(crash) == start:
            save_checkpoint(ckpt_root, step, weights, optim_steps + step - start, base, len(rows))
            print("standin: interrupted", file=sys.stderr)
            sys.exit(1)
    save_checkpoint(ckpt_root, total, weights, optim_steps + total - start, base, len(rows))


def merge(args: list[str]) -> None:
    if args[:2] != ["--backend", "fsdp"] or args[2] != "--local_dir" or args[4] != "--target_dir":
        fail(f"unexpected merger arguments {args}")
    actor, target = Path(args[3]), Path(args[5])
    if not (actor / "fsdp_config.json").is_file():
        fail(f"{actor}: not an FSDP actor checkpoint")
    weights = torch.load(actor / "model_world_size_1_rank_0.pt", weights_only=True)
    target.mkdir(parents=True, exist_ok=True)
    for f in (actor / "huggingface").iterdir():
        shutil.copy(f, target / f.name)
    save_file({k: v.contiguous() for k, v in weights.items()}, target / "model.safetensors")
    with open(os.environ[LOG_ENV], "a") as fh:
        fh.write(json.dumps({"cmd": "merge", "argv": args}) + "\n")


if __name__ == "__main__":
    {"train": train, "merge": merge}[sys.argv[1]](sys.argv[2:])
