"""cropi_harvest (cropi.selection.harvest): each trained prompt's projected gradient read from the update's own
backward, against one backward per prompt with its gradient formed and then projected; the choice of the next
prompts against the ranking written out; a short run end to end."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from cropi.scores.ranking import cosine_scores
from cropi.selection import make_batch_builder
from cropi.selection.batch import Group
from cropi.selection.harvest import HARVEST, HarvestedInfluence
from cropi.training.grpo import grpo_update, make_optimizer, plain_batch, row_runs
from tests.conftest import batch_rule_config
from tests.popi_helpers import formed_group_gradient


def _cfg(**extra):
    return batch_rule_config("cropi_harvest", "cropi_harvest", **{"select.score.max_val_prompts": 4, **extra})


def test_row_runs_groups_consecutive_rows_of_one_owner():
    assert row_runs([3, 3, 4, 4, 4]) == ([2, 3], 3)
    assert row_runs([0]) == ([1], 0)
    with pytest.raises(ValueError):
        row_runs([0, 2])


@pytest.mark.parametrize("micro_batch", [16, 6])  # 6: groups of 4 straddle the micro-batches
def test_the_harvest_is_each_trained_groups_gradient_projected_from_the_updates_own_backward(tiny, suite, micro_batch):
    import copy

    cfg = _cfg(**{"train.micro_batch": micro_batch})
    policy = copy.copy(tiny)
    policy.model = copy.deepcopy(tiny.model)
    builder = make_batch_builder(cfg, suite.validation)
    assert isinstance(builder, HarvestedInfluence)
    batch = plain_batch(policy, suite.pool[:4], 0, cfg.train, cfg.rollout)
    assert any(g.mixed for g in batch.groups)
    references = [builder.sketch(policy).project(formed_group_gradient(policy.model, g)) for g in batch.groups]
    seen = {}

    class Spy:
        hooks = builder.hooks

        def harvested(self, policy, step, batch, projected):
            seen["projected"] = projected.clone()

    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    grpo_update(policy, make_optimizer(policy.model, cfg.train), batch, 0, cfg.train, cfg.rollout, harvester=Spy())
    got = seen["projected"]
    assert got.shape == (4, builder.sketch(policy).k)
    for row, ref in zip(got, references):
        scale = max(float(ref.norm()), 1e-8)
        assert float((row - ref).norm()) / scale < 1e-4 or float(ref.norm()) == float(row.norm()) == 0.0
    # the update itself still happened: harvesting only reads the backward
    assert any(not torch.equal(before[n], p) for n, p in policy.model.named_parameters())


def test_the_update_is_the_same_with_and_without_the_harvest(tiny, suite):
    import copy

    cfg = _cfg()
    batch = plain_batch(tiny, suite.pool[:4], 0, cfg.train, cfg.rollout)
    weights = []
    for harvest in (False, True):
        policy = copy.copy(tiny)
        policy.model = copy.deepcopy(tiny.model)
        builder = make_batch_builder(cfg, suite.validation)
        builder._means = {"add": torch.ones(builder.sketch(policy).k)}
        grpo_update(policy, make_optimizer(policy.model, cfg.train), batch, 0, cfg.train, cfg.rollout,
                    harvester=builder if harvest else None)
        weights.append({n: p.detach().clone() for n, p in policy.model.named_parameters()})
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def _slow_fused_top(scores: dict[str, dict[str, float]], n: int) -> list[str]:
    """Reciprocal-rank fusion by its definition: each set's top n, F = Σ_v 1/rank_v, ties by best rank, then id;
    the top n by F."""
    fused, best = {}, {}
    for per in scores.values():
        for r, pid in enumerate(sorted(per, key=lambda i: (-per[i], i))[:n], 1):
            fused[pid] = fused.get(pid, 0.0) + 1 / r
            best[pid] = min(best.get(pid, r), r)
    return sorted(fused, key=lambda i: (-fused[i], best[i], i))[:n]


@pytest.mark.parametrize("top", [1.0, 0.25])
def test_the_next_prompts_are_the_ready_harvested_ones_in_fused_order_then_the_stream(suite, top):
    cfg = _cfg(**{"train.filter.harvest_share": 0.5, "train.filter.harvest_gap": 5,
                  "train.filter.harvest_max_age": 50, "train.filter.harvest_top": top})
    pool = suite.pool
    rule = HarvestedInfluence(cfg, suite.validation)
    gen = torch.Generator().manual_seed(0)
    step = 60
    extra = {HARVEST: {}}
    ages = {}
    for i, p in enumerate(pool[:30]):
        age = int(torch.randint(0, 70, (), generator=gen))
        ages[p.id] = age
        extra[HARVEST][p.id] = [step - age, {"add": float(torch.randn((), generator=gen)),
                                             "sub": float(torch.randn((), generator=gen))}]
    extra = json.loads(json.dumps(extra))  # the state survives a checkpoint as JSON
    held = {pid: v for pid, (s, v) in extra[HARVEST].items() if step - s <= 50}
    n = math.ceil(top * len(held))
    best = _slow_fused_top({v: {p: vals[v] for p, vals in held.items()} for v in ("add", "sub")}, n)
    want = [p for p in best if step - extra[HARVEST][p][0] >= 5]  # in the top, and trained long enough ago
    assert len(want) >= 4 and rule.ranked(pool, step, extra) == want
    assert all(ages[p] <= 50 for p in extra[HARVEST])  # older scores were forgotten
    chosen, _ = rule.candidates(pool, step, extra, 8)
    assert [p.id for p in chosen[:4]] == want[:4]  # half the generation batch from the ranking
    assert len(chosen) == len({p.id for p in chosen}) <= 8
    assert extra["cursor"] == 4  # the other half from the stream
    again, _ = rule.candidates(pool, step, extra, 8)
    assert not {p.id for p in again} & {p.id for p in chosen}  # never a prompt twice in one step
    # a prompt whose group comes back with equal rewards loses its score
    rule.observe([Group(chosen[0], [], [1.0, 1.0])], extra)
    assert chosen[0].id not in extra[HARVEST]


def test_harvested_scores_are_the_cosines_of_the_mixed_groups_to_each_validation_mean(suite):
    cfg = _cfg()
    rule = HarvestedInfluence(cfg, suite.validation)
    means = {"add": torch.randn(6), "sub": torch.randn(6)}
    rule._means, rule._extra = means, {HARVEST: {"old": [0, {"add": 1.0}]}}
    groups = [Group(p, [], r) for p, r in zip(suite.pool[:3], ([0.0, 1.0], [1.0, 1.0], [0.0, 1.0]))]
    rule._extra[HARVEST][suite.pool[1].id] = [0, {"add": 0.5}]
    projected = torch.randn(3, 6)

    class B:
        pass

    batch = B()
    batch.groups = groups
    rule.harvested(None, 7, batch, projected)
    h = rule._extra[HARVEST]
    assert suite.pool[1].id not in h  # equal rewards: no gradient, no score
    for i in (0, 2):
        step, scores = h[suite.pool[i].id]
        assert step == 7
        for v, m in means.items():
            assert scores[v] == pytest.approx(float(cosine_scores(projected[i:i + 1], m)[0]), rel=1e-6)
    assert "old" in h


def test_a_harvest_run_trains_replays_by_influence_and_keeps_its_trained_groups(tmp_path):
    from cropi.runs.run import run_training

    cfg = _cfg(**{"train.steps": 4, "train.filter.harvest_gap": 1, "train.filter.harvest_share": 0.75})
    summary = run_training(cfg, tmp_path / "run")
    assert summary["filter"] == "cropi_harvest" and summary["steps"] == 4
    trained = {}
    for step in range(4):
        t = pq.read_table(tmp_path / "run" / "trained" / f"step-{step:05d}.parquet")
        trained[step] = set(t.column("prompt_id").to_pylist())
        assert t.num_rows == 16  # the trainer's rollouts are behaviour rows: 4 groups of 4
    replayed = [p for s in range(1, 4) for p in trained[s] if any(p in trained[r] for r in range(s))]
    assert replayed  # harvested prompts were drawn again
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000004" / "checkpoint.json").read_text())
    harvest = state["state"]["extra"][HARVEST] if "state" in state else state["extra"][HARVEST]
    assert harvest and set(harvest) <= set().union(*trained.values())
    assert summary["seconds_by_kind"]["scoring"] > 0  # the validation groups and their means are charged


def test_family_weights_follow_the_running_family_means_fused_across_sets(suite):
    cfg = _cfg(**{"train.filter.harvest_family_decay": 0.5})
    rule = HarvestedInfluence(cfg, suite.validation)
    rule._means = {"add": torch.tensor([1.0, 0.0]), "sub": torch.tensor([0.0, 1.0])}
    rule._extra = {}
    by_family = {}
    for p in suite.pool:
        by_family.setdefault(p.family, p)
    fams = sorted(by_family)[:3]
    # family 0 aligned with both sets, family 1 with add only, family 2 with neither
    rows = torch.tensor([[1.0, 1.0], [1.0, -0.2], [-1.0, -1.0]])

    class B:
        groups = [Group(by_family[f], [], [0.0, 1.0]) for f in fams]

    rule.harvested(None, 3, B(), rows)
    running = rule._extra["harvest_families"]
    assert running[fams[0]]["add"] == pytest.approx(float(cosine_scores(rows[:1], rule._means["add"])[0]))
    weights = rule._family_weights(rule._extra)
    assert weights == {fams[0]: 1.0, fams[1]: 0.5, fams[2]: 0.25}
    assert rule.keep(by_family[fams[1]], rule._extra) == 0.5  # no GRESO history: its weight alone
    rule.harvested(None, 4, B(), -rows)  # the running mean moves by 0.1 of the new step's mean
    assert running[fams[0]]["add"] == pytest.approx(0.9 * 2 ** -0.5 - 0.1 * 2 ** -0.5)


def test_the_rule_needs_validation_sets_and_hooks_need_their_rows(tiny, suite):
    from cropi.errors import ConfigError
    from cropi.projection.factored import SketchHooks

    with pytest.raises(ConfigError, match="cropi_harvest needs validation sets"):
        make_batch_builder(_cfg(), {})
    rule = make_batch_builder(_cfg(), suite.validation)
    ids = torch.tensor([[3, 4, 5]])
    with SketchHooks(rule.sketch(tiny), tiny.model, 1):
        with pytest.raises(RuntimeError, match="rows must name the examples"):
            tiny.model(input_ids=ids)
    hooks = SketchHooks(rule.sketch(tiny), tiny.model, 2)
    with pytest.raises(ValueError, match="outside the 2"):
        hooks.rows([1, 1], first=1)


def test_a_resumed_harvest_run_finishes_with_its_scores_and_family_means_restored(tmp_path):
    """The harvested scores, family means and GRESO's state are checkpointed; the validation target is recomputed
    with the resumed policy (the module says so), so the resumed run is not compared bit for bit."""
    from cropi.runs.run import run_training
    from cropi.training import checkpoint

    sets = {"train.steps": 4, "train.filter.harvest_gap": 1}
    part = _cfg(**sets)
    part.train.steps = 2
    run_training(part, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-0000002" / "checkpoint.json").read_text())
    extra = saved["state"]["extra"] if "state" in saved else saved["extra"]
    assert extra[HARVEST] and extra["harvest_families"] and "greso_history" in extra
    (tmp_path / "run" / "config.yaml").unlink()  # the budget changed; the rest is identical
    summary = run_training(_cfg(**sets), tmp_path / "run", resume=True)
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").name == "step-0000004"


def test_a_generation_batch_filled_by_the_ranking_takes_nothing_from_the_stream(suite):
    cfg = _cfg(**{"train.filter.harvest_share": 1.0, "train.filter.harvest_gap": 1,
                  "train.filter.harvest_top": 1.0})
    rule = HarvestedInfluence(cfg, suite.validation)
    extra = {HARVEST: {p.id: [0, {"add": float(i)}] for i, p in enumerate(suite.pool[:10])}}
    chosen, skipped = rule.candidates(suite.pool, 5, extra, 4)
    assert len(chosen) == 4 and skipped == 0 and extra.get("cursor", 0) == 0  # the stream was not swept


def test_a_target_without_mixed_validation_groups_keeps_the_previous_means(tiny, suite, monkeypatch, caplog):
    import cropi.selection.harvest as harvest

    rule = make_batch_builder(_cfg(), suite.validation)
    old = {"add": torch.ones(3)}
    rule._means, rule._means_step, rule._val_groups, rule._val_step = old, 0, {"add": []}, 0

    def no_mixed(estimator, groups):
        raise harvest.CropiError("no validation set (add) has a prompt with mixed rewards")

    monkeypatch.setattr(harvest, "group_means", no_mixed)
    with caplog.at_level("WARNING", logger="cropi"):
        assert rule.validation_means(tiny, 25) is old
    assert "previous validation means stay in force" in caplog.text and rule._means_step == 25
