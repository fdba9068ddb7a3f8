"""Per-example gradients kept factored (gradients.per_example.per_example_factors) and their projection and exact
inner products (projection.factored), against slow references: one backward per example, dense maps built from the
pure-Python hash, and flat gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cropi.gradients.per_example import per_example_factors, per_example_grads
from cropi.projection.factored import STREAM_FACTOR_IN, STREAM_FACTOR_OUT, FactoredSJLT, exact_dot, squared_norm
from cropi.projection.hashing import ref_hash64, tensor_salt


class Tiny(nn.Module):
    """Embedding -> two bias-free linears with a norm between -> a head tied to the embedding: every kind the
    capture meets (the tied weight is used by an embedding and a linear, so it stays whole)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 6)
        self.up = nn.Linear(6, 9, bias=False)
        self.norm = nn.LayerNorm(9)
        self.down = nn.Linear(9, 6, bias=False)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(self.down(torch.tanh(self.norm(self.up(h)))))


ROWS = [2, 1, 3]  # sequences per example, unequal on purpose


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 11, (sum(ROWS), 5), generator=g)
    target = torch.randint(0, 11, (sum(ROWS), 5), generator=g)
    return ids, target


def _losses(model, ids, target):
    logp = torch.log_softmax(model(ids), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1)
    return torch.stack([-part.sum() for part in logp.split(ROWS)])


def _slow_grads(model, names):
    """One backward per example."""
    ids, target = _batch()
    out = {n: [] for n in names}
    start = 0
    for r in ROWS:
        model.zero_grad()
        _losses_one = -torch.log_softmax(model(ids[start:start + r]), -1).gather(
            -1, target[start:start + r].unsqueeze(-1)).sum()
        _losses_one.backward()
        for n, p in model.named_parameters():
            if n in out:
                out[n].append(p.grad.detach().clone())
        start += r
    return {n: torch.stack(v) for n, v in out.items()}


def test_factors_multiply_out_to_each_examples_gradient():
    model = Tiny()
    names = [n for n, _ in model.named_parameters()]
    ids, target = _batch()
    factors, whole = per_example_factors(model, names, ROWS, lambda: _losses(model, ids, target))
    assert set(factors) == {"up.weight", "down.weight"} and "emb.weight" in whole and "norm.weight" in whole
    slow = _slow_grads(model, names)
    for n, f in factors.items():
        for b in range(len(ROWS)):
            torch.testing.assert_close(f.d[b].T @ f.a[b], slow[n][b], rtol=1e-5, atol=1e-6)
    for n, g in whole.items():
        torch.testing.assert_close(g, slow[n], rtol=1e-5, atol=1e-6)
    # the same as the flat per-example path
    flat = per_example_grads(model, names, ROWS, lambda: _losses(model, ids, target))
    torch.testing.assert_close(factors["up.weight"].d[1].T @ factors["up.weight"].a[1], flat["up.weight"][1])


def _dense_reference(seed, name, n, k):
    """The CountSketch of ``n`` coordinates into ``k`` buckets written out from the pure-Python hash."""
    def one(stream):
        salt = tensor_salt(seed, name, stream)
        m = torch.zeros(k, n)
        for i in range(n):
            h = ref_hash64(salt, i)
            m[(h >> 1) % k, i] = -1.0 if h & 1 else 1.0
        return m
    return one


def test_the_factored_projection_is_P_G_Q_transposed_with_the_hashed_maps():
    model = Tiny()
    ids, target = _batch()
    factors, _ = per_example_factors(model, ["up.weight", "down.weight"], ROWS, lambda: _losses(model, ids, target))
    proj = FactoredSJLT({"up.weight": (9, 6), "down.weight": (6, 9)}, k_out=4, k_in=3, seed=7)
    got = proj.project_factors(factors)
    assert got.shape == (3, proj.k) and proj.k == 2 * 4 * 3
    for b in range(3):
        parts = []
        for name, (out, inp) in (("up.weight", (9, 6)), ("down.weight", (6, 9))):
            P = _dense_reference(7, name, out, 4)(STREAM_FACTOR_OUT)
            Q = _dense_reference(7, name, inp, 3)(STREAM_FACTOR_IN)
            G = factors[name].d[b].T @ factors[name].a[b]
            parts.append((P @ G @ Q.T).reshape(-1))
        torch.testing.assert_close(got[b], torch.cat(parts), rtol=1e-5, atol=1e-5)


def test_the_factored_projection_preserves_inner_products_in_expectation():
    g = torch.Generator().manual_seed(3)
    a1, d1 = torch.randn(7, 40, generator=g), torch.randn(7, 30, generator=g)
    a2, d2 = a1 + 0.5 * torch.randn(7, 40, generator=g), d1 + 0.5 * torch.randn(7, 30, generator=g)
    truth = float(((d1.T @ a1) * (d2.T @ a2)).sum())
    est = []
    for seed in range(300):
        p = FactoredSJLT({"w": (30, 40)}, k_out=8, k_in=8, seed=seed)
        est.append(float(p.project_weight("w", a1, d1) @ p.project_weight("w", a2, d2)))
    mean = sum(est) / len(est)
    se = (sum((e - mean) ** 2 for e in est) / (len(est) - 1) / len(est)) ** 0.5
    assert abs(mean - truth) < 4 * se, (mean, truth, se)


@pytest.mark.parametrize("tokens", [3, 40])  # the ghost norm, and the formed gradient
def test_exact_dots_and_norms_equal_the_formed_gradients(tokens):
    g = torch.Generator().manual_seed(tokens)
    a, d, m = torch.randn(tokens, 12, generator=g), torch.randn(tokens, 10, generator=g), torch.randn(10, 12, generator=g)
    G = d.T @ a
    torch.testing.assert_close(exact_dot(a, d, m), (G * m).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(squared_norm(a, d), G.pow(2).sum(), rtol=1e-5, atol=1e-4)


def test_batched_exact_dots_and_norms_equal_the_per_example_ones():
    from cropi.gradients.per_example import LinearFactors
    from cropi.projection.factored import exact_dots, squared_norms

    g = torch.Generator().manual_seed(0)
    for tokens in ([3, 1, 5], [30, 41, 2]):  # ghost and formed, unequal lengths (zero padding)
        a = [torch.randn(t, 12, generator=g) for t in tokens]
        d = [torch.randn(t, 10, generator=g) for t in tokens]
        f = LinearFactors(nn.utils.rnn.pad_sequence(a, batch_first=True), nn.utils.rnn.pad_sequence(d, batch_first=True))
        m = torch.randn(10, 12, generator=g)
        torch.testing.assert_close(exact_dots(f, m), torch.stack([exact_dot(x, y, m) for x, y in zip(a, d)]),
                                   rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(squared_norms(f), torch.stack([squared_norm(x, y) for x, y in zip(a, d)]),
                                   rtol=1e-5, atol=1e-3)
