"""Per-example gradients from one backward pass equal one backward pass per example."""

import torch
from torch import nn

from cropi.gradients.per_example import per_example_grads
from cropi.gradients.popi import make_estimator
from cropi.rollouts.trajectory_store import PromptGroup
from cropi.rollouts.sampler import SamplingParams, generate


def _rel(a, b):
    num = sum(float(((a[n] - b[n]) ** 2).sum()) for n in b)
    den = sum(float((b[n] ** 2).sum()) for n in b)
    return (num / den) ** 0.5


def _groups(policy, n=6, g=4):
    out = []
    for i in range(n):
        prompt = f"{i * 37 % 91}+{i}="
        ids = policy.encode_prompt(prompt)
        # responses of different lengths per prompt, so batches need padding
        gens = generate(policy, [ids] * g, SamplingParams(temperature=1.5, max_new_tokens=2 + 3 * (i % 3)),
                        keys=[(0, prompt, s) for s in range(g)])
        out.append(PromptGroup(f"q{i}", ids, [x.response_ids for x in gens], [x.behavior_logprobs for x in gens],
                               [float((s + i) % 2) for s in range(g)], 1.5))
    return out


def _by_id(policy, groups, batch_size):
    out = {}
    for gb in make_estimator(policy.model, policy.pad_token_id, batch_size=batch_size).gradients(groups).batches:
        for b, pid in enumerate(gb.prompt_ids):
            out[pid] = ({n: t[b] for n, t in gb.grads.items()}, gb.ess[b], gb.max_abs_log_ratio[b])
    return out


def test_prompt_gradient_independent_of_batch_mates_size_and_padding(micro_policy):
    groups = _groups(micro_policy)
    loop = _by_id(micro_policy, groups, 1)
    for batch_size, order in ((2, groups), (3, groups[::-1]), (6, groups[2:] + groups[:2]), (4, groups[::2])):
        got = _by_id(micro_policy, order, batch_size)
        for pid, (grads, ess, mlr) in got.items():
            ref = loop[pid]
            assert _rel(grads, ref[0]) < 1e-5, (batch_size, pid)
            assert abs(ess - ref[1]) < 1e-6 and abs(mlr - ref[2]) < 1e-5


def test_zero_variance_groups_are_skipped_in_batches(micro_policy):
    groups = _groups(micro_policy, n=4)
    groups[1].rewards = [1.0] * len(groups[1].rewards)
    out = make_estimator(micro_policy.model, micro_policy.pad_token_id, batch_size=3).gradients(groups)
    got = [pid for gb in out.batches for pid in gb.prompt_ids]
    assert got == ["q0", "q2", "q3"] and out.skipped == ["q1"]


class _Toy(nn.Module):
    """Embedding, a biased Linear, a LayerNorm (no closed form: generic vjp) and a tied output head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.lin = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(self.norm(torch.tanh(self.lin(self.emb(x)))))


def test_closed_forms_generic_vjp_tied_weights_and_unequal_rows():
    torch.manual_seed(0)
    model = _Toy()
    rows = [2, 1, 3]  # unequal rows per example
    x = torch.randint(0, 11, (sum(rows), 5))
    y = torch.randn(sum(rows), 5, 11)
    names = [n for n, _ in model.named_parameters()]

    def losses():
        per_row = ((model(x) - y) ** 2).mean((1, 2))
        return torch.stack([t.sum() for t in per_row.split(rows)])

    got = per_example_grads(model, names, rows, losses)
    start = 0
    for b, r in enumerate(rows):
        sl = slice(start, start + r)
        start += r
        loss = ((model(x[sl]) - y[sl]) ** 2).mean((1, 2)).sum()
        ref = dict(zip(names, torch.autograd.grad(loss, list(model.parameters()))))
        assert _rel({n: got[n][b] for n in names}, ref) < 1e-5
