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
