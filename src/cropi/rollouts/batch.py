"""Packing prompt + response token lists into padded tensors for teacher-forced log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [N, L] prompt + response, left-padded
    attention_mask: torch.Tensor  # [N, L]
    response_mask: torch.Tensor  # [N, L] 1 on response tokens
    behavior_logprobs: torch.Tensor  # [N, L] stored log β at response positions, 0 elsewhere

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.response_mask,
                                                     self.behavior_logprobs)))


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists left-padded to a common width: (ids, attention mask), both [N, width] on ``device``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def pack(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    behavior_logprobs: Sequence[Sequence[float]] | None,
    pad_id: int,
) -> PackedBatch:
    """Left-pad each prompt + response to a common width.  Left padding keeps every response flush right,
    which the position-id rule in ``objective.response_logprobs`` makes invisible to the model."""
    n = len(prompt_ids)
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    att = torch.zeros((n, width), dtype=torch.long)
    resp = torch.zeros((n, width), dtype=torch.float32)
    blp = torch.zeros((n, width), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = list(p) + list(r)
        start = width - len(seq)
        ids[i, start:] = torch.tensor(seq, dtype=torch.long)
        att[i, start:] = 1
        resp[i, width - len(r):] = 1.0
        if behavior_logprobs is not None and len(r):
            blp[i, width - len(r):] = torch.tensor(list(behavior_logprobs[i]), dtype=torch.float32)
    return PackedBatch(ids, att, resp, blp)


@dataclass
class GroupedBatch:
    """Prompt groups packed so that each prompt is run once for all its responses (``objective.
    grouped_response_logprobs``): the prompts left-padded, the responses right-padded after them."""

    prompt_ids: torch.Tensor  # [B, Lp] left-padded
    prompt_mask: torch.Tensor  # [B, Lp]
    counts: torch.Tensor  # [B] responses per prompt; response rows are grouped by prompt, in order
    response_ids: torch.Tensor  # [N, Lr] right-padded
    response_mask: torch.Tensor  # [N, Lr] 1 on response tokens
    behavior_logprobs: torch.Tensor  # [N, Lr] stored log β, 0 on padding

    def to(self, device) -> "GroupedBatch":
        return GroupedBatch(*(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.counts,
                                                     self.response_ids, self.response_mask, self.behavior_logprobs)))


def pack_groups(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[Sequence[int]]],
    behavior_logprobs: Sequence[Sequence[Sequence[float]]] | None,
    pad_id: int,
) -> GroupedBatch:
    """B prompts, each with its own list of responses (and their behaviour log-probs)."""
    pids, pmask = left_pad(prompt_ids, pad_id, "cpu")
    flat = [r for rs in response_ids for r in rs]
    width = max(1, max((len(r) for r in flat), default=1))
    rids = torch.full((len(flat), width), pad_id, dtype=torch.long)
    rmask = torch.zeros((len(flat), width), dtype=torch.float32)
    blp = torch.zeros((len(flat), width), dtype=torch.float32)
    flat_lp = [b for bs in behavior_logprobs for b in bs] if behavior_logprobs is not None else None
    for i, r in enumerate(flat):
        if len(r):
            rids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
            rmask[i, :len(r)] = 1.0
            if flat_lp is not None:
                blp[i, :len(r)] = torch.tensor(list(flat_lp[i]), dtype=torch.float32)
    counts = torch.tensor([len(rs) for rs in response_ids], dtype=torch.long)
    return GroupedBatch(pids, pmask, counts, rids, rmask, blp)
