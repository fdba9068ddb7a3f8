"""``python -m lab.bench projection``: projector speed and inner-product error, side by side in one run.

Two layouts:

* **flat** — one tensor of ``d_flat`` coordinates (1e6; 2e4 with ``--quick``): the dense hashed Gaussian and
  TRAK's ``BasicProjector`` (which allocates a d x 100 fp32 buffer, so it cannot run at SmolLM2 size on this
  machine), with the hashed SJLT and the naive SJLT next to them;
* **model** — SmolLM2-135M-Instruct's real parameter shapes (d = 134,515,008, built from its config on the
  meta device; the embedded tiny model's 647k with ``--quick``), every configuration of ``--configs``.

Test vectors are heavy-tailed like real LLM gradients: in tensor p, ``x_i = s_p (0.5 c + e_i)`` with
``c, e_i = z * u`` (z ~ N(0, 1) per vector and coordinate), a per-coordinate scale ``u = exp(2 w)``,
``w ~ N(0, 1)`` shared by all vectors (the same coordinates are large in every gradient) and a per-tensor
scale ``s_p = exp(1.5 w_p)``; the top 1% of coordinates hold about 98% of the squared norm (a SmolLM2 loss
gradient: 89-98%).  Vector pairs share ``c``, so their cosines are about 0.2, not 0.

Error: RMS over all pairs of ``m`` vectors (``m = 21``: 210 pairs) of ``|<Px, Py> − <x, y>| / (‖x‖ ‖y‖)``,
the same pairs for every method.  Speed: the best single-vector ``project`` call after a warm-up (one timed
call when a call takes more than a few seconds).  Calibrated configurations get their per-tensor keep
probabilities from two further vectors of the same distribution.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from lab.bench.common import (ProjConfig, best_time, merge_results, parse_config, rms,
                                                 set_threads, stream_read_gbps)
from cropi.io import read_json, write_json
from cropi.projection import calibrate_keep, make_projector, param_shapes_of
from cropi.projection.kernels import backend_name
from cropi.projection.naive import NaiveSJLT

Tracker = Callable[[str, int], Callable[[int], None]]

FULL_MODEL_CONFIGS = (
    "sjlt-k{k}-keep1", "sjlt-k{k}-keep0.1", "sjlt-k{k}-cal0.1", "sjlt-k{k}-keep0.01", "sjlt-k{k}-cal0.01",
    "gaussian-k{k}-keep0.01", "rademacher-k{k}-keep0.01",
)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                    max_position_embeddings=8192, rms_norm_eps=1e-5)
"""SmolLM2-135M-Instruct's architecture (its config.json): the speed part needs shapes, not weights."""


@dataclass
class SpeedPlan:
    quick: bool = False
    ks: Sequence[int] = (1024, 8192)
    configs: Sequence[str] = FULL_MODEL_CONFIGS  # "{k}" is filled with each of ks
    d_flat: int = 1_000_000
    model: str = "smollm2"  # whose shapes make the model layout (and whose forward+backward is timed)
    pairs_vectors: int = 21  # m vectors -> m (m - 1) / 2 pairs
    seed: int = 0
    threads: int = 1
    fwd_bwd_responses: int = 8
    fwd_bwd_tokens: int = 96
    stream_bytes: int = 1 << 30
    notes: list = field(default_factory=list)

    @staticmethod
    def quick_plan(**kw) -> "SpeedPlan":
        return SpeedPlan(**{"quick": True, "d_flat": 20_000, "model": "tiny", "stream_bytes": 1 << 28, **kw})

    def model_configs(self) -> list[ProjConfig]:
        out = []
        for k in self.ks:
            for c in self.configs:
                cfg = parse_config(c.format(k=k))
                if cfg not in out:
                    out.append(cfg)
        return out


# ----------------------------------------------------------------------------- layouts and vectors
def model_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Trainable parameter shapes of ``model`` without loading weights (meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if model == "smollm2":
        cfg = LlamaConfig(**SMOLLM2_135M)
    else:
        from cropi.policy import resolve_model_path

        cfg = AutoConfig.from_pretrained(resolve_model_path(model))
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    return param_shapes_of(m)


def _gen(seed: int, *key) -> torch.Generator:
    h = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def heavy_tailed_rows(seed: int, name: str, numel: int, rows: Sequence[int]) -> torch.Tensor:
    """Rows ``rows`` of the test-vector family for tensor ``name`` (see the module docstring): fp32
    ``[len(rows), numel]``, a pure function of (seed, name, row)."""
    s = math.exp(1.5 * float(torch.randn(1, generator=_gen(seed, name, "scale"))))
    u = torch.randn(numel, generator=_gen(seed, name, "u")).mul_(2.0).exp_().mul_(s)
    c = torch.randn(numel, generator=_gen(seed, name, "c")).mul_(0.5)
    out = torch.empty(len(rows), numel)
    for i, r in enumerate(rows):
        torch.randn(numel, generator=_gen(seed, name, "e", r), out=out[i])
        out[i].add_(c).mul_(u)
    return out


def top1_share(x: torch.Tensor) -> float:
    sq = x.double().pow(2).flatten()
    return float(sq.topk(max(1, sq.numel() // 100)).values.sum() / sq.sum())


def _calibrated_keep(shapes, budget: float, seed: int, m: int) -> dict[str, float]:
    # calibrate_keep sums each tensor's squared entries over what it is given; one tensor at a time is
    # enough (a common factor in every tensor's energy does not move the keep probabilities)
    calib = ({n: heavy_tailed_rows(seed, n, math.prod(sh), [m, m + 1])} for n, sh in shapes.items())
    return calibrate_keep(calib, shapes, budget, batched=True)


def _make(cfg: ProjConfig, shapes, seed: int, keep_cache: dict, m: int):
    shapes = cfg.shapes(shapes)
    keep: float | dict = cfg.keep
    if cfg.rule == "calibrated":
        key = (cfg.keep, cfg.no_embed)
        if key not in keep_cache:
            keep_cache[key] = _calibrated_keep(shapes, cfg.keep, seed, m)
        keep = keep_cache[key]
    return make_projector(cfg.kind, cfg.k, seed, shapes, keep=keep)


def time_call(fn: Callable[[], object], cheap_seconds: float = 3.0) -> float:
    """Seconds of one call: best of three after a warm-up when a call is cheap, else the single first call."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > cheap_seconds:
        return first
    return min(first, best_time(fn, repeat=3, warmup=0))


def pair_errors(gram: torch.Tensor, proj: torch.Tensor) -> float:
    """RMS of |<Px_i, Px_j> − <x_i, x_j>| / (‖x_i‖ ‖x_j‖) over all pairs i < j."""
    est = proj.double() @ proj.double().T
    norms = gram.diagonal().sqrt()
    i, j = torch.triu_indices(gram.shape[0], gram.shape[0], offset=1)
    return rms(((est[i, j] - gram[i, j]) / (norms[i] * norms[j])).tolist())


# ----------------------------------------------------------------------------- pieces
def forward_backward_seconds(model: str, responses: int = 8, tokens: int = 96, prompt_tokens: int = 32) -> float:
    """One prompt's POPI forward+backward (``responses`` x ``tokens`` response tokens): best of three."""
    from cropi.gradients.popi import popi_loss
    from cropi.rollouts.trajectory_store import PromptGroup
    from cropi.policy import load_policy

    policy = load_policy(model, "cpu")
    vocab = policy.model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    group = PromptGroup("fwd-bwd", torch.randint(0, vocab, (prompt_tokens,), generator=g).tolist(),
                        [torch.randint(0, vocab, (tokens,), generator=g).tolist() for _ in range(responses)],
                        [[-2.0] * tokens for _ in range(responses)], [float(i % 2) for i in range(responses)], 1.0)
    params = [p for p in policy.model.parameters() if p.requires_grad]

    def step():
        out = popi_loss(policy.model, [group], policy.pad_token_id)
        torch.autograd.grad(out.losses[0], params)

    return best_time(step, repeat=3, warmup=1)


def _trak(d: int, k: int, seed: int):
    try:
        from trak.projectors import BasicProjector, ProjectionType
    except ImportError:
        return None
    return BasicProjector(grad_dim=d, proj_dim=k, seed=seed, proj_type=ProjectionType.normal,
                          device=torch.device("cpu"), dtype=torch.float32, block_size=100)


def flat_section(plan: SpeedPlan, track: Tracker) -> list[dict]:
    """Dense Gaussian (hashed), TRAK BasicProjector, hashed SJLT and naive SJLT on one flat tensor."""
    d, m = plan.d_flat, plan.pairs_vectors
    shapes = {"x": (d,)}
    x = heavy_tailed_rows(plan.seed, "flat", d, list(range(m)))
    gram = torch.zeros(m, m, dtype=torch.float64)
    _gram_add_(gram, x)
    rows = []
    advance = track(f"flat d={d:.0e}", 4 * len(plan.ks))
    for k in plan.ks:
        naive = NaiveSJLT(d, k, plan.seed)
        naive_s = time_call(lambda: naive.project(x[0]))
        naive_err = pair_errors(gram, torch.stack([naive.project(v) for v in x]))
        advance(1)
        trak = _trak(d, k, plan.seed)
        trak_s = trak_err = None
        if trak is not None:
            trak_s = time_call(lambda: trak.project(x[:1], model_id=0))
            trak_err = pair_errors(gram, trak.project(x, model_id=0) / math.sqrt(k))  # N(0,1) entries: 1/sqrt(k)
            del trak
        advance(1)
        for cfg in (ProjConfig("gaussian", k), ProjConfig("sjlt", k)):
            p = make_projector(cfg.kind, k, plan.seed, shapes)
            secs = time_call(lambda: p.project({"x": x[0]}))
            err = pair_errors(gram, p.project_batch({"x": x}))
            rows.append({"config": cfg.name, "kind": cfg.kind, "keep": cfg.keep, "k": k, "d": d,
                         "seconds_per_gradient": secs, "naive_sjlt_seconds_per_gradient": naive_s,
                         "trak_seconds_per_gradient": trak_s, "ip_rel_error": err, "naive_sjlt_ip_rel_error": naive_err,
                         "trak_ip_rel_error": trak_err, "layout": "flat", "top1pct_energy_share": top1_share(x[0])})
            advance(1)
    return rows


def model_timing_section(plan: SpeedPlan, shapes, track: Tracker) -> dict:
    """Seconds per gradient of every configuration and of the naive SJLT on one model-shaped vector."""
    configs = plan.model_configs()
    names = list(shapes)
    d = sum(math.prod(s) for s in shapes.values())
    vec = {n: heavy_tailed_rows(plan.seed, n, math.prod(shapes[n]), [0])[0].view(shapes[n]) for n in names}
    out: dict = {"d": d, "seconds": {}, "naive_seconds": {}, "top1pct_energy_share": None}
    flat = torch.cat([vec[n].flatten() for n in names])
    out["top1pct_energy_share"] = top1_share(flat)
    advance = track(f"timing d={d:.3g}", len(configs) + len(plan.ks))
    for k in plan.ks:
        naive = NaiveSJLT(d, k, plan.seed)
        out["naive_seconds"][str(k)] = time_call(lambda: naive.project(flat))
        del naive
        advance(1)
    del flat
    keep_cache: dict = {}
    for cfg in configs:
        p = _make(cfg, shapes, plan.seed, keep_cache, plan.pairs_vectors)
        own = {n: vec[n] for n in p.names}
        out["seconds"][cfg.name] = time_call(lambda: p.project(own))
        out.setdefault("kept_share", {})[cfg.name] = sum(p.keep_probs[n] * p.numel[n] for n in p.names) / d
        advance(1)
    return out


def _gram_add_(gram: torch.Tensor, x: torch.Tensor, chunk: int = 1 << 20) -> None:
    # fp64 accumulation in column chunks: a whole [m, numel] fp64 copy of the embedding would be 4.8 GB
    for c in range(0, x.shape[1], chunk):
        xd = x[:, c:c + chunk].double()
        gram += xd @ xd.T


def model_error_section(plan: SpeedPlan, shapes, track: Tracker, configs: Sequence[ProjConfig],
                        with_naive: bool) -> dict:
    """Pair errors of ``configs`` (and of the naive SJLT) on ``m`` model-shaped vectors, streamed tensor by tensor
    (the projections are linear, so per-tensor projections sum to the whole)."""
    m = plan.pairs_vectors
    names = list(shapes)
    d = sum(math.prod(s) for s in shapes.values())
    keep_cache: dict = {}
    projectors = {c.name: _make(c, shapes, plan.seed, keep_cache, m) for c in configs}
    acc = {c.name: torch.zeros(m, c.k) for c in configs}
    naive = {k: NaiveSJLT(d, k, plan.seed) for k in plan.ks} if with_naive else {}
    naive_acc = {k: torch.zeros(m, k) for k in naive}
    gram = torch.zeros(m, m, dtype=torch.float64)
    kinds = "/".join(sorted({c.kind for c in configs}))
    advance = track(f"errors {kinds} d={d:.3g} ({m * (m - 1) // 2} pairs)", len(names))
    offset = 0
    for n in names:
        numel = math.prod(shapes[n])
        x = heavy_tailed_rows(plan.seed, n, numel, list(range(m)))
        _gram_add_(gram, x)
        for c in configs:
            if n in projectors[c.name].param_shapes:
                acc[c.name] += projectors[c.name].project_batch({n: x.view(m, *shapes[n])})
        for k, nv in naive.items():
            for c0 in range(0, numel, 1 << 20):  # the same map as one flat index_add_, in slices
                c1 = min(numel, c0 + (1 << 20))
                naive_acc[k].index_add_(1, nv.row[offset + c0:offset + c1], x[:, c0:c1] * nv.sign[offset + c0:offset + c1])
        offset += numel
        advance(1)
    return {"d": d, "errors": {name: pair_errors(gram, a) for name, a in acc.items()},
            "naive_errors": {str(k): pair_errors(gram, a) for k, a in naive_acc.items()}}


# ----------------------------------------------------------------------------- driver
def _cached(work: Path, key: str, fn: Callable[[], object]):
    """Run ``fn`` once per work folder: a rerun after an interruption skips finished sections."""
    path = work / "speed-sections.json"
    done = read_json(path) if path.exists() else {}
    if key in done:
        return done[key]
    value = fn()
    done[key] = value
    write_json(path, done)
    return value


def run_speed(plan: SpeedPlan, out_dir: Path, work_dir: Path, track: Tracker | None = None,
              log: Callable[[str], None] = print) -> dict:
    """All speed sections (resumable through ``work_dir``); merges them into ``out_dir/projection.json``."""
    set_threads(plan.threads)
    track = track or (lambda desc, total: (lambda n: None))
    work_dir.mkdir(parents=True, exist_ok=True)
    key = f"{plan.model}-{plan.d_flat}-{plan.pairs_vectors}-{plan.seed}-{list(plan.ks)}"
    gbps = _cached(work_dir, "stream_read_gbps", lambda: stream_read_gbps(plan.stream_bytes))
    log(f"streaming read: {gbps:.2f} GB/s")
    bwd = _cached(work_dir, f"backward-{plan.model}", lambda: forward_backward_seconds(
        plan.model, plan.fwd_bwd_responses, plan.fwd_bwd_tokens))
    log(f"{plan.model} forward+backward ({plan.fwd_bwd_responses} x {plan.fwd_bwd_tokens} tokens): {bwd:.2f} s")
    flat = _cached(work_dir, f"flat-{key}", lambda: flat_section(plan, track))
    shapes = model_shapes(plan.model)
    cfg_key = f"{key}-{sorted(c.name for c in plan.model_configs())}"
    timing = _cached(work_dir, f"timing-{cfg_key}", lambda: model_timing_section(plan, shapes, track))
    # two resumable pieces: SJLT (with the naive baseline) and the dense kinds (minutes each at full size)
    sjlt = [c for c in plan.model_configs() if c.kind == "sjlt"]
    dense = [c for c in plan.model_configs() if c.kind != "sjlt"]
    errors = {"errors": {}, "naive_errors": {}}
    for part, cfgs, with_naive in (("sjlt", sjlt, True), ("dense", dense, False)):
        if cfgs or with_naive:
            e = _cached(work_dir, f"errors-{part}-{cfg_key}",
                        lambda: model_error_section(plan, shapes, track, cfgs, with_naive))
            errors["errors"].update(e["errors"])
            errors["naive_errors"].update(e["naive_errors"])
    rows = list(flat)
    for cfg in plan.model_configs():
        rows.append({"config": cfg.name, "kind": cfg.kind, "keep": cfg.keep, "k": cfg.k, "d": timing["d"],
                     "seconds_per_gradient": timing["seconds"][cfg.name],
                     "naive_sjlt_seconds_per_gradient": timing["naive_seconds"][str(cfg.k)],
                     "trak_seconds_per_gradient": None, "ip_rel_error": errors["errors"][cfg.name],
                     "naive_sjlt_ip_rel_error": errors["naive_errors"][str(cfg.k)], "trak_ip_rel_error": None,
                     "layout": plan.model, "keep_rule": cfg.rule, "kept_share": timing["kept_share"][cfg.name],
                     "top1pct_energy_share": timing["top1pct_energy_share"]})
    trak_ok = any(r["trak_seconds_per_gradient"] is not None for r in flat)
    notes = [f"Speed rows at d = {timing['d']:,} use {plan.model}'s parameter shapes; TRAK's BasicProjector is "
             f"null there (it allocates a d x 100 fp32 buffer: {400 * timing['d'] / 1e9:.2g} GB at this d)."
             + ("" if trak_ok else " TRAK is not installed (`pip install traker --no-deps`), so it is null everywhere."),
             f"Errors at every size are measured at that size on {plan.pairs_vectors * (plan.pairs_vectors - 1) // 2} "
             "pairs of heavy-tailed vectors (top 1% of coordinates: "
             f"{100 * timing['top1pct_energy_share']:.0f}% of the squared norm).",
             "Single-threaded timings (torch.set_num_threads(%d)): best of three calls." % plan.threads,
             f"SJLT backend: {backend_name()} (`cropi.projection.kernels`; the sparsified configurations use the "
             "torch path for their kept coordinates)."]
    update = {"stream_read_gbps": gbps, "backward_seconds": bwd, "speed": rows,
              "meta": {"backward_model": plan.model, "backward_shape": [plan.fwd_bwd_responses, plan.fwd_bwd_tokens],
                       "speed_note": f"speed: {'QUICK (reduced) run' if plan.quick else 'full run'}; "
                                     f"model layout {plan.model}, flat d = {plan.d_flat:,}",
                       "speed_notes": notes + list(plan.notes)}}
    return merge_results(out_dir, update)
