"""Projections and exact inner products of per-example gradients kept factored (``gradients.per_example``).

For a linear weight W (out × in), example b's gradient is G_b = Σ_t δ_t a_tᵀ over its tokens (inputs a_t, gradients
at the output δ_t).  With two independent CountSketch maps P (k_out × out) and Q (k_in × in), one ±1 per column,

    P G_b Qᵀ = Σ_t (P δ_t)(Q a_t)ᵀ        (k_out × k_in),

which costs tokens × (out + in) instead of the out × in of forming G_b, and E ⟨P G Qᵀ, P H Qᵀ⟩ = ⟨G, H⟩ because
E[PᵀP] = I and E[QᵀQ] = I independently: inner products, and so cosines, are preserved in expectation, as by a
projection of the flat gradient (the factored projection of LoGra and bergson, here with sparse maps).

Exact inner products need no projection either: ⟨G_b, M⟩ = Σ_t δ_tᵀ M a_t for any out × in matrix M (a validation
mean), and ‖G_b‖² = Σ_{t,s} (δ_t·δ_s)(a_t·a_s) (the "ghost norm"), whichever of that and forming G_b is cheaper.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from cropi.gradients import per_example
from cropi.gradients.popi import FactoredPopiEstimator, GradientBatch, PopiLoss, popi_loss, scoring_loss
from cropi.objective import LossSpec
from cropi.projection.hashing import hash_range, lsr, tensor_salt
from cropi.rollouts.trajectory_store import PromptGroup

STREAM_FACTOR_OUT = 64  # the row map P of a weight
STREAM_FACTOR_IN = 65  # the column map Q


def _countsketch(seed: int, name: str, stream: int, n: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket in [0, k) and sign ±1 of each of ``n`` coordinates, from one hash per coordinate: the low bit is the
    sign, the bits above it (mod k) the bucket."""
    h = hash_range(tensor_salt(seed, name, stream), 0, n, device)
    sign = 1.0 - 2.0 * (h & 1).to(torch.float32)
    bucket = torch.remainder(lsr(h, 1), k)
    return bucket, sign


class FactoredSJLT:
    """``P G Qᵀ`` per weight, flattened and concatenated in the order of ``shapes``.

    A 2-D weight (out × in) gets ``k_out × k_in`` numbers; any other parameter (a norm's scale, a bias) is flattened
    and CountSketched alone to ``min(numel, k_out · k_in)`` buckets.  ``sketch_batch`` computes the projections of
    a batch's per-example gradients inside one backward pass, from module hooks, without forming any of them;
    ``project_batch`` projects formed gradients (the Projector interface, and the slow reference)."""

    kind = "factored-sjlt"

    def __init__(self, shapes: Mapping[str, Sequence[int]], k_out: int, k_in: int, seed: int = 0,
                 device: torch.device | str = "cpu"):
        self.names = list(shapes)
        self.shapes = {n: tuple(int(x) for x in shapes[n]) for n in self.names}
        self.k_out, self.k_in, self.seed = k_out, k_in, seed
        self._maps, self.offsets = {}, {}
        k = 0
        for n in self.names:
            shape = self.shapes[n]
            if len(shape) == 2:
                out, inp = shape
                self._maps[n] = (_countsketch(seed, n, STREAM_FACTOR_OUT, out, k_out, device),
                                 _countsketch(seed, n, STREAM_FACTOR_IN, inp, k_in, device))
                width = k_out * k_in
            else:
                numel = math.prod(shape)
                width = min(numel, k_out * k_in)
                self._maps[n] = (_countsketch(seed, n, STREAM_FACTOR_OUT, numel, width, device),)
            self.offsets[n] = (k, k + width)
            k += width
        self.k = k
        self._dense_maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def spec(self) -> dict:
        return {"kind": self.kind, "k_out": self.k_out, "k_in": self.k_in, "seed": self.seed,
                "shapes": {n: list(s) for n, s in self.shapes.items()}}

    @staticmethod
    def _sketch(x: torch.Tensor, bucket: torch.Tensor, sign: torch.Tensor, k: int) -> torch.Tensor:
        """[..., n] -> [..., k]: each column, signed, added into its bucket."""
        out = torch.zeros(*x.shape[:-1], k, dtype=torch.float32, device=x.device)
        return out.index_add_(x.dim() - 1, bucket, x.float() * sign)

    def dense(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """P and Q of a 2-D weight as dense matrices, made once: applying them is one matmul, faster on CPU than
        adding columns into buckets although it multiplies by the zeros."""
        if name not in self._dense_maps:
            (pb, ps), (qb, qs) = self._maps[name]
            out, inp = self.shapes[name]
            P = torch.zeros(self.k_out, out, device=pb.device)
            P[pb, torch.arange(out, device=pb.device)] = ps
            Q = torch.zeros(self.k_in, inp, device=qb.device)
            Q[qb, torch.arange(inp, device=qb.device)] = qs
            self._dense_maps[name] = (P, Q)
        return self._dense_maps[name]

    def project_weight(self, name: str, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``P (dᵀ a) Qᵀ`` of one example's factors (``a`` [T, in], ``d`` [T, out]), flattened."""
        (pb, ps), (qb, qs) = self._maps[name]
        return (self._sketch(d, pb, ps, self.k_out).T @ self._sketch(a, qb, qs, self.k_in)).reshape(-1)

    def project_factors(self, factors: Mapping, grads: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """[B, k] from ``{name: LinearFactors}`` and the formed ``grads`` of the other parameters (``[B, *shape]``;
        a parameter in neither counts as zero)."""
        B = len(next(iter(factors.values())).a) if factors else next(iter(grads.values())).shape[0]
        out = self.project_batch(grads or {}, batch=B)
        for n, f in factors.items():
            lo, hi = self.offsets[n]
            P, Q = self.dense(n)
            out[:, lo:hi] = torch.bmm((f.d @ P.T).transpose(1, 2), f.a @ Q.T).reshape(B, -1).cpu()
        return out

    def project_factored_batch(self, gb: GradientBatch) -> torch.Tensor:
        """[B, k] of a batch with factored linear weights (``GradientBatch.factors``), never formed."""
        return self.project_factors(gb.factors, gb.grads)

    def project_batch(self, grads: Mapping[str, torch.Tensor], batch: int | None = None) -> torch.Tensor:
        """[B, k] from formed per-example gradients ``{name: [B, *shape]}`` (a missing name counts as zero)."""
        B = batch if batch is not None else next(iter(grads.values())).shape[0]
        out = torch.zeros(B, self.k, dtype=torch.float32)
        for n in self.names:
            if n in grads:
                lo, hi = self.offsets[n]
                out[:, lo:hi] = self._project_formed(n, grads[n]).cpu()
        return out

    def _project_formed(self, name: str, g: torch.Tensor) -> torch.Tensor:
        """[B, width of ``name``]: one parameter's formed per-example gradients [B, *shape], projected."""
        B, g = g.shape[0], g.float()
        if len(self._maps[name]) == 2:
            (pb, ps), (qb, qs) = self._maps[name]
            left = self._sketch(g.transpose(1, 2), pb, ps, self.k_out).transpose(1, 2)  # [B, k_out, in]
            return self._sketch(left, qb, qs, self.k_in).reshape(B, -1)
        (bucket, sign), = self._maps[name]
        lo, hi = self.offsets[name]
        return self._sketch(g.reshape(B, -1), bucket, sign, hi - lo)

    def project(self, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.project_batch({n: g.unsqueeze(0) for n, g in grads.items()})[0]

    def sketch_batch(self, model: nn.Module, rows_per_example: Sequence[int],
                     losses_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """[B, k]: the projected gradients of the B per-example losses ``losses_fn()`` returns, from one forward and
        one backward pass (``gradients.per_example`` explains the rows; ``SketchHooks`` how).  The backward runs to
        the input embeddings' outputs only, so no parameter gradient is summed, unless the embedding is frozen (only
        the top blocks train): then it runs to the sketched parameters themselves."""
        B = len(rows_per_example)
        with SketchHooks(self, model, B, keep_embedding_outputs=True) as hooks:
            hooks.rows(rows_per_example)
            losses = losses_fn()
        if losses.shape != (B,):
            raise ValueError(f"losses_fn returned shape {tuple(losses.shape)}, expected ({B},)")
        ends, hooks.ends = hooks.ends, []
        if not ends:  # a frozen input embedding (only the top blocks train): run the backward to the parameters
            named = dict(model.named_parameters())
            ends = [named[n] for n in self.names if n in named and named[n].requires_grad]
        if not ends:
            raise ValueError("the model has no differentiable input embedding or parameter to run the backward to")
        torch.autograd.grad(losses.sum(), ends, allow_unused=True)
        return hooks.out

    def _per_example_outer(self, pd: torch.Tensor, qa: torch.Tensor, rows: torch.Tensor, B: int) -> torch.Tensor:
        """[B, k_out k_in]: Σ over example b's rows and positions of (P δ)(Q a)ᵀ."""
        if int(rows.min()) == int(rows.max()):  # equal rows per example: one batched product per example
            pd, qa = pd.reshape(B, -1, self.k_out), qa.reshape(B, -1, self.k_in)
            return torch.bmm(pd.transpose(1, 2), qa).reshape(B, -1)
        pd, qa = pd.reshape(pd.shape[0], -1, self.k_out), qa.reshape(qa.shape[0], -1, self.k_in)
        per_row = torch.bmm(pd.transpose(1, 2), qa).reshape(pd.shape[0], -1)
        example = torch.repeat_interleave(torch.arange(B, device=rows.device), rows)
        return torch.zeros(B, per_row.shape[1], device=per_row.device).index_add_(0, example, per_row)

    def _add_call(self, out, locals_, call, delta, rows, B) -> None:
        mod = call.module
        x = (call.args[0] if call.args else next(iter(call.kwargs.values()))).detach()
        for local, full in locals_:
            lo, hi = self.offsets[full]
            if len(self._maps[full]) == 2 and local == "weight" and isinstance(mod, (nn.Linear, nn.Embedding)):
                P, Q = self.dense(full)
                if isinstance(mod, nn.Linear):
                    pd, qa = delta.float() @ P.T, x.float() @ Q.T
                else:  # the gradient of an embedding row is δ at the tokens that read it: d is one-hot, P d a column
                    pd = P.T[x] if mod.padding_idx is None else P.T[x] * (x != mod.padding_idx).unsqueeze(-1)
                    qa = delta.float() @ Q.T
                out[:, lo:hi] += self._per_example_outer(pd, qa, rows, B).cpu()
                continue
            g = per_example.vjp(call, local, delta, rows, B)  # small parameters: formed, then sketched
            out[:, lo:hi] += self._project_formed(full, g).cpu()


class SketchHooks:
    """While open, forward hooks on the modules that own ``sketch``'s parameters make every backward that later
    runs through their outputs add each example's projected gradient into ``out`` [B, k]: the tensor hook of a
    module call receives the output-gradient δ, projects (P δ)(Q a)ᵀ per example and drops δ at once.  Whose
    backward it is does not matter: ``FactoredSJLT.sketch_batch`` runs its own, and the GRPO trainer's own
    ``loss.backward()`` (which also forms the summed parameter gradient) feeds the same hooks, so the per-prompt
    projections of a training step cost no extra pass.

    ``rows(rows_per_example, first)`` says whose rows the next forward holds: its rows belong, in order, to
    examples ``first, first + 1, ...``, ``rows_per_example[i]`` rows each (a module call over one row per example,
    a prompt run once for its responses, is recognised as in ``per_example.call_rows``)."""

    def __init__(self, sketch: FactoredSJLT, model: nn.Module, n_examples: int, keep_embedding_outputs: bool = False):
        self.sketch, self.model = sketch, model
        self.out = torch.zeros(n_examples, sketch.k, dtype=torch.float32)
        self.owners = per_example.owning_modules(model, sketch.names)
        self.ends: list[torch.Tensor] = []  # the input embeddings' outputs (``keep_embedding_outputs``)
        self._keep_ends = keep_embedding_outputs
        self._rows: list[int] | None = None
        self._first = 0
        self._handles: list = []
        self._busy = False

    def rows(self, rows_per_example: Sequence[int], first: int = 0) -> None:
        if first < 0 or first + len(rows_per_example) > len(self.out):
            raise ValueError(f"examples {first}..{first + len(rows_per_example) - 1} are outside the "
                             f"{len(self.out)} this capture holds")
        self._rows, self._first = [int(r) for r in rows_per_example], first

    def __enter__(self) -> "SketchHooks":
        self._handles = [m.register_forward_hook(self._on_call, with_kwargs=True) for m in self.owners]
        embed = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        if self._keep_ends and embed is not None:
            self._handles.append(embed.register_forward_hook(self._on_embed))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_embed(self, mod, args, output) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            self.ends.append(output)

    def _on_call(self, mod, args, kwargs, output) -> None:
        if self._busy or not (isinstance(output, torch.Tensor) and output.requires_grad):
            return
        if self._rows is None:
            raise RuntimeError("SketchHooks.rows must name the examples before a forward pass")
        # the hook must not hold ``output``: a tensor whose hook refers to it is a reference cycle that keeps the
        # batch's whole graph alive until Python's cycle collector happens to run
        call = per_example.Call(mod, tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                                kwargs, None)
        rows = per_example.call_rows(output.shape[0], self._rows, output.device)
        B, target, locals_ = len(self._rows), self.out[self._first:self._first + len(self._rows)], self.owners[mod]
        output.register_hook(lambda delta: self._add(target, locals_, call, delta.detach(), rows, B))

    def _add(self, target, locals_, call, delta, rows, B) -> None:
        # a norm's per-example gradient re-runs the module's forward (``per_example.vjp``): not a call to capture
        self._busy = True
        try:
            self.sketch._add_call(target, locals_, call, delta, rows, B)
        finally:
            self._busy = False


def exact_dot(a: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """⟨dᵀ a, M⟩ = Σ_t δ_tᵀ M a_t for one example (``m``: out × in), without forming dᵀ a."""
    return ((a.float() @ m.float().T) * d.float()).sum()


def squared_norm(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """‖dᵀ a‖²: by the ghost norm Σ_{t,s} (δ_t·δ_s)(a_t·a_s) when T² (in + out) is below in × out, else formed."""
    T, inp = a.shape
    out = d.shape[1]
    if T * T * (inp + out) < T * inp * out:
        return ((d.float() @ d.float().T) * (a.float() @ a.float().T)).sum()
    return (d.float().T @ a.float()).pow(2).sum()


def exact_dots(f, m: torch.Tensor) -> torch.Tensor:
    """[B]: ``exact_dot`` of every example of a ``LinearFactors``, in one batched product."""
    return ((f.a @ m.float().T) * f.d).sum((1, 2))


def squared_norms(f) -> torch.Tensor:
    """[B]: ``squared_norm`` of every example of a ``LinearFactors``, ghost or formed as that function chooses."""
    a, d = f.a, f.d
    T, inp, out = a.shape[1], a.shape[2], d.shape[2]
    if T * T * (inp + out) < T * inp * out:
        return (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2))
    return torch.bmm(d.transpose(1, 2), a).pow(2).sum((1, 2))


class SketchingPopiEstimator(FactoredPopiEstimator):
    """POPI gradients of up to ``batch_size`` prompts under a ``FactoredSJLT``, from one forward (each prompt run
    once for its responses) and one backward pass: ``GradientBatch.projected`` only.  Nothing is formed, but the
    backward keeps every linear module's input: a batch closes at ``memory_gb`` counted as the factored
    estimator's factors (without the whole-formed gradients)."""

    def __init__(self, model: nn.Module, pad_id: int, sketch: FactoredSJLT, loss: LossSpec = scoring_loss(),
                 acg: bool = False, batch_size: int = 32, memory_gb: float | None = None):
        super().__init__(model, pad_id, loss, acg, sketch.names, batch_size, memory_gb)
        self.sketch = sketch
        self._whole = 0

    def _compute(self, batch: list[PromptGroup]) -> GradientBatch:
        diag: list[PopiLoss] = []

        def losses():
            diag.append(popi_loss(self.model, batch, self.pad_id, self.loss, self.acg, shared_prompt=True))
            return diag[0].losses

        projected = self.sketch.sketch_batch(self.model, [len(g.rewards) for g in batch], losses)
        return GradientBatch([g.prompt_id for g in batch], {}, diag[0].ess, diag[0].max_abs_log_ratio,
                             projected=projected, projector_spec=self.sketch.spec())
