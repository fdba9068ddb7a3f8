"""End-to-end scoring on the micro model: stores -> POPI -> (projection | exact means) -> cosine -> RRF."""

import math
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch

from cropi.config import RunConfig, ScoreConfig
from cropi.errors import CropiError
from cropi.rollouts.trajectory_store import CollectConfig, collect, prompt_groups, read_store
from cropi.scores.engine import project_pool_range, score_pool
from cropi.scores.gradient_store import read_gradient_store
from cropi.tasks.problem import Problem
from tests.popi_helpers import prompt_gradients


def _problems(prefix, n):
    # single-token answers so a random micro policy gets mixed reward groups
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


def _cfg(ratio=0.25, **score) -> RunConfig:
    cfg = RunConfig()
    cfg.select.ratio = ratio
    cfg.select.score = ScoreConfig(**score)
    return cfg


@pytest.fixture()
def stores(micro_policy, tmp_path):
    cfg = CollectConfig(group_size=32, max_new_tokens=1, chunk_size=8, temperature=3.0)
    pool = collect(micro_policy, _problems("p", 16), tmp_path / "pool", cfg)
    val = collect(micro_policy, _problems("v", 8), tmp_path / "val", cfg)
    return pool, val


def _reference_cosines(policy, pool, val) -> dict[str, float]:
    """cos(g_x, mean_v g_v) in pure Python floats over the flattened full gradients (no torch reductions)."""
    def flat(store):
        return {g.prompt_id: [float(x) for t in g.grads.values() for x in t.flatten().tolist()]
                for g in prompt_gradients(policy.model, prompt_groups(read_store(store).to_pylist()), policy.pad_token_id)}
    vg = list(flat(val).values())
    mean = [sum(col) / len(vg) for col in zip(*vg)]
    norm_m = math.sqrt(sum(x * x for x in mean))
    out = {}
    for pid, g in flat(pool).items():
        dot = sum(a * b for a, b in zip(g, mean))
        out[pid] = dot / (math.sqrt(sum(a * a for a in g)) * norm_m)
    return out


def test_exact_mode_equals_the_pure_python_cosines_and_projected_mode_is_within_jl_noise(micro_policy, stores, tmp_path):
    pool, val = stores
    ref = _reference_cosines(micro_policy, pool, val)
    exact = score_pool(micro_policy, pool, {"count": val}, tmp_path / "exact.parquet", _cfg(mode="exact"))
    projected = score_pool(micro_policy, pool, {"count": val}, tmp_path / "proj.parquet", _cfg(k=8192, mode="projected"))
    assert exact.mode == "exact" and projected.mode == "projected"
    assert pq.read_table(tmp_path / "exact.parquet").schema.metadata[b"cropi"].find(b'"mode": "exact"') >= 0
    rows = {r["prompt_id"]: r for r in exact.table.to_pylist()}
    assert set(ref) == {p for p, r in rows.items() if r["usable"]} and len(ref) >= 4
    for pid, c in ref.items():
        assert abs(rows[pid]["score_count"] - c) < 1e-6, pid
    # projection noise in a cosine is about 1/sqrt(k) = 0.011 at k = 8192: 4 sigma
    for r in projected.table.to_pylist():
        if r["usable"]:
            assert abs(r["score_count"] - ref[r["prompt_id"]]) < 4 / math.sqrt(8192), r["prompt_id"]
    # the fused ranking is the exact top 4 (ratio 0.25 of 16 rows) by the reference cosine
    assert exact.ranking.ids == sorted(ref, key=lambda p: (-ref[p], p))[:4]
    assert [r["fused_rank"] for r in exact.table.to_pylist() if r["prompt_id"] == exact.ranking.ids[0]] == [1]


def _explicit_popi_gradients(model, store) -> dict[str, torch.Tensor]:
    """g_x of each prompt with mixed rewards, from the POPI loss written out in full: responses of equal length
    share a forward pass (so nothing is padded); per token, ρ = exp(log π_θ − log β) at the store's temperature;
    A_i = (r_i − mean r) / (unbiased std r + 1e-4); L = −(1/G) Σ_i (1/T_i) Σ_t ρ_it A_i; one backward pass per
    prompt, flattened (fp64)."""
    by_prompt: dict[str, list[dict]] = {}
    for row in read_store(store).to_pylist():
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    params = [p for _, p in model.named_parameters()]
    out = {}
    for pid, rows in by_prompt.items():
        rewards = [r["reward"] for r in rows]
        g = len(rows)
        mu = sum(rewards) / g
        sd = math.sqrt(sum((r - mu) ** 2 for r in rewards) / (g - 1))
        if sd == 0:
            continue
        same_length: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            same_length.setdefault(len(r["response_ids"]), []).append(i)
        logits_of = {}
        for idx in same_length.values():
            seqs = torch.tensor([list(rows[i]["prompt_ids"]) + list(rows[i]["response_ids"]) for i in idx])
            logits_of.update(zip(idx, model(input_ids=seqs).logits / rows[idx[0]]["temperature"]))
        loss = 0.0
        for i, r in enumerate(rows):
            prompt, resp, logits = list(r["prompt_ids"]), list(r["response_ids"]), logits_of[i]
            per_seq = 0.0
            for t, (tok, b) in enumerate(zip(resp, r["behavior_logprobs"])):
                lp = torch.log_softmax(logits[len(prompt) + t - 1], -1)[tok]
                per_seq = per_seq + torch.exp(lp - b) * ((r["reward"] - mu) / (sd + 1e-4))
            loss = loss - per_seq / len(resp) / g
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[pid] = torch.cat([(gr if gr is not None else torch.zeros_like(p)).reshape(-1).double()
                              for gr, p in zip(grads, params)])
    return out


def test_off_policy_exact_scores_and_fusion_equal_an_explicit_reference(micro_policy, tmp_path):
    """Stores sampled by β, scored by a θ ≠ β: each score_<set> is cos(g_x, mean over the set's usable prompts of
    g_v) with g from the written-out loss, and fused_rank is the reciprocal-rank fusion of those cosines."""
    def problems(prefix, n):  # graded by the last number of the response, so 3-token responses of a random
        # policy still give mixed groups
        return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", "169"[i % 3], "math", "user")
                for i in range(n)]

    cfg = CollectConfig(group_size=16, max_new_tokens=3, chunk_size=8, temperature=3.0)
    pool = collect(micro_policy, problems("p", 16), tmp_path / "pool", cfg)
    vals = {"a": collect(micro_policy, problems("va", 6), tmp_path / "va", cfg),
            "b": collect(micro_policy, problems("vb", 6)[::-1], tmp_path / "vb", replace(cfg, seed=5))}
    torch.manual_seed(11)
    with torch.no_grad():
        for p in micro_policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = score_pool(micro_policy, pool, vals, tmp_path / "s.parquet", _cfg(mode="exact"))
    rows = {r["prompt_id"]: r for r in got.table.to_pylist()}
    model = micro_policy.model
    pool_g = _explicit_popi_gradients(model, pool)
    assert set(pool_g) == {p for p, r in rows.items() if r["usable"]} and len(pool_g) >= 6
    assert all(rows[p]["max_abs_log_ratio"] > 1e-2 and rows[p]["ess"] < 1 for p in pool_g)  # off-policy indeed
    for p, g in pool_g.items():  # the cosines below do not see the advantages' scale; the norms do
        assert rows[p]["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5), p
    ref: dict[str, dict[str, float]] = {}
    for name, store in vals.items():
        val_g = list(_explicit_popi_gradients(model, store).values())
        assert val_g
        mean = torch.stack(val_g).mean(0)
        ref[name] = {p: float(g @ mean / (g.norm() * mean.norm())) for p, g in pool_g.items()}
        for p, c in ref[name].items():
            assert abs(rows[p][f"score_{name}"] - c) < 1e-5, (name, p, rows[p][f"score_{name}"], c)
    assert all(rows[p][f"score_{name}"] is None for name in vals for p in rows if not rows[p]["usable"])
    # reciprocal-rank fusion of the reference cosines: n = 0.25 · 16 = 4, each set's top 4, F = Σ 1/rank, ties
    # by the best single rank, then by id
    n = 4
    fused, best = {}, {}
    for scores in ref.values():
        for k, p in enumerate(sorted(scores, key=lambda q: (-scores[q], q))[:n], start=1):
            fused[p] = fused.get(p, 0.0) + 1 / k
            best[p] = min(best.get(p, k), k)
    expected = sorted(fused, key=lambda p: (-fused[p], best[p], p))[:n]
    assert got.ranking.ids == expected
    assert {p: r["fused_rank"] for p, r in rows.items() if r["fused_rank"] is not None} == {
        p: k for k, p in enumerate(expected, start=1)}
    # the two sets rank differently, so the fusion is more than either list
    assert sorted(ref["a"], key=lambda q: -ref["a"][q])[:n] != sorted(ref["b"], key=lambda q: -ref["b"][q])[:n]


def test_exact_mode_still_stores_projected_gradients_when_asked_and_shards_like_a_whole_run(micro_policy, stores,
                                                                                           tmp_path):
    pool, val = stores
    cfg = _cfg(mode="exact", k=64, chunk_size=4)
    whole = score_pool(micro_policy, pool, {"count": val}, tmp_path / "w.parquet", cfg, gradients=tmp_path / "g")
    assert not (tmp_path / "w.gradients").exists()
    stored = read_gradient_store(tmp_path / "g" / "pool")
    assert stored.vectors.shape == (sum(whole.table.column("usable").to_pylist()), 64)
    assert read_gradient_store(tmp_path / "g" / "val-count").vectors.shape[1] == 64
    for i in range(2):
        project_pool_range(micro_policy, pool, tmp_path / "s", cfg, shard=(i, 2), val_stores={"count": val})
    sharded = score_pool(micro_policy, pool, {"count": val}, tmp_path / "s.parquet", cfg, gradients=tmp_path / "s")
    assert whole.table.equals(sharded.table)


def test_auto_mode_picks_exact_only_when_the_means_fit(micro_policy, stores, tmp_path):
    pool, val = stores
    fits = score_pool(micro_policy, pool, {"count": val}, tmp_path / "a.parquet", _cfg(mode="auto", k=64))
    tight = score_pool(micro_policy, pool, {"count": val}, tmp_path / "b.parquet",
                       _cfg(mode="auto", k=64, exact_memory_gb=1e-9))
    assert fits.mode == "exact" and tight.mode == "projected"


def test_scoring_differentiates_the_trainers_aggregation(micro_policy, stores, tmp_path):
    pool, val = stores
    grpo = score_pool(micro_policy, pool, {"count": val}, tmp_path / "a.parquet", _cfg(mode="exact"))
    cfg = _cfg(mode="exact")
    cfg.train.aggregation = "dr_grpo"
    dr = score_pool(micro_policy, pool, {"count": val}, tmp_path / "b.parquet", cfg)
    # with one-token responses every sequence has T_i = 1 = max_len only when max_new_tokens is 1: compare
    # against the reference computed with the same loss instead
    ref = {g.prompt_id: g for g in prompt_gradients(micro_policy.model, prompt_groups(read_store(pool).to_pylist()),
                                                    micro_policy.pad_token_id, aggregation="dr_grpo",
                                                    max_len=cfg.rollout.max_new_tokens)}
    norms = {r["prompt_id"]: r["grad_norm"] for r in dr.table.to_pylist() if r["usable"]}
    for pid, g in ref.items():
        exact = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g.grads.values()))
        assert norms[pid] == pytest.approx(exact, rel=1e-6)
    gn = {r["prompt_id"]: r["grad_norm"] for r in grpo.table.to_pylist() if r["usable"]}
    # dr_grpo divides by max_len (10) instead of the response length (1): the gradient is 10x smaller
    assert all(gn[p] == pytest.approx(10 * norms[p], rel=1e-5) for p in norms)
    assert dr.meta["loss"]["aggregation"] == "dr_grpo" and grpo.meta["loss"]["aggregation"] == "grpo"


def test_validation_without_gradient_is_a_clear_error(micro_policy, tmp_path):
    cfg = CollectConfig(group_size=2, max_new_tokens=1, chunk_size=8)
    pool = collect(micro_policy, _problems("p", 4), tmp_path / "pool", cfg)
    impossible = [Problem("v0", "1+1=", "999999", "add")]
    val = collect(micro_policy, impossible, tmp_path / "val", cfg)
    for mode in ("projected", "exact"):
        with pytest.raises(CropiError, match="no usable gradient"):
            score_pool(micro_policy, pool, {"add": val}, tmp_path / "s.parquet", _cfg(mode=mode))
        assert not (tmp_path / "s.parquet").exists()
    with pytest.raises(CropiError, match="no trajectory store"):
        score_pool(micro_policy, tmp_path / "missing", {"add": val}, tmp_path / "s.parquet", _cfg())


def test_overlay_rows_replace_the_pools_rows_with_their_own_scores(micro_policy, stores, tmp_path):
    pool, val = stores
    cfg = CollectConfig(group_size=32, max_new_tokens=1, chunk_size=8, temperature=3.0, seed=7)
    overlay = collect(micro_policy, _problems("p", 16)[::3], tmp_path / "overlay", cfg)  # re-sampled pool prompts
    run = _cfg(k=256, mode="projected")
    alone = {r["prompt_id"]: r for r in score_pool(micro_policy, pool, {"count": val}, tmp_path / "a.parquet",
                                                   run).table.to_pylist()}
    over = {r["prompt_id"]: r for r in score_pool(micro_policy, overlay, {"count": val}, tmp_path / "o.parquet",
                                                  run).table.to_pylist()}
    both = score_pool(micro_policy, pool, {"count": val}, tmp_path / "b.parquet", run, overlays=[overlay])
    rows = both.table.to_pylist()
    assert [r["prompt_id"] for r in rows] == list(alone)
    for r in rows:
        src = over[r["prompt_id"]] if r["reprobed"] else alone[r["prompt_id"]]
        assert r["reprobed"] == bool(over.get(r["prompt_id"], {}).get("usable"))
        for key in ("usable", "ess", "grad_norm", "score_count"):
            assert r[key] == src[key], (r["prompt_id"], key)
    assert any(r["reprobed"] for r in rows) and both.ranking.ids == sorted(
        (p for p, r in zip([r["prompt_id"] for r in rows], rows) if r["usable"]),
        key=lambda p: (-next(x["score_count"] for x in rows if x["prompt_id"] == p), p))[:4]


def test_the_acg_setting_reaches_the_estimator_and_the_stores(micro_policy, stores, tmp_path):
    from cropi.config import load_config
    from cropi.scores.engine import make_score_estimator

    assert make_score_estimator(micro_policy, load_config(None, [])).acg is False
    cfg = load_config(None, ["select.score.acg=true", "select.score.mode=exact", "select.ratio=0.25"])
    assert make_score_estimator(micro_policy, cfg).acg is True
    pool, val = stores
    out = score_pool(micro_policy, pool, {"count": val}, tmp_path / "s.parquet", cfg, gradients=tmp_path / "g")
    assert out.meta["score_config"]["acg"] is True
    assert read_gradient_store(tmp_path / "g" / "pool").meta["popi"]["acg"] is True


@pytest.mark.parametrize("mode", ["exact", "projected"])
def test_factored_batched_scoring_equals_the_per_prompt_pure_python_cosines(micro_policy, stores, tmp_path, mode):
    """Linear weights kept factored, four prompts per backward: exact scores and norms never form the linear
    gradients, and equal the slow reference; projected scores form them only to project."""
    pool, val = stores
    ref = _reference_cosines(micro_policy, pool, val)
    res = score_pool(micro_policy, pool, {"count": val}, tmp_path / "f.parquet",
                     _cfg(mode=mode, k=8192, factored=True, batch_size=4))
    rows = {r["prompt_id"]: r for r in res.table.to_pylist() if r["usable"]}
    assert set(rows) == set(ref)
    tol = 2e-6 if mode == "exact" else 4 / math.sqrt(8192)
    for pid, c in ref.items():
        assert abs(rows[pid]["score_count"] - c) < tol, (pid, rows[pid]["score_count"], c)
    if mode == "exact":
        assert res.ranking.ids == sorted(ref, key=lambda p: (-ref[p], p))[:4]
