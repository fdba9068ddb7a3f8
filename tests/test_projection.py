"""Sparse random projector: hash vs pure-Python reference, streaming vs flat matrix, JL statistics."""

import math
import random

import pytest
import torch

from cropi.errors import ConfigError
from cropi.projection import (Projector, calibrate_keep, hash64, hash_range, make_projector,
                              param_shapes_of, ref_hash64, resolve_keep, select_params, tensor_salt)
from cropi.projection.hashing import STREAM_KEEP, MASK64, to_unsigned
from cropi.projection.kernels import BACKEND_ENV, backend_name
from cropi.projection.naive import naive_sjlt
from cropi.projection.reference import (dense_matrix, ref_gaussian, ref_keep, ref_project,
                                        ref_rademacher, ref_sjlt_column)

KINDS = ["gaussian", "rademacher", "sjlt"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


try:
    import numba  # noqa: F401
    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False
BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed"))]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test with the torch path and with the fused numba kernel (cropi.projection.kernels)."""
    monkeypatch.setenv(BACKEND_ENV, request.param)
    assert backend_name() == request.param
    return request.param


def _grads(shapes, gen, batch=None, dtype=torch.float32):
    pre = () if batch is None else (batch,)
    return {n: torch.randn(*pre, *sh, generator=gen).to(dtype) for n, sh in shapes.items()}


def _flat(grads, names):
    return torch.cat([grads[n].reshape(-1).double() for n in names])


# ----------------------------------------------------------------------------------------- hashing
def test_torch_hash_equals_python_reference_bit_for_bit():
    rng = random.Random(0)
    counters = [0, 1, 2, 3, 2**31 - 1, 2**31, 2**31 + 1, 2**32 + 7, 2**40, 2**40 + 12345, 2**47 - 1,
                2**62 + 5, 2**63 - 1]
    counters += [rng.randrange(2**31, 2**63) for _ in range(1500)] + [rng.randrange(2**40) for _ in range(1500)]
    c = torch.tensor(counters, dtype=torch.int64)
    for salt in [0, 1, MASK64, 2**63, tensor_salt(7, "model.layers.3.mlp.up_proj.weight", 16)]:
        got = [to_unsigned(v) for v in hash64(salt, c).tolist()]
        assert got == [ref_hash64(salt, x) for x in counters]
        start = 2**40 - 37
        rng_hash = [to_unsigned(v) for v in hash_range(salt, start, 100).tolist()]
        assert rng_hash == [ref_hash64(salt, x) for x in range(start, start + 100)]


def test_salts_separate_seeds_names_and_streams():
    salts = {tensor_salt(seed, name, stream) for seed in (0, 1, 2**40) for name in ("a", "b", "a.weight")
             for stream in (1, 2, 16)}
    assert len(salts) == 27


def test_tensor_salt_matches_its_definition_written_out():
    """The salt from the published splitmix64 constants and BLAKE2b of the name, computed here without
    cropi's helpers: changing it would change every projection (and break stored gradients)."""
    import hashlib

    m = (1 << 64) - 1

    def finalizer(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    for seed, name, stream in ((5, "x", 1), (0, "model.layers.0.mlp.up_proj.weight", 16), (2**40, "a", 4)):
        name_hash = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, person=b"cropi.proj.name").digest(),
                                   "little")
        s = finalizer((seed * 0x9E3779B97F4A7C15 + stream) & m)
        assert tensor_salt(seed, name, stream) == finalizer(s ^ name_hash ^ ((stream * 0x94D049BB133111EB) & m))


def test_entries_at_coordinates_beyond_2_40_match_reference():
    big = [2**31 + 3, 2**40 + 5, 2**41 + 2, 2**43 + 1]
    gi = torch.tensor(big, dtype=torch.int64)
    for k, s in [(64, 1), (12, 2), (2**16, 1)]:
        p = make_projector("sjlt", k, 9, {"w": (4, 4)}, s=s)
        for j in range(s):
            b2 = p._b2_at(p._salts["w"][j], gi).tolist()
            for i, v in zip(big, b2):
                row, sign = ref_sjlt_column(9, "w", i, k, s)[j]
                assert (j * p.m + v // 2, -1 if v % 2 else 1) == (row, sign)
    g = make_projector("gaussian", 5, 9, {"w": (4, 4)})
    mat = g._decode(g._words_at(g._salts["w"], gi))
    ref = torch.tensor([[ref_gaussian(9, "w", i, j, 5) for j in range(5)] for i in big], dtype=torch.float32)
    assert torch.allclose(mat, ref, atol=1e-5)
    r = make_projector("rademacher", 70, 9, {"w": (4, 4)})
    mat = r._decode(r._words_at(r._salts["w"], gi))
    assert mat.tolist() == [[float(ref_rademacher(9, "w", i, j, 70)) for j in range(70)] for i in big]


# ------------------------------------------------------------------------- streaming == flat matrix
SHAPES = {"a.weight": (7, 13), "b.bias": (5,), "c.weight": (3, 43), "d.weight": (130,)}


@pytest.mark.parametrize("kind,k,s,keep", [
    ("sjlt", 16, 1, 1.0),            # 16-bit lanes
    ("sjlt", 16, 4, 0.5),            # s > 1, sparsified
    ("sjlt", 12, 2, 1.0),            # k/s not a power of two: 32-bit lanes, multiply-shift rows
    ("sjlt", 2**16, 1, 0.6),         # power of two above the 16-bit lane range
    ("sjlt", 2**16, 1, 1.0),         # ... kept whole: the 32-bit lanes of the fused kernel
    ("gaussian", 9, 1, 1.0),
    ("gaussian", 8, 1, {"a.weight": 0.3, "b.bias": 0.5, "c.weight": 1.0, "d.weight": 0.7}),
    ("rademacher", 70, 1, 1.0),
    ("rademacher", 5, 1, 0.4),
])
def test_per_parameter_streaming_equals_flat_projection(kind, k, s, keep, backend):
    gen = torch.Generator().manual_seed(1)
    p = make_projector(kind, k, 3, SHAPES, keep=keep, block_size=64, s=s, small_numel=1, min_kept=1)
    grads = _grads(SHAPES, gen)
    # entry by entry in pure Python over the concatenated flat coordinates
    expected = torch.tensor(ref_project(p, grads), dtype=torch.float64)
    got = p.project(grads).double()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    if k <= 128:
        mat = dense_matrix(p)
        assert mat.shape == (k, p.dim)
        assert torch.allclose(mat @ _flat(grads, p.names), expected)
    if keep != 1.0:  # the sparsifier really dropped coordinates
        kept = sum(ref_keep(3, n, i, p.keep_probs[n]) for n in p.names for i in range(p.numel[n]))
        assert 5 < kept < p.dim - 5


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("bits", [16, 32])
def test_fused_kernel_matches_reference_beyond_2_40(bits, monkeypatch):
    from cropi.projection.kernels import sjlt_accumulate

    monkeypatch.setenv(BACKEND_ENV, "numba")
    per, mask, salt = 64 // bits, (1 << 12) - 1, tensor_salt(9, "w", 16)
    for word0 in (0, 2**31 // per + 3, 2**40 // per + 5, 2**62 // per):
        x = torch.arange(1, 15, dtype=torch.float32)  # 14 coordinates: whole words plus a partial one
        acc = torch.zeros(mask + 1)
        sjlt_accumulate(x.numpy(), salt, word0, bits, mask, acc.numpy())
        expected = torch.zeros(mask + 1)
        for t in range(x.numel()):
            i = word0 * per + t
            expected[(ref_hash64(salt, i // per) >> (bits * (i % per))) & mask] += x[t]
        assert torch.equal(acc, expected)


def test_backends_agree_on_a_large_tensor(monkeypatch):
    if not HAVE_NUMBA:
        pytest.skip("numba not installed")
    gen = torch.Generator().manual_seed(8)
    shapes = {"w": (1000, 700), "b": (333,)}
    grads = _grads(shapes, gen)
    outs = {}
    for be in ("torch", "numba"):
        monkeypatch.setenv(BACKEND_ENV, be)
        outs[be] = make_projector("sjlt", 1024, 2, shapes).project(grads)
    scale = outs["torch"].abs().max().item()
    assert torch.allclose(outs["torch"], outs["numba"], atol=1e-5 * scale)  # fp32 summation order only


def test_keep_rule_on_ties_of_the_high_bits():
    # choose thresholds whose high 16 bits tie the high lane of coordinate i, so the low lane decides
    name, i = "w", 6
    hi = (ref_hash64(tensor_salt(4, name, STREAM_KEEP), i >> 2) >> (16 * (i & 3))) & 0xFFFF
    base = (hi ^ 0x8000) << 16
    for t in (base, base + 1, base + 0x7FFF, base + 0xFFFF):
        if not 0 < t < 2**32:
            continue
        q = t / 2**32
        p = make_projector("sjlt", 8, 4, {name: (64,)}, keep={name: q}, small_numel=1, min_kept=1)
        assert p._thresholds[name] == t
        x = torch.zeros(64)
        x[i] = 1.0
        kept = bool(p.project({name: x}).abs().sum() > 0)
        assert kept == ref_keep(4, name, i, q)
        rel = p._kept(name, 0, 64, t, torch.device("cpu")).tolist()
        assert rel == [j for j in range(64) if ref_keep(4, name, j, q)]


# ------------------------------------------------------------------- batch, determinism, linearity
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_batched_equals_single_calls_bitwise(kind, keep, backend):
    gen = torch.Generator().manual_seed(2)
    p = make_projector(kind, 32, 5, SHAPES, keep=keep, block_size=64, small_numel=1, min_kept=1)
    for dtype in (torch.float32, torch.bfloat16):
        batch = _grads(SHAPES, gen, batch=4, dtype=dtype)
        out = p.project_batch(batch)
        assert out.shape == (4, 32) and out.dtype == torch.float32
        for b in range(4):
            assert torch.equal(out[b], p.project({n: g[b] for n, g in batch.items()}))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_from_keys_and_seeds_differ(kind):
    gen = torch.Generator().manual_seed(3)
    grads = _grads(SHAPES, gen)
    a = make_projector(kind, 24, 11, SHAPES, keep=0.5, small_numel=1, min_kept=1).project(grads)
    b = make_projector(kind, 24, 11, SHAPES, keep=0.5, small_numel=1, min_kept=1).project(grads)
    c = make_projector(kind, 24, 12, SHAPES, keep=0.5, small_numel=1, min_kept=1).project(grads)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the random map is keyed by parameter name, not by position in the dict
    renamed = {("x." + n): sh for n, sh in SHAPES.items()}
    d = make_projector(kind, 24, 11, renamed, keep=0.5, small_numel=1, min_kept=1)
    assert not torch.allclose(a, d.project({"x." + n: g for n, g in grads.items()}))
    # the order the caller builds the dict in does not matter
    assert torch.equal(a, make_projector(kind, 24, 11, SHAPES, keep=0.5, small_numel=1, min_kept=1)
                       .project(dict(reversed(list(grads.items())))))


def test_sjlt_map_does_not_depend_on_block_size(backend):
    gen = torch.Generator().manual_seed(4)
    shapes = {"w": (300, 37), "v": (1000,)}
    grads = _grads(shapes, gen)
    outs = [make_projector("sjlt", 64, 1, shapes, block_size=bs).project(grads) for bs in (64, 1024, 2**18)]
    # same random map; only the fp32 partial sums per block differ
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and torch.allclose(outs[0], outs[2], atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_sparsified_projection_is_linear_mean_of_projections(kind):
    gen = torch.Generator().manual_seed(5)
    p = make_projector(kind, 32, 6, SHAPES, keep=0.3, block_size=64, small_numel=1, min_kept=1)
    batch = _grads(SHAPES, gen, batch=6)
    mean_grad = {n: g.mean(0) for n, g in batch.items()}
    assert torch.allclose(p.project(mean_grad), p.project_batch(batch).mean(0), atol=1e-5)
    two = {n: 2.0 * g[0] - 0.5 * g[1] for n, g in batch.items()}
    rows = p.project_batch(batch)
    assert torch.allclose(p.project(two), 2.0 * rows[0] - 0.5 * rows[1], atol=1e-5)


# ----------------------------------------------------------------------------------- statistics
D = 4096


def _gaussian_pair(gen):
    x = torch.randn(D, generator=gen, dtype=torch.float64)
    z = torch.randn(D, generator=gen, dtype=torch.float64)
    return x, 0.6 * x + 0.8 * z


def _heavy_pair(gen, d=D):
    """1% of coordinates (shared support) hold ~98% of the squared norm."""
    m = d // 100
    idx = torch.randperm(d, generator=gen)[:m]
    out = []
    for _ in range(2):
        v = torch.randn(d, generator=gen, dtype=torch.float64)
        v *= math.sqrt(0.02 / (d - m))
        v[idx] = torch.randn(m, generator=gen, dtype=torch.float64) * math.sqrt(0.98 / m)
        out.append(v)
    x, y = out
    return x, 0.6 * x + 0.8 * y


def _errors(kind, k, x, y, seeds, keep=1.0, shapes=None, **kw):
    shapes = shapes or {"w": (x.numel(),)}
    split = lambda v: dict(zip(shapes, torch.split(v, [math.prod(s) for s in shapes.values()])))  # noqa: E731
    batch = {n: torch.stack([a, b]).float().reshape(2, *shapes[n]) for (n, a), (_, b) in
             zip(split(x).items(), split(y).items())}
    exact = float(x @ y)
    est = []
    for seed in seeds:
        out = make_projector(kind, k, seed, shapes, keep=keep, **kw).project_batch(batch).double()
        est.append(float(out[0] @ out[1]))
    est = torch.tensor(est, dtype=torch.float64)
    norm = float(x.norm() * y.norm())
    return est, exact, norm


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("vectors", ["gaussian", "heavy"])
def test_unbiased_and_jl_error_bound(kind, vectors):
    gen = torch.Generator().manual_seed(6)
    x, y = (_gaussian_pair if vectors == "gaussian" else _heavy_pair)(gen)
    k, n_seeds = 64, 150
    est, exact, norm = _errors(kind, k, x, y, range(n_seeds))
    se = float(est.std()) / math.sqrt(n_seeds)
    assert abs(float(est.mean()) - exact) < 4 * se  # E_seed <Px, Py> = <x, y>
    rms = float(((est - exact) ** 2).mean().sqrt()) / norm
    # Var <= (|x|^2 |y|^2 + <x,y>^2) / k <= 2 |x|^2 |y|^2 / k
    assert rms < 1.6 / math.sqrt(k)
    assert rms > 0.3 / math.sqrt(k)  # and it is a real random projection, not the identity


@pytest.mark.parametrize("kind", KINDS)
def test_sparsified_projection_is_unbiased_for_inner_products(kind):
    """keep_i / sqrt(q_i) gives E[S^T S] = I, so E<PSx, PSy> = <x, y> (1/q would inflate it by 1/q)."""
    gen = torch.Generator().manual_seed(12)
    x, y = _gaussian_pair(gen)
    shapes = {"a.weight": (32, 64), "b.weight": (2048,)}
    keep = {"a.weight": 0.2, "b.weight": 0.6}
    k, n_seeds = 64, 150
    est, exact, norm = _errors(kind, k, x, y, range(n_seeds), keep=keep, shapes=shapes, small_numel=1)
    se = float(est.std()) / math.sqrt(n_seeds)
    assert abs(float(est.mean()) - exact) < 4 * se
    q = torch.cat([torch.full((2048,), 0.2), torch.full((2048,), 0.6)]).double()
    extra = float((x ** 2 * y ** 2 * (1 / q - 1)).sum())  # variance added by the sparsifier
    rms = float(((est - exact) ** 2).mean().sqrt())
    assert rms < 1.25 * math.sqrt(2 * norm ** 2 / k + extra)


def test_uniform_keep_on_heavy_tailed_vectors_is_much_worse_than_keep_one():
    """Documented finding: a uniform keep mask adds the variance sum_i x_i^2 y_i^2 (1/q - 1), which
    dominates the JL variance ~2 |x|^2 |y|^2 / k when the mass sits on few coordinates (here 163 of
    81920 coordinates hold 98% of it); per-tensor calibration puts the budget where the mass is."""
    gen = torch.Generator().manual_seed(7)
    x, y = _heavy_pair(gen, d=16384)  # the spiky tensor
    light = torch.randn(2, 65536, generator=gen, dtype=torch.float64) * math.sqrt(0.02 / 65536)
    x, y = torch.cat([light[0], x]), torch.cat([light[1], y])
    shapes = {"light.weight": (256, 256), "spiky.weight": (128, 128)}
    k, seeds = 256, range(80)

    def rms(keep):
        est, exact, norm = _errors("sjlt", k, x, y, seeds, keep=keep, shapes=shapes)
        return float(((est - exact) ** 2).mean().sqrt()) / norm

    full = rms(1.0)
    assert rms(0.05) > 2.5 * full
    calib = [{"light.weight": light[0].float().view(256, 256), "spiky.weight": x[65536:].float().view(128, 128)}]
    q = calibrate_keep(calib, shapes, budget=0.25)
    assert q["spiky.weight"] == 1.0 and q["light.weight"] == pytest.approx(0.0625, rel=1e-6)
    calibrated = rms(q)
    assert calibrated < 1.3 * full
    assert rms(0.25) > 1.5 * calibrated  # a uniform mask with the same budget


# ------------------------------------------------------------------------------- keep probabilities
def test_small_tensors_are_kept_whole_and_floors_apply():
    shapes = {"ln.weight": (576,), "bias": (64,), "big.weight": (256, 256), "mid.weight": (200, 100)}
    q = resolve_keep(shapes, 0.001)
    assert q["ln.weight"] == 1.0 and q["bias"] == 1.0
    assert q["big.weight"] == 0.001
    assert q["mid.weight"] == pytest.approx(64 / 20000)  # at least MIN_KEPT coordinates expected
    p = make_projector("sjlt", 16, 0, shapes, keep=0.001)
    assert p.keep_probs["ln.weight"] == 1.0 and p.keep_probs["bias"] == 1.0
    assert p.keep_probs["big.weight"] == pytest.approx(0.001, rel=1e-6)
    with pytest.raises(ConfigError):
        make_projector("sjlt", 16, 0, shapes, keep={"ln.weight": 0.5})  # does not name every tensor
    with pytest.raises(ConfigError):
        make_projector("sjlt", 16, 0, shapes, keep=0.0)


def test_calibrate_keep_is_proportional_to_energy_per_coordinate_and_meets_budget():
    shapes = {"a": (100, 100), "b": (100, 100), "c": (200, 100), "small": (10,)}
    gen = torch.Generator().manual_seed(8)
    scale = {"a": 1.0, "b": 2.0, "c": 0.5, "small": 1.0}
    calib = [{n: torch.randn(*sh, generator=gen) * scale[n] for n, sh in shapes.items()} for _ in range(3)]
    q = calibrate_keep(calib, shapes, budget=0.1, small_numel=100)
    assert q["small"] == 1.0
    d = sum(math.prod(s) for s in shapes.values())
    assert sum(q[n] * math.prod(shapes[n]) for n in shapes) == pytest.approx(0.1 * d, rel=1e-6)
    assert q["b"] / q["a"] == pytest.approx(4.0, rel=0.1)  # rho ratio = scale^2 ratio
    assert q["a"] / q["c"] == pytest.approx(4.0, rel=0.1)
    batched = [{n: torch.stack([g[n] for g in calib]) for n in shapes}]
    assert calibrate_keep(batched, shapes, budget=0.1, batched=True, small_numel=100) == pytest.approx(q)
    assert all(v == 1.0 for v in calibrate_keep(calib, shapes, budget=1.0, small_numel=100).values())


# ------------------------------------------------------------------------------ API and validation
def test_select_params_and_param_shapes_of():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.q_proj.lora_A.weight", "model.norm.weight", "lm_head.weight"]
    assert select_params(names, exclude=["*embed_tokens*", "lm_head*"]) == names[1:4]
    assert select_params(names, include="*lora*") == [names[2]]
    assert select_params(names, include=["*q_proj*"], exclude="*lora*") == [names[1]]
    assert select_params(names) == names
    mod = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    mod[1].bias.requires_grad_(False)
    assert param_shapes_of(mod) == {"0.weight": (4, 3), "0.bias": (4,), "1.weight": (4,)}
    assert param_shapes_of(mod, exclude="*bias") == {"0.weight": (4, 3), "1.weight": (4,)}


def test_validation_and_missing_tensors_count_as_zero():
    p = make_projector("sjlt", 16, 0, SHAPES)
    assert isinstance(p, Projector)
    gen = torch.Generator().manual_seed(9)
    grads = _grads(SHAPES, gen)
    partial = {n: g for n, g in grads.items() if n != "c.weight"}
    assert torch.equal(p.project(partial), p.project({**partial, "c.weight": torch.zeros(3, 43)}))
    with pytest.raises(ValueError, match="does not cover"):
        p.project({**grads, "extra": torch.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        p.project({**grads, "b.bias": torch.zeros(6)})
    with pytest.raises(ValueError, match="batch sizes"):
        p.project_batch({"a.weight": torch.zeros(2, 7, 13), "b.bias": torch.zeros(3, 5)})
    with pytest.raises(ValueError):
        p.project({})
    for bad in [dict(kind="fourier"), dict(k=0), dict(s=3), dict(kind="gaussian", s=2), dict(block_size=100)]:
        args = dict(kind="sjlt", k=16, seed=0, param_shapes=SHAPES) | bad
        with pytest.raises(ConfigError):
            make_projector(**args)
    spec = make_projector("sjlt", 16, 0, SHAPES, s=2).spec()
    assert spec["kind"] == "sjlt" and spec["s"] == 2 and spec["dim"] == p.dim


def test_naive_sjlt_baseline_is_a_count_sketch():
    d, k = 1000, 32
    nv = naive_sjlt(d, k, 0)
    x = torch.randn(d, generator=torch.Generator().manual_seed(10))
    expected = torch.zeros(k, dtype=torch.float64)
    for i in range(d):
        expected[nv.row[i]] += float(nv.sign[i]) * float(x[i])
    assert torch.allclose(nv.project(x).double(), expected, atol=1e-4)
    assert set(nv.sign.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind):
    gen = torch.Generator().manual_seed(11)
    p = make_projector(kind, 64, 1, SHAPES, keep=0.5, block_size=64, small_numel=1, min_kept=1)
    batch = _grads(SHAPES, gen, batch=3)
    cpu = p.project_batch(batch)
    gpu = p.project_batch({n: g.cuda() for n, g in batch.items()}).cpu()
    assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-4)
    c = torch.tensor([0, 2**31 + 1, 2**40 + 3], dtype=torch.int64)
    assert torch.equal(hash64(123, c), hash64(123, c.cuda()).cpu())
