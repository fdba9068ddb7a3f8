"""Sampling, behaviour log-probs and the trajectory store."""

import pyarrow.parquet as pq
import pytest
import torch

from cropi.errors import CropiError
from cropi.objective import response_logprobs
from cropi.rollouts.batch import pack
from cropi.rollouts.sampler import SamplingParams, generate
from cropi.rollouts.trajectory_store import CollectConfig, collect, pass_rates, read_store
from cropi.tasks.synthetic import SuiteConfig, build_suite


@pytest.fixture(scope="module")
def problems():
    return build_suite(SuiteConfig(pool_size=24, val_size=4, test_size_targeted=4, test_size_untargeted=2)).pool


def _rows(policy, problems, g):
    prompts = [policy.encode_prompt(p.prompt) for p in problems]
    return [prompts[i] for i in range(len(problems)) for _ in range(g)], [(7, p.id, s) for p in problems for s in range(g)]


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_stored_logprobs_equal_teacher_forced_recomputation(micro_policy, problems, temperature):
    rows, keys = _rows(micro_policy, problems[:6], 4)
    params = SamplingParams(temperature=temperature, max_new_tokens=10)
    gens = generate(micro_policy, rows, params, keys=keys, batch_size=7)
    b = pack([g.prompt_ids for g in gens], [g.response_ids for g in gens], [g.behavior_logprobs for g in gens],
             micro_policy.pad_token_id)
    with torch.no_grad():
        lp = response_logprobs(micro_policy.model, b.input_ids, b.attention_mask, b.response_mask, temperature)
    assert b.response_mask.sum() > 0
    assert torch.allclose(lp, b.behavior_logprobs, atol=1e-4)


def test_sampling_is_keyed_and_batch_invariant(micro_policy, problems):
    rows, keys = _rows(micro_policy, problems[:8], 3)
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    a = generate(micro_policy, rows, params, keys=keys, batch_size=24)
    b = generate(micro_policy, rows[::-1], params, keys=keys[::-1], batch_size=5)[::-1]
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    # different keys give different samples from a random policy
    c = generate(micro_policy, rows, params, keys=[(8, *k[1:]) for k in keys], batch_size=24)
    assert [g.response_ids for g in a] != [g.response_ids for g in c]


def test_a_groups_prompt_runs_once_and_samples_as_if_each_row_ran_alone(micro_policy, problems, monkeypatch):
    from cropi.objective import SharedPromptUnsupported
    from cropi.rollouts import sampler

    rows, keys = _rows(micro_policy, problems[:5], 4)
    rows, keys = rows[:-1] + rows[:1], keys[:-1] + [(9, "lone", 0)]  # a short last group and a lone repeat
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    widths = []
    hook = micro_policy.model.register_forward_pre_hook(
        lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        shared = generate(micro_policy, rows, params, keys=keys, batch_size=9)
    finally:
        hook.remove()
    prefills = [w[0] for w in widths if w[1] > 1]
    assert prefills == [3, 3, 2]  # rows 0-8: prompts 0,1,2; rows 9-17: 2,3,4; rows 18-19: 4 then 0
    alone = [generate(micro_policy, [r], params, keys=[k])[0] for r, k in zip(rows, keys)]
    assert [g.response_ids for g in shared] == [g.response_ids for g in alone]
    for a, b in zip(shared, alone):
        assert torch.allclose(torch.tensor(a.behavior_logprobs), torch.tensor(b.behavior_logprobs), atol=1e-5)

    def refuse(cache, counts):
        raise SharedPromptUnsupported("test cache")

    monkeypatch.setattr(sampler, "repeat_cache", refuse)
    monkeypatch.setattr(sampler, "_SHARED_UNSUPPORTED", {})
    unshared = generate(micro_policy, rows, params, keys=keys, batch_size=9)
    assert [g.response_ids for g in unshared] == [g.response_ids for g in shared]
    assert type(micro_policy.model) in sampler._SHARED_UNSUPPORTED


def test_top_p_does_not_renormalise_stored_logprobs(micro_policy, problems):
    rows, keys = _rows(micro_policy, problems[:4], 4)
    full = generate(micro_policy, rows, SamplingParams(temperature=1.0, top_p=0.3, max_new_tokens=6), keys=keys)
    b = pack([g.prompt_ids for g in full], [g.response_ids for g in full], [g.behavior_logprobs for g in full],
             micro_policy.pad_token_id)
    with torch.no_grad():
        lp = response_logprobs(micro_policy.model, b.input_ids, b.attention_mask, b.response_mask, 1.0)
    assert torch.allclose(lp, b.behavior_logprobs, atol=1e-4)


def test_collect_refuses_top_p_below_one_before_writing(micro_policy, problems, tmp_path):
    from cropi.errors import ConfigError

    with pytest.raises(ConfigError, match=r"top_p=0\.9: must be 1\.0: behaviour log-probs .* full softmax"):
        collect(micro_policy, problems[:2], tmp_path / "store", CollectConfig(group_size=2, top_p=0.9,
                                                                             max_new_tokens=2))
    assert not (tmp_path / "store").exists()


def test_collection_resumed_or_sharded_equals_single(micro_policy, problems, tmp_path):
    cfg = CollectConfig(group_size=3, max_new_tokens=6, chunk_size=5, seed=3)
    single = read_store(collect(micro_policy, problems, tmp_path / "single", cfg)).to_pylist()
    # sharded over 3 workers
    for i in range(3):
        collect(micro_policy, problems, tmp_path / "sharded", cfg, shard_index=i, num_shards=3)
    assert read_store(tmp_path / "sharded").to_pylist() == single
    # interrupted: drop two chunks and a leftover temp file, then rerun
    parts = sorted((tmp_path / "single").glob("part-*.parquet"))
    parts[1].unlink()
    parts[3].unlink()
    (tmp_path / "single" / ".part-000001.parquet.x.tmp").write_bytes(b"torn")
    collect(micro_policy, problems, tmp_path / "single", cfg)
    assert read_store(tmp_path / "single").to_pylist() == single
    rows = single
    assert len(rows) == len(problems) * 3
    assert {r["finish_reason"] for r in rows} <= {"stop", "length"}
    assert all(len(r["response_ids"]) == len(r["behavior_logprobs"]) for r in rows)
    meta = pq.read_schema(parts[0]).metadata
    assert b"model_fingerprint" in meta[b"cropi"]
    assert set(pass_rates(tmp_path / "single")) == {p.id for p in problems}


def test_store_refuses_another_policy_or_setup(micro_policy, problems, tmp_path):
    cfg = CollectConfig(group_size=2, max_new_tokens=4, chunk_size=8)
    collect(micro_policy, problems[:8], tmp_path / "s", cfg)
    with pytest.raises(CropiError, match="temperature"):
        collect(micro_policy, problems[:8], tmp_path / "s", CollectConfig(group_size=2, max_new_tokens=4, chunk_size=8,
                                                                          temperature=0.5))
    with torch.no_grad():
        next(micro_policy.model.parameters()).add_(0.01)
    with pytest.raises(CropiError, match="model_fingerprint"):
        collect(micro_policy, problems[:8], tmp_path / "s", cfg)


def test_subset_store_keeps_only_the_chosen_prompts(micro_policy, problems, tmp_path):
    from cropi.rollouts.trajectory_store import collection_complete, store_meta, subset_store

    full = collect(micro_policy, problems[:6], tmp_path / "full", CollectConfig(group_size=2, max_new_tokens=3, chunk_size=4))
    keep = [problems[4].id, problems[1].id]
    sub = subset_store(full, keep, tmp_path / "sub")
    rows = read_store(sub).to_pylist()
    assert [r["prompt_id"] for r in rows] == [problems[1].id] * 2 + [problems[4].id] * 2  # the store's order
    whole = {(r["prompt_id"], r["sample_index"]): r for r in read_store(full).to_pylist()}
    assert all(whole[(r["prompt_id"], r["sample_index"])] == r for r in rows)
    assert collection_complete(sub) and store_meta(sub)["num_prompts"] == 2
    assert store_meta(sub)["tokenizer_fingerprint"] == store_meta(full)["tokenizer_fingerprint"]
    assert pass_rates(sub) == {k: v for k, v in pass_rates(full).items() if k in keep}
