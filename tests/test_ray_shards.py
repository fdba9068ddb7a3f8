"""Scoring and collection sharded over a real local Ray (2 CPU workers): the merged stores and the scores are
bit-identical to one process with the same torch thread count, a worker killed mid-job loses only its
unfinished chunk, and without Ray the CLI says which extra to install."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from cropi.cli import app
from cropi.config import load_config
from cropi.io import table_bits
from cropi.rollouts.trajectory_store import CollectConfig, collect
from cropi.selection.export import read_scores
from cropi.tasks.problem import Problem

runner = CliRunner()
CCFG = CollectConfig(group_size=24, max_new_tokens=1, chunk_size=4, temperature=3.0)


def _problems(prefix, n):
    return [Problem(f"{prefix}{i}", f"count a {'ab' * (i % 3 + 1)}=", str(i % 3 + 1), "count") for i in range(n)]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray for the whole file: starting it takes ~10 s."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def stores(micro_model_dir, tmp_path_factory):
    from cropi.policy import load_policy

    tmp = tmp_path_factory.mktemp("ray")
    policy = load_policy(str(micro_model_dir), device="cpu")
    pool = collect(policy, _problems("p", 22), tmp / "pool", CCFG)
    val = collect(policy, _problems("v", 8), tmp / "val", CCFG)
    base = ["score", "--pool-store", str(pool), "--val-store", f"count={val}", "--model", str(micro_model_dir),
            "--device", "cpu", "--k", "64", "--chunk-size", "4", "--select-ratio", "0.2"]
    return tmp, pool, val, base


@pytest.fixture()
def one_thread():
    """The single-process reference runs with the actors' thread count (--ray-threads, default 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _chunks(folders) -> dict[str, bytes]:
    """Every chunk file of the stores (whole or shards) by its grid name."""
    return {f.name: table_bits(pq.read_table(f)) for d in folders for f in sorted(Path(d).glob("*.parquet"))}


def _ok(r):
    assert r.exit_code == 0, r.output
    return r


def test_ray_scores_on_two_workers_equal_one_process_bitwise(ray_cluster, stores, one_thread):
    tmp, pool, val, base = stores
    _ok(runner.invoke(app, base + ["--mode", "exact", "--gradients", str(tmp / "one"), "--out", str(tmp / "one.parquet")]))
    r = _ok(runner.invoke(app, base + ["--mode", "exact", "--ray", "--ray-workers", "2", "--gradients", str(tmp / "ray"),
                                       "--out", str(tmp / "ray.parquet")]))
    assert "on Ray: 2 worker(s) (cpu, 1 torch thread(s) each)" in r.output and "in exact mode" in r.output
    one, ray = read_scores(tmp / "one.parquet")[0], read_scores(tmp / "ray.parquet")[0]
    assert one.column_names == ray.column_names and table_bits(one) == table_bits(ray)
    shards = sorted((tmp / "ray").glob("pool-exact-*"))
    assert len(shards) > 1  # the pool really was split
    whole = _chunks([tmp / "one" / "pool-exact"])
    assert len(whole) == 6 and _chunks(shards) == whole
    # a resumed Ray job recomputes a damaged chunk of a finished shard and ends bit-identical again
    cut = sorted(shards[0].glob("chunk-*.parquet"))[0]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    r = _ok(runner.invoke(app, base + ["--mode", "exact", "--ray", "--ray-workers", "2", "--gradients",
                                       str(tmp / "ray"), "--out", str(tmp / "ray.parquet")]))
    assert f"warning: {cut} is damaged" in " ".join(r.output.split()) and "recomputing it" in r.output
    assert _chunks(shards) == whole and table_bits(read_scores(tmp / "ray.parquet")[0]) == table_bits(one)


# slow: two Ray jobs (a killed one and its rerun), each starting two actors that import torch and transformers:
# ~50 s on the 2-core machine, more than this file's budget
@pytest.mark.slow
def test_a_worker_killed_mid_job_loses_only_its_unfinished_chunk_and_a_rerun_equals_one_process(
        ray_cluster, stores, one_thread, monkeypatch):
    """Projected mode: the validation store is made by an actor too, and compared."""
    from cropi.integrations.ray_shards import FAIL_AFTER_CHUNKS_ENV

    tmp, pool, val, base = stores
    _ok(runner.invoke(app, base + ["--mode", "projected", "--gradients", str(tmp / "ref"), "--out", str(tmp / "ref.parquet")]))
    grads = tmp / "killed"
    args = base + ["--mode", "projected", "--ray", "--gradients", str(grads), "--out", str(tmp / "killed.parquet")]
    monkeypatch.setenv(FAIL_AFTER_CHUNKS_ENV, "1")  # the first actor os._exit()s once it has written a pool chunk
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "Ray worker died" in r.output and "rerun" in r.output, r.output
    assert not (tmp / "killed.parquet").exists()
    kept = {f: f.stat().st_mtime_ns for f in grads.glob("pool-0*/chunk-*.parquet")}
    assert 1 <= len(kept) < 6  # the dead worker's chunk is there, the job is not done
    monkeypatch.delenv(FAIL_AFTER_CHUNKS_ENV)
    _ok(runner.invoke(app, args))
    assert {f: f.stat().st_mtime_ns for f in kept} == kept  # finished chunks were kept, not recomputed
    assert table_bits(read_scores(tmp / "killed.parquet")[0]) == table_bits(read_scores(tmp / "ref.parquet")[0])
    assert _chunks(sorted(grads.glob("pool-0*"))) == _chunks([tmp / "ref" / "pool"])
    assert _chunks([grads / "val-count"]) == _chunks([tmp / "ref" / "val-count"])


def test_ray_collection_on_two_workers_equals_one_process_chunk_by_chunk(ray_cluster, stores, micro_model_dir,
                                                                         one_thread):
    from cropi.integrations.ray_shards import collect_on_ray
    from cropi.policy import load_policy

    tmp = stores[0]
    problems = _problems("c", 18)
    collect(load_policy(str(micro_model_dir), device="cpu"), problems, tmp / "c-one", CCFG)
    cfg = load_config(None, [f"model.name={micro_model_dir}", "model.device=cpu"])
    job = collect_on_ray(cfg, problems, tmp / "c-ray", CCFG, workers=2)
    assert job.workers == 2 and job.tasks == 5
    one = {f.name: pq.read_table(f) for f in sorted((tmp / "c-one").glob("part-*.parquet"))}
    ray = {f.name: pq.read_table(f) for f in sorted((tmp / "c-ray").glob("part-*.parquet"))}
    assert len(one) == 5 and one.keys() == ray.keys()
    for name in one:  # every column and the file metadata (fingerprints, sampling setup)
        assert ray[name].equals(one[name], check_metadata=True) and table_bits(ray[name]) == table_bits(one[name]), name
    assert (tmp / "c-ray" / "meta.json").read_text() == (tmp / "c-one" / "meta.json").read_text()


def test_ray_options_errors_are_one_line_exit_2(ray_cluster, stores):
    tmp, _, _, base = stores
    out = ["--out", str(tmp / "x.parquet")]
    for extra, expect in ((["--ray", "--shard", "0/2", "--gradients", str(tmp / "g")], "not both"),
                          (["--ray", "--ray-workers", "3"], "room for 1 to 2 workers"),
                          (["--ray-workers", "2"], "need --ray")):
        r = runner.invoke(app, base + extra + out)
        assert r.exit_code == 2 and expect in r.output and "Traceback" not in r.output, r.output
    assert not (tmp / "x.parquet").exists()


def test_ray_commands_without_ray_installed_name_the_extra_exit_2(stores, monkeypatch, tmp_path):
    from cropi.integrations import ray_shards  # imported first: the dispatcher never imports ray at module level

    tmp, _, _, base = stores
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    for args in (base + ["--ray", "--out", str(tmp_path / "s.parquet")],
                 ["collect", "--ray", "--out", str(tmp_path / "c"), "--limit", "4"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert "cropi[ray]" in r.output and "--ray" in r.output and len(lines) <= 3 and "Traceback" not in r.output
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "c").exists()
    assert ray_shards.FAIL_AFTER_CHUNKS_ENV


def test_shard_plan_keeps_existing_shards_and_splits_only_the_gaps():
    from cropi.errors import CropiError
    from cropi.integrations.ray_shards import shard_plan

    assert shard_plan(22, 4, [], 2) == [(0, 12), (12, 22)]
    assert shard_plan(22, 4, [], 100) == [(i, min(i + 4, 22)) for i in range(0, 22, 4)]  # at most one per chunk
    # a rerun with another worker count: the shard that exists stays, the rest is split around it
    assert shard_plan(22, 4, [(8, 16)], 3) == [(0, 8), (8, 16), (16, 22)]
    assert shard_plan(22, 4, [(0, 22)], 8) == [(0, 22)]
    with pytest.raises(CropiError, match="overlap"):
        shard_plan(22, 4, [(0, 12), (8, 16)], 2)


def test_a_worker_error_that_is_not_cropis_reaches_the_driver_as_one_line(ray_cluster):
    import ray

    from cropi.integrations.ray_shards import WorkerLost, _get

    @ray.remote
    def fails():
        raise MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    with pytest.raises(WorkerLost) as info:
        _get(ray, fails.remote())
    msg = str(info.value)
    assert "\n" not in msg and "MemoryError: CUDA out of memory" in msg and "rerun the same command" in msg
