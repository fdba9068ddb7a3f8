"""The factored projection computed inside the backward pass (projection.factored.FactoredSJLT.sketch_batch) and the
shared-prompt forward it runs on (objective.grouped_response_logprobs), against slow references: the packed forward,
one backward per prompt with its gradient formed and then projected, and pure-Python cosines."""

from __future__ import annotations

import math
import random

import pytest
import torch

from cropi.config import RunConfig, ScoreConfig
from cropi.gradients import popi
from cropi.gradients.popi import PopiEstimator, popi_loss
from cropi.objective import SharedPromptUnsupported
from cropi.projection import param_shapes_of
from cropi.projection.factored import FactoredSJLT, SketchingPopiEstimator
from cropi.rollouts.trajectory_store import PromptGroup, collect, CollectConfig, prompt_groups, read_store
from cropi.scores.engine import make_score_estimator, make_score_projector, score_pool
from cropi.scores.in_memory import flat_gradients
from cropi.tasks.problem import Problem


def _groups(vocab: int, sizes=(3, 5, 2), seed=0) -> list[PromptGroup]:
    """Prompt groups of unequal prompt lengths, response lengths and group sizes, with mixed rewards."""
    rng = random.Random(seed)
    out = []
    for i, g in enumerate(sizes):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 7))]
        responses = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 4))] for _ in range(g)]
        out.append(PromptGroup(f"x{i}", prompt, responses, [[-rng.random() * 3 for _ in r] for r in responses],
                               [float(j % 2) for j in range(g)], 1.0))
    return out


def _vocab(policy) -> int:
    return policy.model.get_input_embeddings().num_embeddings


def test_running_each_prompt_once_gives_the_packed_losses_and_gradients(micro_policy):
    model, groups = micro_policy.model, _groups(_vocab(micro_policy))
    packed = popi_loss(model, groups, micro_policy.pad_token_id)
    shared = popi_loss(model, groups, micro_policy.pad_token_id, shared_prompt=True)
    torch.testing.assert_close(shared.losses, packed.losses, rtol=1e-5, atol=1e-6)
    assert shared.ess == pytest.approx(packed.ess, rel=1e-5)
    params = list(model.parameters())
    for b in range(len(groups)):
        ga = torch.autograd.grad(packed.losses[b], params, retain_graph=True)
        gb = torch.autograd.grad(shared.losses[b], params, retain_graph=True)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)


def test_a_model_whose_cache_cannot_be_shared_falls_back_to_the_packed_forward(micro_policy, monkeypatch):
    import cropi.objective as objective

    def refuse(cache, counts):
        raise SharedPromptUnsupported("test cache")

    monkeypatch.setattr(objective, "repeat_cache", refuse)
    monkeypatch.setattr(popi, "_SHARED_UNSUPPORTED", {})
    groups = _groups(_vocab(micro_policy))
    packed = popi_loss(micro_policy.model, groups, micro_policy.pad_token_id)
    shared = popi_loss(micro_policy.model, groups, micro_policy.pad_token_id, shared_prompt=True)
    assert torch.equal(shared.losses, packed.losses)
    assert popi._SHARED_UNSUPPORTED == {type(micro_policy.model): "test cache"}


@pytest.mark.parametrize("exclude", [[], ["*embed_tokens*"], "top block only"])
def test_the_sketch_inside_the_backward_equals_each_prompts_formed_gradient_projected(micro_policy, exclude):
    """Every kind of parameter: linear weights, the embedding tied to the head (one-hot and linear calls), norms;
    unequal group sizes (rows summed per example) and the prompt call's one row per example; and a model whose
    embedding is frozen (only the top block trains), where the backward runs to the parameters instead."""
    import copy

    from cropi.policy import train_top_blocks

    if exclude == "top block only":
        micro_policy = copy.copy(micro_policy)
        micro_policy.model = copy.deepcopy(micro_policy.model)
        train_top_blocks(micro_policy.model, 1)
        exclude = []
    model = micro_policy.model
    shapes = param_shapes_of(model, exclude=exclude or None)
    sketch = FactoredSJLT(shapes, 4, 3, seed=5)
    groups = _groups(_vocab(micro_policy))
    got = SketchingPopiEstimator(model, micro_policy.pad_token_id, sketch, batch_size=8)
    batches = list(got.gradients(groups).batches)
    assert len(batches) == 1 and batches[0].projector_spec == sketch.spec()
    slow = PopiEstimator(model, micro_policy.pad_token_id, param_names=list(shapes))
    ref = torch.cat([sketch.project_batch(b.grads) for b in slow.gradients(groups).batches])
    torch.testing.assert_close(batches[0].projected, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="projections only"):
        batches[0].whole()


def test_formed_gradients_project_to_P_G_Q_transposed_and_vectors_by_one_countsketch():
    sketch = FactoredSJLT({"w": (7, 5), "v": (9,)}, 3, 2, seed=1)
    g = torch.Generator().manual_seed(0)
    grads = {"w": torch.randn(2, 7, 5, generator=g), "v": torch.randn(2, 9, generator=g)}
    out = sketch.project_batch(grads)
    P, Q = sketch.dense("w")
    assert out.shape == (2, 3 * 2 + 6) and sketch.k == 12
    torch.testing.assert_close(out[:, :6], (P @ grads["w"] @ Q.T).reshape(2, -1))
    (bucket, sign), = sketch._maps["v"]
    dense_v = torch.zeros(6, 9)
    dense_v[bucket, torch.arange(9)] = sign
    torch.testing.assert_close(out[:, 6:], grads["v"] @ dense_v.T)


def _problems(prefix, n):
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


def test_scoring_with_the_factored_sketch_equals_the_slow_reference_cosines(micro_policy, tmp_path):
    cfg_c = CollectConfig(group_size=32, max_new_tokens=1, chunk_size=8, temperature=3.0)
    pool = collect(micro_policy, _problems("p", 16), tmp_path / "pool", cfg_c)
    val = collect(micro_policy, _problems("v", 8), tmp_path / "val", cfg_c)
    cfg = RunConfig()
    cfg.select.ratio = 0.25
    cfg.select.score = ScoreConfig(mode="projected", kind="factored-sjlt", factor_k=4, batch_size=4)
    res = score_pool(micro_policy, pool, {"count": val}, tmp_path / "s.parquet", cfg)
    assert res.meta["projector"]["kind"] == "factored-sjlt"
    sketch = make_score_projector(micro_policy, cfg.select.score)
    slow = PopiEstimator(micro_policy.model, micro_policy.pad_token_id, param_names=sketch.names)

    def projected(store):
        groups = prompt_groups(read_store(store).to_pylist())
        return {b.prompt_ids[0]: [float(x) for x in sketch.project_batch(b.grads)[0]]
                for b in slow.gradients(groups).batches}

    vrows = list(projected(val).values())
    mean = [sum(c) / len(vrows) for c in zip(*vrows)]  # the mean projected validation gradient
    ref = {pid: sum(a * b for a, b in zip(g, mean)) / math.sqrt(sum(a * a for a in g) * sum(b * b for b in mean))
           for pid, g in projected(pool).items()}
    rows = {r["prompt_id"]: r for r in res.table.to_pylist() if r["usable"]}
    assert set(rows) == set(ref) and len(ref) >= 4
    for pid, c in ref.items():
        assert abs(rows[pid]["score_count"] - c) < 1e-4, (pid, rows[pid]["score_count"], c)


def test_in_memory_rankings_read_the_sketch(micro_policy):
    cfg = RunConfig()
    cfg.select.score = ScoreConfig(mode="projected", kind="factored-sjlt", factor_k=4, batch_size=4)
    sketch = make_score_projector(micro_policy, cfg.select.score)
    est = make_score_estimator(micro_policy, cfg, sketch)
    assert isinstance(est, SketchingPopiEstimator)
    ids, rows = flat_gradients(est, _groups(_vocab(micro_policy)))
    assert ids == ["x0", "x1", "x2"] and rows.shape == (3, sketch.k)


def test_a_factored_batch_closes_early_at_its_memory_budget_with_the_same_gradients(micro_policy):
    from cropi.gradients.per_example import factor_sizes
    from cropi.gradients.popi import FactoredPopiEstimator

    model, groups = micro_policy.model, _groups(_vocab(micro_policy), sizes=(3, 3, 3, 3))
    names = [n for n, _ in model.named_parameters()]
    width, whole = factor_sizes(model, names)
    assert width > 0 and whole > 0  # the micro model has factored linears and a tied embedding formed whole
    one = 4 * (max(len(g.prompt_ids) for g in groups) + 3 * max(len(r) for g in groups for r in g.response_ids)) * width
    budget = 2.5 * (one + 4 * whole) / 2 ** 30  # room for two prompts of these sizes, not three
    small = FactoredPopiEstimator(model, micro_policy.pad_token_id, param_names=names, batch_size=8, memory_gb=budget)
    big = FactoredPopiEstimator(model, micro_policy.pad_token_id, param_names=names, batch_size=8)
    small_batches, big_batches = list(small.gradients(groups).batches), list(big.gradients(groups).batches)
    assert [len(b) for b in small_batches] == [2, 2] and [len(b) for b in big_batches] == [4]
    merged = {n: torch.cat([b.whole()[n] for b in small_batches]) for n in names}
    for n in names:
        torch.testing.assert_close(merged[n], big_batches[0].whole()[n], rtol=1e-4, atol=1e-6)
