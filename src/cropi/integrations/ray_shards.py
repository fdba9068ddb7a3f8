"""Scoring and collection sharded over Ray actors (``cropi score --ray``, ``cropi collect --ray``).

A thin dispatcher over the engine's own shard machinery: each actor loads the policy once and runs whole,
chunk-aligned shards with the same functions a single process runs (``collect`` with a shard index,
``project_pool_range``, ``project_validation_store``, ``validation_means``), writing into the same folders;
one actor then runs the final ``score_pool`` pass, which reads the shards as one store.  Since a chunk's bits
depend only on its own prompts, the merged store and the scores are bit-identical to a single-process run
**with the same torch thread count** (``threads`` here; ``OMP_NUM_THREADS=T cropi score ...`` for the single
process) on the same kind of device.  In exact mode each validation set's mean is computed once, by one actor
(sets in parallel), and passed to every shard and to the final pass.

Actors: one per GPU (``num_gpus=1``) where the cluster has GPUs and the model's device is not ``cpu``, else
one per ``threads`` CPUs.  The shard layout is a function of the pool and the worker count, except that shards
already in the gradients folder are kept as they are and only the gaps are split: so a rerun with any worker
count resumes.  A worker that dies loses only its unfinished chunk (chunks are written under a temporary name
and renamed): the job stops with one line after the other workers' current shards finish, and rerunning the
same command finishes it with the same result.

Paths must be visible to every actor (one machine, or a shared filesystem on a cluster), and cropi must be
importable on every node.  ``CROPI_RAY_FAIL_AFTER_CHUNKS=N`` in the driver's environment makes the first
actor exit (``os._exit``) after it finished N chunks: fault injection for tests, nothing else.  A local Ray
started here runs its workers at the driver's niceness (Ray's default is 15) unless ``RAY_worker_niceness`` is set.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from cropi.config import RunConfig
from cropi.errors import CropiError
from cropi.extras import require
from cropi.io import first_line, log, table_bits
from cropi.machine import usable_cores

FAIL_AFTER_CHUNKS_ENV = "CROPI_RAY_FAIL_AFTER_CHUNKS"
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # Ray's own setting (default 15)
SHARD_TASKS = ("validation_mean", "project_validation", "project_pool", "collect")
TASKS_PER_WORKER = 4  # shards per actor: balances uneven shards and gives the progress bar steps


def _ray():
    return require("ray", "ray", "--ray (sharding over Ray actors)")


class WorkerLost(CropiError):
    """A Ray actor died mid-job; its finished chunks are kept and a rerun completes the job."""


@dataclass
class RayJob:
    """What a sharded job ran on and how long its parts took (seconds)."""

    workers: int
    device: str  # "cuda" (one GPU per actor) or "cpu"
    threads: int  # torch threads in each actor
    tasks: int  # shards handed out (validation sets and means included)
    ray_start_seconds: float  # starting (or connecting to) Ray; 0 when it was already running
    actor_start_seconds: float  # creating the actors, each importing cropi and loading the policy
    seconds: float  # the job after Ray was up: actors, shards and the final pass
    phases: dict  # seconds of each step after the actors' start (validation means, pool shards, final pass)


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[float]:
    """Ray for one job: the already initialised one, the cluster at ``address``, or a local one started here
    (``num_cpus``: default all) and stopped afterwards.  Yields the seconds it took to start."""
    ray = _ray()
    if ray.is_initialized():
        yield 0.0
        return
    t0 = time.perf_counter()
    quiet = {"log_to_driver": False, "logging_level": "warning"}  # actors' model-loading chatter stays in Ray's logs
    # Ray runs its workers at niceness 15; a local Ray started for one job runs them at the job's own priority
    # instead, as the single process runs (on a shared machine niceness 15 starves them), unless the user set it
    nice = {} if os.environ.get(WORKER_NICENESS_ENV) else {WORKER_NICENESS_ENV: str(os.nice(0))}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            os.environ.update(nice)  # read by the raylet that ray.init starts
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
            finally:
                for key in nice:
                    os.environ.pop(key, None)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--ray-address {address}" if address else "local Ray"
        raise CropiError(f"{where}: cannot start or connect to Ray ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- the actor
class _KeepWarnings(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


class ShardWorker:
    """One Ray actor: the policy, loaded once, and the engine's shard functions run on it."""

    def __init__(self, model: str, device: str, dtype: str, threads: int, fail_after_chunks: int | None = None,
                 trainable_blocks: int = 0, chat_template: bool = True):
        import torch

        torch.set_num_threads(threads)
        from cropi.policy import load_policy

        self.init_error = None
        try:
            self.policy = load_policy(model, device, dtype, trainable_blocks, chat_template)
        except CropiError as exc:  # raised by the first call, as itself (Ray reports a failed __init__ as a death)
            self.init_error = exc
        self.fail_after_chunks = fail_after_chunks
        self.chunks = 0
        # cropi's warnings (a damaged chunk recomputed, ...) go back to the driver, which prints them: the
        # actors' own output stays in Ray's logs
        self.warnings: list[str] = []
        logging.getLogger("cropi").addHandler(_KeepWarnings(self.warnings))

    def take_warnings(self) -> list[str]:
        taken, self.warnings[:] = list(self.warnings), []
        return taken

    def _chunk_done(self, _prompts: int) -> None:
        self.chunks += 1
        if self.fail_after_chunks is not None and self.chunks >= self.fail_after_chunks:
            os._exit(1)  # fault injection (FAIL_AFTER_CHUNKS_ENV): a worker lost between two chunks

    def device(self) -> str:
        if self.init_error is not None:
            raise self.init_error
        return str(self.policy.device)

    def resolve_mode(self, pool_store: str, val_stores: dict, cfg: RunConfig) -> str:
        from cropi.scores.engine import check_scoring_stores, resolve_mode

        check_scoring_stores(self.policy, pool_store, val_stores)
        return resolve_mode(self.policy, cfg.select.score, len(val_stores))

    def validation_mean(self, name: str, path: str, cfg: RunConfig) -> dict:
        from cropi.scores.engine import validation_means

        mean = validation_means(self.policy, {name: path}, cfg)[name]
        return {p: t.cpu() for p, t in mean.items()}  # moved back to each actor's device by the engine

    def project_validation(self, name: str, path: str, gradients: str, cfg: RunConfig) -> None:
        from cropi.scores.engine import project_validation_store

        project_validation_store(self.policy, name, path, gradients, cfg)

    def project_pool(self, pool_store: str, gradients: str, cfg: RunConfig, start: int, end: int,
                     val_stores: dict, means: dict | None) -> None:
        from cropi.scores.engine import project_pool_range

        project_pool_range(self.policy, pool_store, gradients, cfg, start, end, val_stores=val_stores,
                           on_prompt=self._chunk_done, exact_means=means)

    def score(self, pool_store: str, val_stores: dict, out: str, cfg: RunConfig, gradients: str, means: dict | None):
        from cropi.scores.engine import score_pool

        return score_pool(self.policy, pool_store, val_stores, out, cfg, gradients=gradients, exact_means=means)

    def collect(self, problems: list[dict], out: str, ccfg, policy_tag: str, shard_index: int, num_shards: int) -> None:
        from cropi.rollouts.trajectory_store import collect
        from cropi.tasks.problem import Problem

        collect(self.policy, [Problem.from_dict(p) for p in problems], out, ccfg, policy_tag, shard_index, num_shards,
                on_prompts=self._chunk_done)


# ----------------------------------------------------------------------------- the dispatcher
@dataclass
class _Task:
    method: str
    args: tuple
    prompts: int = 0  # pool prompts it covers (progress)


def _model_arg(name: str) -> str:
    """A model folder given relative to the driver's directory, made absolute for the actors."""
    return str(Path(name).resolve()) if Path(name).exists() else name


class _Workers:
    """The job's actors and a queue that hands each idle one the next task."""

    def __init__(self, ray, cfg: RunConfig, workers: int | None, threads: int, gpus_per_worker: float = 1.0):
        if threads < 1:
            raise CropiError(f"--ray-threads {threads}: must be >= 1")
        self.ray = ray
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
        use_gpu = gpus > 0 and cfg.model.device != "cpu"
        slots = int(gpus / gpus_per_worker) if use_gpu else cpus // threads
        n = slots if workers is None else workers
        if not 1 <= n <= slots:
            have = f"{gpus} GPUs" if use_gpu else f"{cpus} CPUs for {threads} thread(s) per worker"
            raise CropiError(f"--ray-workers {n}: the Ray cluster has room for 1 to {slots} workers ({have})")
        self.device, self.threads = ("cuda" if use_gpu else "cpu"), threads
        fail = os.environ.get(FAIL_AFTER_CHUNKS_ENV)
        actor = ray.remote(ShardWorker).options(num_gpus=gpus_per_worker, num_cpus=0) if use_gpu else \
            ray.remote(ShardWorker).options(num_cpus=threads)
        t0 = time.perf_counter()
        self.actors = [actor.remote(_model_arg(cfg.model.name), self.device, cfg.model.dtype, threads,
                                    int(fail) if fail and i == 0 else None, cfg.model.trainable_blocks,
                                    cfg.model.chat_template) for i in range(n)]
        self.shards = 0  # shard tasks handed out
        try:
            self.run([_Task("device", ())] * n)  # n tasks for n idle actors: every actor is up, with its policy
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - t0

    def run(self, tasks: Sequence[_Task], on_done: Callable[[int], None] | None = None) -> list:
        """Results of ``tasks`` in order; each idle actor takes the next one.  On an error no task is handed out
        any more, the others' current tasks finish, and the first error is raised."""
        ray = self.ray
        queue, idle, pending = deque(enumerate(tasks)), list(reversed(self.actors)), {}
        results: list = [None] * len(tasks)
        error: BaseException | None = None
        while pending or (queue and error is None):
            while idle and queue and error is None:
                i, task = queue.popleft()
                actor = idle.pop()
                pending[getattr(actor, task.method).remote(*task.args)] = (i, actor, task)
            done, _ = ray.wait(list(pending), num_returns=1)
            i, actor, task = pending.pop(done[0])
            try:
                results[i] = _get(ray, done[0])
            except CropiError as exc:
                error = error or exc
                continue  # a dead actor is not idle again
            for message in ray.get(actor.take_warnings.remote()):
                log.warning("%s", message)
            idle.append(actor)
            if on_done and task.prompts:
                on_done(task.prompts)
        if error is not None:
            raise error
        self.shards += sum(t.method in SHARD_TASKS for t in tasks)
        return results

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def _get(ray, ref):
    """``ray.get``, with an actor's ``CropiError`` raised as itself and a dead actor as ``WorkerLost``."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CropiError):
            raise exc.cause from None
        cause = exc.cause if exc.cause is not None else exc
        raise WorkerLost(f"a Ray worker failed ({type(cause).__name__}: {first_line(cause)[:300]}); the chunks "
                         "finished are kept: fix the cause and rerun the same command") from None
    except ray.exceptions.RayActorError as exc:
        raise WorkerLost(f"a Ray worker died mid-job ({str(exc).splitlines()[0][:200]}); the chunks it finished "
                         "are kept: rerun the same command to finish the job") from None


@contextmanager
def _job(address, workers, threads, cfg, num_cpus=None, gpus_per_worker=1.0) -> Iterator[tuple[_Workers, float, float]]:
    with ray_session(address, num_cpus) as ray_start:
        t0 = time.perf_counter()
        pool = _Workers(_ray(), cfg, workers, threads, gpus_per_worker)
        try:
            yield pool, ray_start, t0
        finally:
            pool.close()


def shard_plan(num_prompts: int, chunk_size: int, existing: Sequence[tuple[int, int]], pieces: int) -> list[tuple[int, int]]:
    """Chunk-aligned prompt ranges covering [0, num_prompts): the ``existing`` shards as they are, and each gap
    between them split into pieces of whole chunks (about ``pieces`` over the whole pool)."""
    n_chunks = -(-num_prompts // chunk_size)
    out: list[tuple[int, int]] = []
    at = 0  # the next chunk not covered
    for start, end in sorted(existing) + [(n_chunks * chunk_size, None)]:
        if start < at * chunk_size:
            raise CropiError(f"pool shards overlap at prompt {start}; use another gradients folder")
        gap = start // chunk_size - at
        k = min(gap, max(1, round(pieces * gap / max(1, n_chunks)))) if gap > 0 else 0
        for j in range(k):
            c0, c1 = at + j * gap // k, at + (j + 1) * gap // k
            out.append((c0 * chunk_size, min(c1 * chunk_size, num_prompts)))
        if end is None:
            break
        out.append((start, end))
        at = -(-end // chunk_size)
    return out


def _existing_shards(gradients: Path, mode: str) -> list[tuple[int, int]]:
    from cropi.scores.gradient_store import gradient_store_meta

    prefix = "pool-exact-" if mode == "exact" else "pool-"
    found = []
    for d in sorted(gradients.glob(prefix + "*")):
        if (d / "meta.json").exists() and (mode == "exact" or not d.name.startswith("pool-exact")):
            meta = gradient_store_meta(d)
            found.append((int(meta["start"]), int(meta["end"])))
    return found


def score_on_ray(cfg: RunConfig, pool_store: str | Path, val_stores: Mapping[str, str | Path], out: str | Path,
                 gradients: str | Path | None = None, address: str | None = None, workers: int | None = None,
                 threads: int = 1, on_prompt: Callable[[int], None] | None = None, num_cpus: int | None = None,
                 gpus_per_worker: float = 1.0):
    """``score_pool`` with the pool sharded over Ray actors: returns (``ScoringResult``, ``RayJob``).

    Shards go to ``gradients`` (default next to ``out``, as ``score_pool`` does) and stay there, so a rerun
    resumes; ``out`` is written by the final pass, the same file a single process writes.  ``gpus_per_worker``
    below 1 lets several actors share a GPU (a smoke test on one GPU)."""
    from cropi.rollouts.trajectory_store import store_meta
    from cropi.scores.engine import default_gradients_dir

    out = Path(out).resolve()
    root = Path(gradients).resolve() if gradients is not None else default_gradients_dir(out)
    pool = str(Path(pool_store).resolve())
    vals = {name: str(Path(p).resolve()) for name, p in val_stores.items()}
    n = int(store_meta(pool)["num_prompts"])  # missing stores stop here, before Ray starts
    for p in vals.values():
        store_meta(p)
    with _job(address, workers, threads, cfg, num_cpus, gpus_per_worker) as (ws, ray_start, t0):
        phases, tick = {}, [time.perf_counter()]

        def phase(name: str) -> None:
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - tick[0]
            tick[0] = now

        mode = ws.run([_Task("resolve_mode", (pool, vals, cfg))])[0]
        ranges = shard_plan(n, cfg.select.score.chunk_size, _existing_shards(root, mode), TASKS_PER_WORKER * len(ws.actors))
        means_ref = None
        pool_tasks = lambda m: [_Task("project_pool", (pool, str(root), cfg, a, b, vals, m), b - a)  # noqa: E731
                                for a, b in ranges]
        if mode == "exact":  # each set's mean once, on one actor, then shared by every shard and the final pass
            means = ws.run([_Task("validation_mean", (name, p, cfg)) for name, p in vals.items()])
            means_ref = ws.ray.put(dict(zip(vals, means)))
            phase("validation means")
            ws.run(pool_tasks(means_ref), on_prompt)
            phase("pool shards")
        else:
            ws.run([_Task("project_validation", (name, p, str(root), cfg)) for name, p in vals.items()]
                   + pool_tasks(None), on_prompt)
            phase("validation and pool shards")
        result = ws.run([_Task("score", (pool, vals, str(out), cfg, str(root), means_ref))])[0]
        phase("final pass")
        job = RayJob(len(ws.actors), ws.device, ws.threads, ws.shards, ray_start, ws.start_seconds,
                     time.perf_counter() - t0, phases)
    return result, job


def collect_on_ray(cfg: RunConfig, problems: Sequence, out: str | Path, ccfg, policy_tag: str = "base",
                   address: str | None = None, workers: int | None = None, threads: int = 1,
                   on_prompts: Callable[[int], None] | None = None, num_cpus: int | None = None) -> RayJob:
    """``collect`` with its chunks dealt over Ray actors (round-robin shards, as ``--shard I/N`` deals them):
    the store is identical to a single-process collection with the same thread count; resumable."""
    out = Path(out).resolve()
    n_chunks = -(-len(problems) // ccfg.chunk_size)
    with _job(address, workers, threads, cfg, num_cpus) as (ws, ray_start, t0):
        shards = max(1, min(n_chunks, TASKS_PER_WORKER * len(ws.actors)))
        ref = ws.ray.put([p.to_dict() for p in problems])
        sizes = [sum(min(ccfg.chunk_size, len(problems) - c * ccfg.chunk_size) for c in range(i, n_chunks, shards))
                 for i in range(shards)]
        ws.run([_Task("collect", (ref, str(out), ccfg, policy_tag, i, shards), sizes[i]) for i in range(shards)],
               on_prompts)
        return RayJob(len(ws.actors), ws.device, ws.threads, ws.shards, ray_start, ws.start_seconds,
                      time.perf_counter() - t0, {})


def smoke_check(work: str | Path, device: str = "cuda", quick: bool = False) -> dict:
    """``python -m lab.bench gpu``'s Ray check: a small embedded pool scored by one process and by 2 Ray workers (sharing
    one GPU on a CUDA device) at one torch thread; whether the scores and the pool store are bit-identical."""
    import pyarrow.parquet as pq
    import torch

    from cropi.config import load_config
    from cropi.policy import load_policy
    from cropi.rollouts.trajectory_store import CollectConfig, collect
    from cropi.scores.engine import default_gradients_dir, score_pool
    from cropi.tasks.loading import load_data

    def chunks(out: Path) -> dict:
        return {f.name: table_bits(pq.read_table(f)) for d in sorted(default_gradients_dir(out).glob("pool-exact*"))
                for f in sorted(d.glob("chunk-*.parquet"))}

    work = Path(work)
    pool_size, chunk = (24, 4) if quick else (256, 32)
    cfg = load_config(None, [f"model.device={device}", f"data.suite.pool_size={pool_size}", "data.suite.val_size=16",
                             "select.score.mode=exact", f"select.score.chunk_size={chunk}"])
    suite = load_data(cfg.data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = load_policy("tiny", device)
        ccfg = CollectConfig.from_rollout(cfg.rollout)
        pool = collect(policy, suite.pool, work / "pool", ccfg)
        vals = {name: collect(policy, probs, work / f"val-{name}", ccfg) for name, probs in suite.validation.items()}
        one, ray_out = work / "one.parquet", work / "ray.parquet"
        t0 = time.perf_counter()
        score_pool(policy, pool, vals, one, cfg)
        one_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    with ray_session(num_cpus=None if device != "cpu" else max(2, usable_cores())) as ray_start:
        _, job = score_on_ray(cfg, pool, vals, ray_out, workers=2, threads=1,
                              gpus_per_worker=0.5 if device.startswith("cuda") else 1.0)
    return {"pool_prompts": pool_size, "workers": job.workers, "worker_device": job.device,
            "identical": table_bits(pq.read_table(one)) == table_bits(pq.read_table(ray_out)) and chunks(one) == chunks(ray_out),
            "one_process_seconds": one_seconds, "ray_start_seconds": ray_start,
            "actor_start_seconds": job.actor_start_seconds, "ray_job_seconds": job.seconds, "phases": job.phases}


__all__ = ["score_on_ray", "smoke_check", "collect_on_ray", "ray_session", "shard_plan", "RayJob", "WorkerLost", "ShardWorker",
           "FAIL_AFTER_CHUNKS_ENV"]
