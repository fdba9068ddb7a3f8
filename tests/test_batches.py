"""The per-batch rules (cropi.selection): equal-size updates, honest charging, GRESO's skip law, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cropi.selection import make_batch_builder
from cropi.selection.batch import Group, sample_groups, screen_observe, screen_take, stream_prompts
from cropi.selection.greso import Greso
from tests.conftest import batch_rule_config
from tests.popi_helpers import formed_group_gradient

RULES = ("none", "dapo", "greso", "online_filter", "online_influence", "cropi_harvest")


def _cfg(method="none", **extra):
    return batch_rule_config(method, **extra)


@pytest.fixture(scope="module")
def pool(suite):
    return suite.pool


@pytest.mark.parametrize("method", RULES)
def test_every_rule_trains_on_exactly_prompts_per_step_full_groups(tiny, suite, method):
    cfg, pool = _cfg(method), suite.pool
    builder, extra = make_batch_builder(cfg, suite.validation), {}
    for step in range(3):
        batch = builder.build(tiny, pool, step, extra)
        assert len(batch.groups) == 4 and all(len(g.gens) == len(g.rewards) == 4 for g in batch.groups)
        assert batch.sampled_sequences >= 16 and set(batch.seconds) == {"rollouts", "refills", "screening", "scoring"}
        assert batch.seconds["rollouts"] > 0 and min(batch.seconds.values()) >= 0
        if method == "none":  # plain GRPO trains on the stream's next prompts, whatever their rewards
            assert [g.problem.id for g in batch.groups] == [p.id for p in stream_prompts(pool, 4 * step, 4, 0)]
            assert not all(g.mixed for g in batch.groups) or step < 2  # some equal-reward group is kept
        else:
            # the tiny policy solves about half of the suite, so a few generation batches always fill the step
            assert all(g.mixed for g in batch.groups)
        json.dumps(extra)  # the rule's state is saved with every checkpoint as JSON


def test_dynamic_sampling_charges_every_dropped_group_as_refills(tiny, pool):
    batch = make_batch_builder(_cfg("dapo")).build(tiny, pool, 0, {})
    dropped = batch.sampled_sequences // 4 - len(batch.groups)
    assert dropped > 0 and batch.seconds["refills"] > 0
    # seconds split evenly over the drawn groups
    assert batch.seconds["refills"] / batch.seconds["rollouts"] == pytest.approx(dropped / len(batch.groups))


def test_a_screened_and_completed_group_is_the_group_plain_sampling_draws(tiny, pool):
    cfg = _cfg("online_filter")
    extra: dict = {}
    batch = make_batch_builder(cfg).build(tiny, pool, 0, extra)
    for grp in batch.groups[:2]:
        # the screening key of a group's generation batch: (seed, "train", step, draw)
        for draw in range(cfg.train.filter.max_num_gen_batches):
            plain = sample_groups(tiny, [grp.problem], (0, "train", 0, draw), range(4), cfg.rollout)[0]
            if [x.response_ids for x in plain.gens[:2]] == [x.response_ids for x in grp.gens[:2]]:
                break
        assert [x.response_ids for x in plain.gens] == [x.response_ids for x in grp.gens]
        assert plain.rewards == grp.rewards


def test_greso_skips_a_prompt_with_z_equal_reward_groups_at_rate_one_minus_p_to_the_z(pool):
    cfg = _cfg("greso")
    greso = Greso(cfg)
    for z, p in ((1, 0.5), (2, 0.5), (3, 0.8)):
        extra = {"greso_history": {q.id: ["hard", z] for q in pool}, "greso_p": {"easy": 0.5, "hard": p}}
        kept = skipped = 0
        for _ in range(20):
            out, k = greso.candidates(pool, 0, extra, 4)
            kept, skipped = kept + len(out), skipped + k
        assert kept / (kept + skipped) == pytest.approx(p ** z, abs=0.06)
    # prompts without history are never skipped
    out, k = greso.candidates(pool, 0, {}, 10)
    assert k == 0 and [q.id for q in out] == [q.id for q in stream_prompts(pool, 0, 10, 0)]


def test_the_screen_skip_screens_a_prompt_with_z_equal_reward_screens_at_rate_p_to_the_z(pool):
    for z, p in ((1, 0.5), (2, 0.5), (1, 0.2)):
        cfg = _cfg("online_influence", **{"train.filter.screen_skip_p": p})
        extra = {"screen_history": {q.id: z for q in pool}}
        kept = skipped = 0
        for _ in range(20):
            out, k = screen_take(pool, extra, 4, cfg)
            kept, skipped = kept + len(out), skipped + k
        assert kept / (kept + skipped) == pytest.approx(max(p ** z, 0.01), abs=0.06)
    # p = 1 (the default) and prompts without history: the plain stream, nothing recorded
    for cfg, extra in ((_cfg("online_filter"), {"screen_history": {q.id: 3 for q in pool}}),
                       (_cfg("online_filter", **{"train.filter.screen_skip_p": 0.5}), {})):
        out, k = screen_take(pool, extra, 10, cfg)
        assert k == 0 and [q.id for q in out] == [q.id for q in stream_prompts(pool, 0, 10, 0)]
    cfg, extra, q = _cfg("online_filter", **{"train.filter.screen_skip_p": 0.5}), {}, pool[0]
    for rewards, z in (([0, 0], 1), ([1, 1], 2), ([0, 1], None)):
        screen_observe([Group(q, [], rewards)], extra, cfg)
        assert extra["screen_history"].get(q.id) == z  # equal-reward screens in a row, of either kind
    # online_influence's ranked-out prompts count as screens that gave the batch nothing, when asked to
    r = pool[1]
    screen_observe([Group(q, [], [0, 1]), Group(r, [], [1, 0])], extra, cfg, useless=[r.id])
    assert q.id not in extra["screen_history"] and extra["screen_history"][r.id] == 1


def test_greso_probabilities_move_towards_the_target_share_within_bounds(pool):
    cfg = _cfg("greso")
    greso = Greso(cfg)
    extra = {"cursor": len(pool), "greso_p": {"easy": 0.06, "hard": 0.5}}
    all_easy = [Group(pool[0], [], [1.0, 1.0])] * 10
    greso.end_step(all_easy, extra, len(pool))
    assert extra["greso_p"]["easy"] == pytest.approx(0.05)  # clipped at greso_p_min
    assert extra["greso_p"]["hard"] == pytest.approx(0.51)  # no all-wrong groups: explore them more
    before = dict(extra["greso_p"])
    greso.end_step(all_easy, {"cursor": 3, "greso_p": before}, len(pool))  # first epoch: no change
    assert before == {"easy": 0.05, "hard": 0.51}


def test_greso_history_counts_consecutive_equal_reward_groups_of_one_kind(pool):
    greso, extra = Greso(_cfg("greso")), {}
    p = pool[0]
    for rewards in ([0, 0], [0, 0], [1, 1], [1, 1], [1, 1]):
        greso.observe([Group(p, [], rewards)], extra)
    assert extra["greso_history"][p.id] == ["easy", 3]
    greso.observe([Group(p, [], [0, 1])], extra)
    assert p.id not in extra["greso_history"]


@pytest.mark.parametrize("method,skip", [("greso", 1.0), ("online_filter", 1.0), ("online_filter", 0.5)])
def test_a_resumed_filtered_run_equals_the_uninterrupted_one(tmp_path, method, skip):
    from cropi.runs.run import run_training

    sets = {"train.steps": 4, "train.filter.screen_skip_p": skip}
    run_training(_cfg(method, **sets), tmp_path / "full")
    part = _cfg(method, **sets)
    part.train.steps = 2
    run_training(part, tmp_path / "part")
    (tmp_path / "part" / "config.yaml").unlink()  # the budget changed; the rest is identical
    summary = run_training(_cfg(method, **sets), tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "final_model" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final_model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    if skip < 1:
        assert summary["skipped_prompts"] > 0  # the skip acted across the resume
    kinds = summary["seconds_by_kind"]
    assert summary["filter"] == method and kinds["rollouts"] > 0 and kinds["training"] > 0
    # the kinds add up to the charged seconds (collection, scoring and selection are zero without a selector)
    assert sum(kinds.values()) == pytest.approx(summary["train_seconds"] + summary["select_seconds"], abs=0.1)


def _slow_gradient(policy, group) -> torch.Tensor:
    """g_x written out (``formed_group_gradient``), all weights flattened in the model's order."""
    grads = formed_group_gradient(policy.model, group)
    return torch.cat([grads[n].reshape(-1) for n, _ in policy.model.named_parameters()])


def _slow_fusion(scores: dict[str, dict[str, float]], n: int) -> list[str]:
    """Reciprocal-rank fusion by its definition: each set's top-n by score (ties by id), F = sum of 1/rank,
    the top n by F (ties: best single rank, then id)."""
    fused, best = {}, {}
    for per in scores.values():
        top = sorted(per, key=lambda i: (-per[i], i))[:n]
        for r, pid in enumerate(top, 1):
            fused[pid] = fused.get(pid, 0.0) + 1 / r
            best[pid] = min(best.get(pid, r), r)
    return sorted(fused, key=lambda i: (-fused[i], best[i], i))[:n]


def test_online_influence_trains_on_the_screened_groups_best_aligned_with_validation(tiny, suite):
    """The chosen groups are the top prompts_per_step of the screened mixed ones by fused cosine to the
    validation means, each gradient recomputed here by the slow reference above from the same screening and
    validation responses (sampling is keyed, so the same keys give the same responses)."""
    from cropi.selection.online_influence import InfluenceScreening

    cfg = _cfg("online_influence", **{"train.filter.influence_candidates": 2, "train.filter.screen_skip_p": 0.5,
                                      "train.filter.screen_skip_ranked_out": "true"})
    rule = InfluenceScreening(cfg, suite.validation)
    extra: dict = {}
    batch = rule.build(tiny, suite.pool, 0, extra)
    assert batch.seconds["scoring"] > 0 and all(g.mixed for g in batch.groups)
    screened = []
    for draw in range(cfg.train.filter.max_num_gen_batches):
        prompts = stream_prompts(suite.pool, draw * 8, 8, 0)
        screened += [s for s in sample_groups(tiny, prompts, (0, "train", 0, draw), range(2), cfg.rollout) if s.mixed]
        if len(screened) >= 8:
            break
    means = {}
    for name, problems in suite.validation.items():
        groups = sample_groups(tiny, list(problems)[: cfg.select.score.max_val_prompts], (0, "validation", 0),
                               range(4), cfg.rollout)
        rows = [_slow_gradient(tiny, g) for g in groups if g.mixed]
        if rows:
            means[name] = torch.stack(rows).mean(0)
    assert means, "the tiny policy gets mixed rewards on some validation prompt"
    grads = {s.problem.id: _slow_gradient(tiny, s) for s in screened}
    scores = {v: {pid: float(g @ m / (g.norm() * m.norm())) for pid, g in grads.items()} for v, m in means.items()}
    assert [g.problem.id for g in batch.groups] == _slow_fusion(scores, 4)
    # the skip's history: every screened prompt but the chosen ones had one screen that gave the batch nothing
    chosen = {g.problem.id for g in batch.groups}
    history = extra["screen_history"]
    assert not chosen & set(history) and {s.problem.id for s in screened} - chosen <= set(history)


def test_online_influence_names_each_validation_set_it_leaves_out_and_refuses_when_none_is_left(
        tiny, suite, monkeypatch):
    import cropi.scores.in_memory
    from cropi.errors import CropiError
    from cropi.tasks import Problem
    from cropi.selection.online_influence import InfluenceScreening

    warned: list[str] = []
    monkeypatch.setattr(cropi.scores.in_memory.log, "warning", lambda msg, *args: warned.append(msg % args))
    impossible = [Problem(f"x{i}", f"{i}+{i}=", "999999999", "add") for i in range(4)]  # every reward 0
    cfg = _cfg("online_influence")
    usable = next(name for name, probs in suite.validation.items() if any(
        s.mixed for s in sample_groups(tiny, list(probs)[: cfg.select.score.max_val_prompts], (0, "validation", 0),
                                       range(4), cfg.rollout)))
    rule = InfluenceScreening(cfg, {"none_a": impossible, usable: suite.validation[usable], "none_b": impossible[:2]})
    batch = rule.build(tiny, suite.pool, 0, {})
    assert len(batch.groups) == 4 and set(rule._means) == {usable}
    assert warned == ["validation set 'none_a' has no prompt with mixed rewards: left out of the influence fusion",
                      "validation set 'none_b' has no prompt with mixed rewards: left out of the influence fusion"]
    with pytest.raises(CropiError, match="no validation set .none_a, none_b. has a prompt with mixed rewards"):
        InfluenceScreening(cfg, {"none_a": impossible, "none_b": impossible[:2]}).build(tiny, suite.pool, 0, {})


def test_the_online_influence_selector_runs_its_batch_rule_and_its_stored_config_says_so():
    from cropi.errors import ConfigError
    from cropi.runs.run import resolve_selector

    cfg = _cfg(**{"train.selector": "online_influence"})
    assert resolve_selector(cfg).train.filter.method == "online_influence" and cfg.train.filter.method == "none"
    # the screen skip in force is written in: the rule's chosen one, the online filter's none (as published)
    assert resolve_selector(cfg).train.filter.screen_skip_p == 0.5 and cfg.train.filter.screen_skip_p is None
    assert resolve_selector(_cfg("online_filter")).train.filter.screen_skip_p == 1.0
    assert resolve_selector(_cfg(**{"train.selector": "online_influence",
                                     "train.filter.screen_skip_p": 1})).train.filter.screen_skip_p == 1
    assert resolve_selector(_cfg()).train.filter.screen_skip_p is None  # no screen, nothing to say
    # cropi scores at stage boundaries from the stored trajectories: no batch rule of its own
    assert resolve_selector(_cfg(**{"train.selector": "cropi", "train.steps": 40})).train.filter.method == "none"
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_selector(_cfg("dapo", **{"train.selector": "online_influence"}))
