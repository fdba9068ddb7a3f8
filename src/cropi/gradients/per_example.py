"""Per-example gradients for a batch of independent examples from one forward and one backward pass.

The examples of a batch (for POPI: one prompt and its G responses each) occupy disjoint rows of the model's
input, and a causal LM in eval mode never mixes rows.  So with L = Σ_b L_b, the gradient of L at a module's
output restricted to example b's rows equals ∂L_b / ∂(that output), and for a parameter W of a module

    ∇_W L_b = Σ_{calls} vjp_W(module, input rows of b)(output-gradient rows of b).

We capture every (input, output) of the parameter-owning modules with forward hooks, take the gradients of
L with respect to all captured outputs in one backward pass (no parameter gradient is summed), and form the
vector-Jacobian products per example:

* ``nn.Linear``:    ∇_W L_b = Σ_{rows of b, t} δ_t x_tᵀ  (a batched matmul), ∇_bias L_b = Σ δ_t;
* ``nn.Embedding``: ∇_W L_b = rows of δ scattered to the token ids of b (none to ``padding_idx``);
* any other module (RMSNorm, ...): ``torch.func.vjp`` of the module's own forward, ``vmap``-ed over examples.

Tied weights (an embedding reused as the LM head) sum the contributions of every module that uses them.
The result matches one backward pass per example up to float rounding (tests: ~1e-6 relative).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn


@dataclass
class Call:
    module: nn.Module
    args: tuple
    kwargs: dict
    output: torch.Tensor | None  # None once only the inputs are needed (no reference cycle through a hook)


@dataclass
class _Capture:
    modules: dict[nn.Module, list[tuple[str, str]]]  # module -> [(its local parameter name, full name)]
    calls: list[Call] = field(default_factory=list)


_OWNERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def owning_modules(model: nn.Module, names: Sequence[str]) -> dict[nn.Module, list[tuple[str, str]]]:
    """Every module that directly owns one of ``names`` (or a tied alias of it), with the local names.  Kept per
    model and names (walking a large model's modules for every batch costs as much as a small model's backward);
    the parameters' identities are part of the key, so re-tying or replacing a weight is seen."""
    key = (tuple(names), tuple(id(p) for p in model.parameters()))
    cached = _OWNERS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    owners = _find_owners(model, names)
    _OWNERS[model] = (key, owners)
    return owners


def _find_owners(model: nn.Module, names: Sequence[str]) -> dict[nn.Module, list[tuple[str, str]]]:
    wanted = {id(p): n for n, p in model.named_parameters() if n in set(names)}
    owners: dict[nn.Module, list[tuple[str, str]]] = {}
    for mod in model.modules():
        for local, p in mod.named_parameters(recurse=False, remove_duplicate=False):
            if id(p) in wanted:
                owners.setdefault(mod, []).append((local, wanted[id(p)]))
    return owners


def _capture(model: nn.Module, names: Sequence[str], rows_per_example: Sequence[int],
             losses_fn: Callable[[], torch.Tensor]) -> tuple[dict, list[tuple[Call, torch.Tensor, torch.Tensor]], int]:
    """Run ``losses_fn`` with forward hooks on every module owning one of ``names`` and take the gradient of the
    summed losses at each captured output in one backward pass: (owners, [(call, δ, the call's rows per
    example)], B)."""
    owners = owning_modules(model, names)
    cap = _Capture(owners)

    def hook(mod, args, kwargs, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            cap.calls.append(Call(mod, args, kwargs, out))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in owners]
    try:
        losses = losses_fn()
    finally:
        for h in handles:
            h.remove()
    B = len(rows_per_example)
    if losses.shape != (B,):
        raise ValueError(f"losses_fn returned shape {tuple(losses.shape)}, expected ({B},)")
    pairs: list[tuple[Call, torch.Tensor, torch.Tensor]] = []
    if cap.calls:
        deltas = torch.autograd.grad(losses.sum(), [c.output for c in cap.calls], allow_unused=True)
        pairs = [(c, d.detach(), call_rows(c.output.shape[0], rows_per_example, losses.device))
                 for c, d in zip(cap.calls, deltas) if d is not None]
    return owners, pairs, B


def call_rows(n: int, rows_per_example: Sequence[int], device) -> torch.Tensor:
    """The rows of each example in a module call over ``n`` rows: ``rows_per_example`` for a call over every
    row, one each for a call over one row per example (a prompt run once for its responses)."""
    if n == sum(rows_per_example):
        return torch.tensor(list(rows_per_example), device=device)
    if n == len(rows_per_example):
        return torch.ones(n, dtype=torch.long, device=device)
    raise ValueError(f"a module call over {n} rows matches neither the {sum(rows_per_example)} rows nor the "
                     f"{len(rows_per_example)} examples of the batch")


def per_example_grads(
    model: nn.Module,
    names: Sequence[str],
    rows_per_example: Sequence[int],
    losses_fn: Callable[[], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``{name: [B, *shape]}`` gradients of each example's loss.

    ``losses_fn()`` runs the model on a batch whose dim-0 rows are grouped by example (example b owns the
    next ``rows_per_example[b]`` rows) and returns the B per-example losses.  Every module that owns one of
    ``names`` must see inputs and outputs with those rows on dim 0 (true for the layers of a causal LM), or one
    row per example (``call_rows``)."""
    owners, pairs, B = _capture(model, names, rows_per_example, losses_fn)
    out: dict[str, torch.Tensor] = {}
    for call, delta, rows in pairs:
        for local, full in owners[call.module]:
            g = vjp(call, local, delta, rows, B)
            out[full] = g if full not in out else out[full].add_(g)
    named = dict(model.named_parameters())
    for n in names:  # parameters the losses never touched have zero gradients
        if n not in out:
            out[n] = torch.zeros((B, *named[n].shape), dtype=torch.float32, device=named[n].device)
    return {n: out[n] for n in names}


@dataclass
class LinearFactors:
    """A linear weight's per-example gradient kept factored: example b's gradient is ``d[b].T @ a[b]``, the sum over
    its tokens of δ_t a_tᵀ (``a``: [B, T, in] inputs, ``d``: [B, T, out] output-gradients, fp32; examples with
    fewer tokens are padded with zero rows, which add nothing).  A module called several times (a prompt run
    once for its responses, a tied weight) has its calls' tokens concatenated."""

    a: torch.Tensor
    d: torch.Tensor


def _factorable(owners: dict[nn.Module, list[tuple[str, str]]]) -> set[str]:
    """The weights kept factored: those whose every user is a bias-free linear (a tied embedding is not)."""
    users: dict[str, list[bool]] = {}
    for mod, locals_ in owners.items():
        for local, full in locals_:
            users.setdefault(full, []).append(isinstance(mod, nn.Linear) and local == "weight" and mod.bias is None)
    return {full for full, linear in users.items() if all(linear)}


def factor_sizes(model: nn.Module, names: Sequence[str]) -> tuple[int, int]:
    """What ``per_example_factors`` keeps per example: (Σ in + out over the factored weights' modules, numbers per
    token; Σ numel of the parameters it forms whole)."""
    owners = owning_modules(model, names)
    factorable = _factorable(owners)
    width = sum(m.in_features + m.out_features for m, locals_ in owners.items()
                if any(full in factorable for _, full in locals_))
    named = dict(model.named_parameters())
    return width, sum(named[n].numel() for n in names if n not in factorable)


def _per_example_rows(x: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor:
    """A call's [R, ..., D] rows as [B, tokens, D], example b's rows in row b (zero-padded when unequal)."""
    x = x.float()
    if int(rows.min()) == int(rows.max()):
        return x.reshape(B, -1, x.shape[-1])
    from torch.nn.utils.rnn import pad_sequence

    return pad_sequence([p.reshape(-1, x.shape[-1]) for p in x.split(rows.tolist())], batch_first=True)


def per_example_factors(
    model: nn.Module,
    names: Sequence[str],
    rows_per_example: Sequence[int],
    losses_fn: Callable[[], torch.Tensor],
) -> tuple[dict[str, LinearFactors], dict[str, torch.Tensor]]:
    """As ``per_example_grads``, but the weights used only by bias-free ``nn.Linear`` modules come back factored
    (``LinearFactors``), never formed; every other named parameter comes back whole, ``[B, *shape]``.  Projecting
    or dotting the factors costs tokens × (in + out) per example instead of in × out."""
    owners, pairs, B = _capture(model, names, rows_per_example, losses_fn)
    factorable = _factorable(owners)
    factors: dict[str, LinearFactors] = {}
    whole: dict[str, torch.Tensor] = {}
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for call, delta, rows in pairs:
        mod = call.module
        for local, full in owners[mod]:
            if full in factorable:
                x = (call.args[0] if call.args else next(iter(call.kwargs.values()))).detach()
                parts.setdefault(full, []).append((_per_example_rows(x, rows, B), _per_example_rows(delta, rows, B)))
                continue
            g = vjp(call, local, delta, rows, B)
            whole[full] = g if full not in whole else whole[full].add_(g)
    for full, calls in parts.items():
        factors[full] = LinearFactors(torch.cat([a for a, _ in calls], 1), torch.cat([d for _, d in calls], 1))
    named = dict(model.named_parameters())
    for n in names:
        if n not in factors and n not in whole:
            whole[n] = torch.zeros((B, *named[n].shape), dtype=torch.float32, device=named[n].device)
    return factors, whole


def _segments(x: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor | None:
    """``[N, ..., D] -> [B, n_b * ..., D]`` when every example has the same number of rows, else ``None``."""
    if int(rows.min()) == int(rows.max()):
        return x.reshape(B, -1, x.shape[-1])
    return None


def vjp(call: Call, local: str, delta: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor:
    mod = call.module
    x = call.args[0] if call.args else next(iter(call.kwargs.values()))
    if isinstance(mod, nn.Linear):
        if local == "bias":
            return _row_sum(delta, rows, B)
        xs, ds = _segments(x.detach(), rows, B), _segments(delta, rows, B)
        if xs is not None:
            return torch.bmm(ds.transpose(1, 2).float(), xs.float())
        return torch.stack([d.reshape(-1, d.shape[-1]).T.float() @ xi.reshape(-1, xi.shape[-1]).float()
                            for d, xi in zip(delta.split(rows.tolist()), x.detach().split(rows.tolist()))])
    if isinstance(mod, nn.Embedding) and local == "weight" and mod.max_norm is None and not mod.scale_grad_by_freq:
        ex = torch.repeat_interleave(torch.arange(B, device=x.device), rows)
        ex = ex.view(-1, *([1] * (x.dim() - 1))).expand_as(x)
        flat = (ex * mod.num_embeddings + x).reshape(-1)
        g = torch.zeros(B * mod.num_embeddings, delta.shape[-1], dtype=torch.float32, device=delta.device)
        g.index_add_(0, flat, delta.reshape(-1, delta.shape[-1]).float())
        g = g.view(B, mod.num_embeddings, -1)
        if mod.padding_idx is not None:  # as F.embedding's backward: the padding row gets no gradient
            g[:, mod.padding_idx] = 0
        return g
    return _generic_vjp(call, local, delta, rows, B)


def _row_sum(delta: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor:
    ex = torch.repeat_interleave(torch.arange(B, device=delta.device), rows)
    per_row = delta.float().reshape(delta.shape[0], -1, delta.shape[-1]).sum(1)
    return torch.zeros(B, delta.shape[-1], device=delta.device).index_add_(0, ex, per_row)


def _generic_vjp(call: Call, local: str, delta: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor:
    """vjp of the module's own forward with respect to one parameter, per example (vmap when rows are equal)."""
    from torch.func import functional_call, vjp, vmap

    mod = call.module
    params = {n: p.detach() for n, p in mod.named_parameters(recurse=False)}
    split_args = [a for a in call.args if isinstance(a, torch.Tensor) and a.shape[:1] == delta.shape[:1]]
    if len(split_args) != len(call.args) or call.kwargs:
        raise NotImplementedError(f"per-example gradients of {type(mod).__name__} with non-batch arguments")

    def one(args, d):
        def f(w):
            return functional_call(mod, {**params, local: w}, tuple(args))
        _, back = vjp(f, params[local])
        return back(d)[0]

    if int(rows.min()) == int(rows.max()):
        n = int(rows[0])
        args = [a.detach().reshape(B, n, *a.shape[1:]) for a in call.args]
        return vmap(one)(args, delta.reshape(B, n, *delta.shape[1:])).float()
    parts = [a.detach().split(rows.tolist()) for a in call.args]
    return torch.stack([one([p[b] for p in parts], d).float() for b, d in enumerate(delta.split(rows.tolist()))])
