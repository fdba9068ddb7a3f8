"""Rollout backends: the interface, the vLLM backend's request building and output mapping on plain values,
the setting that picks a backend, and the parity measure (built-in sampler vs teacher forcing)."""

import json
import sys

import pytest
from typer.testing import CliRunner

from cropi.cli import app
from cropi.config import load_config
from cropi.errors import ConfigError, CropiError
from cropi.policy import load_policy
from cropi.rollouts import vllm_backend as vb
from cropi.rollouts.backend import HFBackend, make_backend
from cropi.rollouts.parity import normalised_ess, store_parity, token_deltas
from cropi.rollouts.sampler import SamplingParams, key_seed
from cropi.rollouts.trajectory_store import CollectConfig, collect, read_store, store_meta
from cropi.tasks.synthetic import SuiteConfig, build_suite

runner = CliRunner()


@pytest.fixture(scope="module")
def problems():
    return build_suite(SuiteConfig(pool_size=16, val_size=4, test_size_targeted=4, test_size_untargeted=2)).pool


# -- request building -----------------------------------------------------------------------------------------

def test_request_seed_is_the_samplers_pinned_row_seed_an_int64_distinct_per_key():
    # pinned: another value resamples every vLLM store, and the built-in sampler draws its row from the same seed
    assert vb.request_seed((3, "arith-0001", 5)) == 4685054381029097120
    assert key_seed(3, "arith-0001", 5) == 4685054381029097120
    keys = [(seed, pid, s) for seed in (0, 1) for pid in ("arith-0001", "arith-0002") for s in range(16)]
    seeds = [vb.request_seed(k) for k in keys]
    assert all(0 <= x < 2 ** 63 for x in seeds)  # fits vLLM's int64 seed slot
    assert len(set(seeds)) == len(keys)  # each of seed, prompt id and sample index changes the seed


def test_request_asks_for_the_sampled_tokens_logprob_of_the_full_softmax_at_t():
    kw = vb.sampling_kwargs(SamplingParams(temperature=0.7, max_new_tokens=12), (0, "p", 1), [7, 2])
    assert kw["temperature"] == 0.7 and kw["top_p"] == 1.0 and kw["top_k"] == -1 and kw["min_p"] == 0.0
    assert kw["logprobs"] == 0 and kw["max_tokens"] == 12 and kw["n"] == 1
    assert kw["seed"] == key_seed(0, "p", 1)
    assert kw["stop_token_ids"] == [2, 7] and kw["ignore_eos"] is True and kw["detokenize"] is False


@pytest.mark.parametrize("params", [SamplingParams(top_p=0.9), SamplingParams(greedy=True)])
def test_request_refuses_nucleus_or_greedy_sampling(params):
    with pytest.raises(CropiError):
        vb.sampling_kwargs(params, (0, "p", 0), [2])


def test_engine_runs_in_processed_logprobs_mode_whatever_the_overrides(monkeypatch):
    monkeypatch.setenv(vb.ENGINE_ARGS_ENV, json.dumps({"gpu_memory_utilization": 0.3, "enforce_eager": True}))
    args = vb.engine_args("bfloat16", {"max_model_len": 256})
    assert args["logprobs_mode"] == "processed_logprobs" and args["skip_tokenizer_init"] is True
    assert args["gpu_memory_utilization"] == 0.3 and args["enforce_eager"] and args["max_model_len"] == 256
    assert args["dtype"] == "bfloat16"
    with pytest.raises(CropiError):
        vb.engine_args("float32", {"logprobs_mode": "raw_logprobs"})
    monkeypatch.setenv(vb.ENGINE_ARGS_ENV, "[1, 2]")
    with pytest.raises(CropiError):
        vb.engine_args("float32")


# -- output mapping (plain values) ----------------------------------------------------------------------------

def test_stopped_response_keeps_its_eos_and_ends_there():
    g = vb.generation_from_values([1, 4], [5, 6, 2], [-0.1, -0.2, -0.3], "stop", [2], max_new_tokens=8)
    assert (g.prompt_ids, g.response_ids, g.behavior_logprobs, g.finish_reason) == ([1, 4], [5, 6, 2],
                                                                                    [-0.1, -0.2, -0.3], "stop")
    cut = vb.generation_from_values([1], [5, 2, 6], [-0.1, -0.2, -0.3], "stop", [2], max_new_tokens=8)
    assert cut.response_ids == [5, 2] and cut.behavior_logprobs == [-0.1, -0.2]


def test_an_eos_as_the_last_allowed_token_is_a_stop_whatever_vllm_says():
    # vLLM 0.10.x checks the length cap before the stop tokens; the built-in sampler calls this "stop"
    g = vb.generation_from_values([1], [5, 2], [-0.1, -0.2], "length", [2], max_new_tokens=2)
    assert g.finish_reason == "stop" and g.response_ids == [5, 2]


def test_a_full_length_response_without_eos_is_length():
    g = vb.generation_from_values([1], [5, 6, 7], [-0.1, -0.2, -0.3], "length", [2], max_new_tokens=3)
    assert g.finish_reason == "length" and len(g.response_ids) == len(g.behavior_logprobs) == 3


@pytest.mark.parametrize("tokens,logps,reason", [
    ([5, 6], [-0.1, -0.2], "length"),  # cut short by the context window
    ([5, 2], [-0.1], "stop"),  # a log-prob missing
    ([5, 2], [-0.1, -0.2], "abort"),
    ([5, 2], [-0.1, -0.2], None),  # not finished
])
def test_unusable_outputs_are_refused_in_one_line(tokens, logps, reason):
    with pytest.raises(CropiError) as info:
        vb.generation_from_values([1], tokens, logps, reason, [2], max_new_tokens=4)
    assert "\n" not in str(info.value)


# -- the setting, the interface, the store --------------------------------------------------------------------

def test_rollout_backend_defaults_to_hf_and_is_checked():
    assert load_config(None, []).rollout.backend == "hf"
    assert load_config(None, ["rollout.backend=vllm"]).rollout.backend == "vllm"
    with pytest.raises(ConfigError, match="rollout.backend"):
        load_config(None, ["rollout.backend=sglang"])
    with pytest.raises(ConfigError, match="rollout.top_p"):
        load_config(None, ["rollout.backend=vllm", "rollout.top_p=0.9"])
    rollout = load_config(None, ["rollout.backend=vllm"]).rollout
    assert CollectConfig.from_rollout(rollout).backend == "vllm"  # what the curriculum's collections use


def test_collect_without_the_vllm_extra_is_one_line_exit_2_nothing_written(micro_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError, installed or not
    out = tmp_path / "store"
    r = runner.invoke(app, ["collect", "--out", str(out), "--model", str(micro_model_dir), "--backend", "vllm",
                            "--limit", "2", "--set", "model.device=cpu", "--set", "data.suite.pool_size=4"])
    assert r.exit_code == 2, r.output
    err = r.output.strip()
    assert "cropi[vllm]" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 2  # one message (rich may wrap it)
    assert not out.exists()


def test_default_backend_is_the_builtin_sampler_and_the_meta_names_it(micro_policy, problems, tmp_path):
    cfg = CollectConfig(group_size=2, max_new_tokens=4, chunk_size=4)
    default = read_store(collect(micro_policy, problems[:6], tmp_path / "default", cfg)).to_pylist()
    explicit = read_store(collect(micro_policy, problems[:6], tmp_path / "explicit", cfg,
                                  backend=make_backend("hf", micro_policy, cfg.batch_size))).to_pylist()
    assert default == explicit
    assert store_meta(tmp_path / "default")["backend"] == "hf"


def test_store_refuses_another_backend_and_reads_old_stores_as_hf(micro_policy, problems, tmp_path):
    cfg = CollectConfig(group_size=2, max_new_tokens=3, chunk_size=4)
    collect(micro_policy, problems[:4], tmp_path / "s", cfg)
    assert store_meta(tmp_path / "s")["backend_identity"] == {"name": "hf"}
    with pytest.raises(CropiError, match="backend"):
        collect(micro_policy, problems[:4], tmp_path / "s", cfg, backend=HFBackend(micro_policy, name="vllm"))
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["backend"], meta["backend_identity"]  # a store from before backends were recorded
    meta_path.write_text(json.dumps(meta))
    collect(micro_policy, problems[:4], tmp_path / "s", cfg)  # resumes as an hf store


class _OtherEngineBackend(HFBackend):
    """The built-in sampler under another identity, as a vLLM engine of another dtype or version would have."""

    def identity(self):
        return {"name": "hf", "dtype": "bfloat16"}


def test_resuming_with_another_backend_identity_is_refused_in_one_line_nothing_written(micro_policy, problems,
                                                                                        tmp_path):
    cfg = CollectConfig(group_size=2, max_new_tokens=3, chunk_size=2)
    store = collect(micro_policy, problems[:4], tmp_path / "s", cfg)
    (store / "part-000001.parquet").unlink()  # an interrupted collection: its second chunk still to sample
    with pytest.raises(CropiError, match="backend_identity") as info:
        collect(micro_policy, problems[:4], store, cfg, backend=_OtherEngineBackend(micro_policy))
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in store.iterdir()) == ["meta.json", "part-000000.parquet"]
    collect(micro_policy, problems[:4], store, cfg)  # the same backend resumes it
    assert (store / "part-000001.parquet").exists()


class _RecordingBackend(HFBackend):
    """The built-in sampler, recording which weights it was told to sample and whether it was closed."""

    def __init__(self, policy, fail: bool = False):
        super().__init__(policy)
        self.weights, self.closed, self.fail = [], 0, fail

    def generate(self, prompts, keys, params, weights=None):
        self.weights.append(weights)
        if self.fail:
            raise RuntimeError("engine died")
        return super().generate(prompts, keys, params, weights)

    def close(self):
        self.closed += 1


def test_collect_closes_a_backend_it_built_and_leaves_a_given_one_open(micro_policy, problems, tmp_path,
                                                                       monkeypatch):
    import cropi.rollouts.trajectory_store as ts

    built, fail = [], []

    def make_backend(name, policy, batch_size):
        built.append(_RecordingBackend(policy, fail=bool(fail)))
        return built[-1]

    monkeypatch.setattr(ts, "make_backend", make_backend)
    cfg = CollectConfig(group_size=2, max_new_tokens=3, chunk_size=4)
    collect(micro_policy, problems[:4], tmp_path / "a", cfg)
    assert len(built) == 1 and built[0].closed == 1 and built[0].weights
    given = _RecordingBackend(micro_policy)
    collect(micro_policy, problems[:4], tmp_path / "b", cfg, backend=given)
    assert given.closed == 0 and given.weights  # the caller may reuse it, so the caller closes it
    fail.append(True)
    with pytest.raises(RuntimeError):
        collect(micro_policy, problems[:4], tmp_path / "c", cfg)
    assert len(built) == 2 and built[1].closed == 1  # closed when sampling fails too


def test_collect_tells_the_backend_the_weights_it_records_after_training_too(micro_model_dir, problems,
                                                                               tmp_path):
    import torch

    policy = load_policy(str(micro_model_dir), device="cpu")
    backend = _RecordingBackend(policy)
    cfg = CollectConfig(group_size=2, max_new_tokens=3, chunk_size=2)
    collect(policy, problems[:4], tmp_path / "before", cfg, backend=backend)
    with torch.no_grad():  # a training step, as far as the weights go
        next(policy.model.parameters()).add_(0.01)
    collect(policy, problems[:4], tmp_path / "after", cfg, backend=backend)  # one backend reused
    before, after = (store_meta(tmp_path / d)["model_fingerprint"] for d in ("before", "after"))
    assert before != after
    assert backend.weights == [before, before, after, after]  # per chunk, the fingerprint each store records


# -- parity ---------------------------------------------------------------------------------------------------

def test_ess_is_one_for_equal_weights_and_one_over_g_for_a_single_dominant_weight():
    assert normalised_ess([-3.0] * 8) == pytest.approx(1.0)
    assert normalised_ess([0.0] + [-1e4] * 7) == pytest.approx(1 / 8)
    assert normalised_ess([1.0, 2.0, 3.0]) == pytest.approx(normalised_ess([1001.0, 1002.0, 1003.0]))
    assert token_deltas([[-1.0, -2.0]], [[-1.5, -2.0]]) == {"tokens": 2, "mean_abs_delta": 0.25,
                                                            "max_abs_delta": 0.5}
    with pytest.raises(ValueError):
        token_deltas([[-1.0]], [[-1.0, -2.0]])


def test_builtin_sampler_logprobs_equal_teacher_forced_ones_in_fp32(problems, tmp_path, temperature=0.7):
    """The parity measure with the built-in sampler as the engine: the tiny policy (the GPU check's model) in
    fp32 must agree with its own teacher forcing to float rounding, and look exactly on-policy (ESS 1)."""
    policy = load_policy("tiny", device="cpu", dtype="float32")
    cfg = CollectConfig(group_size=4, temperature=temperature, max_new_tokens=10, chunk_size=8)
    store = collect(policy, problems[:12], tmp_path / "s", cfg)
    p = store_parity(policy, store)
    assert p["backend"] == "hf" and p["prompts"] == 12 and p["responses"] == 48 and p["tokens"] > 48
    assert p["mean_abs_delta"] <= 1e-5 and p["max_abs_delta"] <= 1e-4
    assert p["min_ess"] >= 0.9999


def test_the_curriculums_behaviour_stores_share_one_backend_and_close_it_once(micro_policy, tmp_path, monkeypatch):
    from cropi.config import load_config
    from cropi.rollouts.backend import HFBackend
    from cropi.tasks.synthetic import build_suite
    from cropi.training import curriculum

    made, closed = [], []

    class CountedHF(HFBackend):
        def close(self) -> None:
            closed.append(self)

    def make(name, policy, batch_size=512):
        made.append(CountedHF(policy, batch_size))
        return made[-1]

    monkeypatch.setattr(curriculum, "make_backend", make)
    cfg = load_config(None, ["data.suite.pool_size=8", "data.suite.val_size=4", "rollout.group_size=2",
                             "rollout.max_new_tokens=2"])
    stores = curriculum.behaviour_stores(micro_policy, build_suite(cfg.data.suite), cfg, tmp_path)
    assert len(stores.validation) == 2  # pool + two validation stores were collected ...
    assert len(made) == 1 and closed == made  # ... by one backend, closed once
    curriculum.behaviour_stores(micro_policy, build_suite(cfg.data.suite), cfg, tmp_path)
    assert len(made) == 1  # nothing left to collect: no backend (no engine) is started
