"""The trajectory store: G sampled responses per prompt with rewards and behaviour log-probs, in Parquet.

Layout: a folder holding ``meta.json`` (what produced the store) and ``part-NNNNNN.parquet`` chunks, one per
``chunk_size`` consecutive prompts of the collection order.  Each chunk is written to a temporary name and
renamed, so a crash never leaves a torn chunk; a rerun skips chunks already present (resume), and shards
(``shard_index`` of ``num_shards``) take disjoint chunks, so sharded, resumed and single collections are
identical (with the ``hf`` backend; meta.json names the backend that sampled, ``backend_identity``, and a
collection resumes only with the same one).  One row per response:

    prompt_id, sample_index, prompt_ids, response_ids, behavior_logprobs, reward, finish_reason,
    policy_tag, temperature, top_p

The Parquet file metadata carries the model and tokenizer fingerprints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from cropi import SCHEMA_VERSION
from cropi.errors import ConfigError, CropiError
from cropi.io import atomic_path, chunk_is_done, read_json, read_parquet, write_json
from cropi.policy import Policy
from cropi.rollouts.backend import RolloutBackend, make_backend
from cropi.rollouts.sampler import SamplingParams
from cropi.tasks import Problem, grade_many

SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample_index", pa.int32()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("response_ids", pa.list_(pa.int32())),
        ("behavior_logprobs", pa.list_(pa.float32())),
        ("reward", pa.float32()),
        ("finish_reason", pa.string()),
        ("policy_tag", pa.string()),
        ("temperature", pa.float32()),
        ("top_p", pa.float32()),
    ]
)


@dataclass
class PromptGroup:
    """One prompt's stored responses: the rows of the store with the same prompt id, in sample order."""

    prompt_id: str
    prompt_ids: list[int]
    response_ids: list[list[int]]
    behavior_logprobs: list[list[float]]
    rewards: list[float]
    temperature: float

    @property
    def zero_variance(self) -> bool:
        """All rewards equal: every advantage is 0, so the group carries no policy gradient."""
        return max(self.rewards) == min(self.rewards)


_GROUP_COLUMNS = ("prompt_id", "prompt_ids", "response_ids", "behavior_logprobs", "reward", "temperature")


def prompt_groups(rows: Iterable[dict]) -> list[PromptGroup]:
    """Group store rows (``read_store(...).to_pylist()``) by prompt id, in first-seen order."""
    groups: dict[str, PromptGroup] = {}
    for r in rows:
        g = groups.get(r["prompt_id"])
        if g is None:
            g = groups[r["prompt_id"]] = PromptGroup(r["prompt_id"], list(r["prompt_ids"]), [], [], [],
                                                     float(r["temperature"]))
        g.response_ids.append(list(r["response_ids"]))
        g.behavior_logprobs.append(list(r["behavior_logprobs"]))
        g.rewards.append(float(r["reward"]))
    return list(groups.values())


@dataclass(frozen=True)
class CollectConfig:
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0  # must be 1: influence scoring divides by the full softmax (``collect`` refuses others)
    max_new_tokens: int = 16
    seed: int = 0
    chunk_size: int = 64  # prompts per Parquet chunk (and per resume unit)
    batch_size: int = 512  # rows per generation batch
    backend: str = "hf"  # rollout backend name (rollouts/backend.py), used when collect() is given none

    @classmethod
    def from_rollout(cls, rollout, group_size: int | None = None, seed: int | None = None) -> "CollectConfig":
        """A run's ``rollout`` config section as a collection setup (``group_size`` / ``seed`` overridden)."""
        return cls(group_size=group_size or rollout.group_size, temperature=rollout.temperature,
                   top_p=rollout.top_p, max_new_tokens=rollout.max_new_tokens,
                   seed=rollout.seed if seed is None else seed, batch_size=rollout.batch_size,
                   backend=getattr(rollout, "backend", "hf"))


def _chunk_path(folder: Path, chunk: int) -> Path:
    return folder / f"part-{chunk:06d}.parquet"


def _check_meta(folder: Path, meta: dict) -> None:
    """A store only ever holds one policy's samples with one sampling setup."""
    path = folder / "meta.json"
    if not path.exists():
        write_json(path, meta)
        return
    old = read_json(path)
    old = {"backend": "hf", **old}  # stores written before backends were recorded are hf stores
    old.setdefault("backend_identity", {"name": old["backend"]})  # and before identities: the name alone
    for key in ("model_fingerprint", "tokenizer_fingerprint", "temperature", "top_p", "group_size",
                "max_new_tokens", "seed", "chunk_size", "prompt_order_hash", "backend", "backend_identity"):
        if old.get(key) != meta.get(key):
            raise CropiError(
                f"{path}: existing store has {key}={old.get(key)!r}, this collection has {meta.get(key)!r}; "
                "use a new output folder"
            )


def _order_hash(problems: Sequence[Problem]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(p.id for p in problems).encode()).hexdigest()[:16]


def collect(
    policy: Policy,
    problems: Sequence[Problem],
    out_dir: str | Path,
    cfg: CollectConfig = CollectConfig(),
    policy_tag: str = "base",
    shard_index: int = 0,
    num_shards: int = 1,
    on_prompts: Callable[[int], None] | None = None,
    backend: RolloutBackend | None = None,
) -> Path:
    """Sample ``cfg.group_size`` responses per problem with ``policy`` and store them (resumable).

    Sampling randomness is keyed by (seed, prompt id, sample index).  ``backend`` samples (default: the one
    named by ``cfg.backend``, on ``policy``); ``policy`` still encodes prompts, decodes responses and names the
    weights in the meta."""
    if cfg.top_p != 1.0:  # the stored log-probs are of the full softmax: ratios against a nucleus's draws are biased
        raise ConfigError(f"top_p={cfg.top_p!r}: must be 1.0: behaviour log-probs for influence scoring are of the "
                          "full softmax")
    if backend is None:  # built here, so closed here: an engine's GPU memory goes back to scoring and training
        backend = make_backend(cfg.backend, policy, cfg.batch_size)  # a missing engine fails here: nothing written
        try:
            return collect(policy, problems, out_dir, cfg, policy_tag, shard_index, num_shards, on_prompts, backend)
        finally:
            backend.close()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise CropiError(f"{folder}: duplicate problem ids in the collection")
    fp = policy.fingerprint()
    meta = {
        "model": policy.name,
        "model_fingerprint": fp["model"],
        "tokenizer_fingerprint": fp["tokenizer"],
        "policy_tag": policy_tag,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "group_size": cfg.group_size,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "chunk_size": cfg.chunk_size,
        "num_prompts": len(problems),
        "prompt_order_hash": _order_hash(problems),
        "backend": backend.name,
        "backend_identity": backend.identity(),
    }
    _check_meta(folder, meta)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    n_chunks = (len(problems) + cfg.chunk_size - 1) // cfg.chunk_size
    for chunk in range(shard_index, n_chunks, num_shards):
        members = problems[chunk * cfg.chunk_size : (chunk + 1) * cfg.chunk_size]
        path = _chunk_path(folder, chunk)
        if chunk_is_done(path, len(members) * cfg.group_size):
            if on_prompts:
                on_prompts(len(members))
            continue
        table = _sample_chunk(policy, backend, members, params, cfg, policy_tag, fp["model"])
        schema_meta = {b"cropi": json.dumps({**meta, "schema_version": SCHEMA_VERSION}).encode()}
        with atomic_path(path) as tmp:
            pq.write_table(table.replace_schema_metadata(schema_meta), tmp)
        if on_prompts:
            on_prompts(len(members))
    return folder


def _sample_chunk(policy: Policy, backend: RolloutBackend, members: Sequence[Problem], params: SamplingParams,
                  cfg: CollectConfig, policy_tag: str, weights: str) -> pa.Table:
    g = cfg.group_size
    prompt_tokens = [policy.encode_prompt(p.prompt) for p in members]
    rows_prompts = [prompt_tokens[i] for i in range(len(members)) for _ in range(g)]
    keys = [(cfg.seed, p.id, s) for p in members for s in range(g)]
    gens = backend.generate(rows_prompts, keys, params, weights=weights)
    texts = [policy.decode_response(x.response_ids) for x in gens]
    rewards = grade_many([p for p in members for _ in range(g)], texts)
    groups = [(p.id, gens[i * g:(i + 1) * g], rewards[i * g:(i + 1) * g]) for i, p in enumerate(members)]
    return groups_table(groups, policy_tag, cfg.temperature, cfg.top_p)


def store_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    if not path.exists():
        raise CropiError(f"{path}: no trajectory store here (run `cropi collect` first)")
    return read_json(path)


def iter_prompt_groups(folder: str | Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, PromptGroup]]:
    """(position, group) for prompts [start, end) of the store's prompt order, one part in memory at a time."""
    folder = Path(folder)
    meta = store_meta(folder)
    n, per_part = int(meta["num_prompts"]), int(meta["chunk_size"])
    end = n if end is None else end
    for part in range(start // per_part, -(-end // per_part)):
        path = _chunk_path(folder, part)
        if not path.exists():
            raise CropiError(f"{path}: trajectory store is incomplete (part {part} missing); "
                             "finish `cropi collect` (rerun it to resume) before scoring")
        groups = prompt_groups(read_parquet(path, "rerun the `cropi collect` that made this store to recompute it",
                                            columns=list(_GROUP_COLUMNS)).to_pylist())
        first = part * per_part
        expected = min(per_part, n - first)
        if len(groups) != expected:
            raise CropiError(f"{path}: holds {len(groups)} prompts, expected {expected}")
        for i, g in enumerate(groups):
            if start <= first + i < end:
                yield first + i, g


def usable_prefix_end(folder: str | Path, max_usable: int) -> int:
    """The smallest end such that prompts [0, end) hold ``max_usable`` groups with mixed rewards (or the store's
    size): from the stored rewards alone, so no gradient is computed for prompts that would not be used."""
    seen = end = 0
    for pos, g in iter_prompt_groups(folder):
        end = pos + 1
        if not g.zero_variance:
            seen += 1
            if seen >= max_usable:
                break
    return end


def read_store(folder: str | Path) -> pa.Table:
    """All rows of a store, in collection order (chunk, then prompt, then sample index)."""
    folder = Path(folder)
    store_meta(folder)
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return SCHEMA.empty_table()
    return pa.concat_tables([read_parquet(p, "rerun the `cropi collect` that made this store to recompute it").replace_schema_metadata(None) for p in parts])


def pass_rates(folder: str | Path) -> dict[str, float]:
    """Mean stored reward per prompt id (the behaviour policy's pass rate)."""
    t = read_store(folder)
    sums: dict[str, list[float]] = {}
    for pid, r in zip(t.column("prompt_id").to_pylist(), t.column("reward").to_pylist()):
        sums.setdefault(pid, []).append(r)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def collection_complete(folder: str | Path) -> bool:
    meta = store_meta(folder)
    n_chunks = (meta["num_prompts"] + meta["chunk_size"] - 1) // meta["chunk_size"]
    n, size = meta["num_prompts"], meta["chunk_size"]
    return all(chunk_is_done(_chunk_path(Path(folder), c), min(size, n - c * size) * meta["group_size"])
               for c in range(n_chunks))


def subset_store(folder: str | Path, prompt_ids: Sequence[str], out_dir: str | Path) -> Path:
    """A store holding only ``prompt_ids``' rows of ``folder`` (in ``folder``'s order), e.g. a seeded candidate
    subset to score.  Same meta (fingerprints, sampling setup) with the new prompt count; one chunk."""
    folder = Path(folder)
    meta = store_meta(folder)
    wanted = set(prompt_ids)
    table = read_store(folder)
    mask = pa.array([p in wanted for p in table.column("prompt_id").to_pylist()])
    import hashlib

    return write_store(table.filter(mask), {**meta, "subset_of": str(folder), "prompt_order_hash": hashlib.sha256(
        "\n".join(sorted(wanted)).encode()).hexdigest()[:16]}, out_dir)


def write_store(table: pa.Table, meta: dict, out_dir: str | Path) -> Path:
    """``table`` (store rows, grouped by prompt) as a one-chunk store with ``meta`` and its prompt count."""
    out = Path(out_dir)
    n = len(set(table.column("prompt_id").to_pylist()))
    meta = {**meta, "num_prompts": n, "chunk_size": max(1, n)}
    out.mkdir(parents=True, exist_ok=True)
    schema_meta = {b"cropi": json.dumps({**meta, "schema_version": SCHEMA_VERSION}).encode()}
    with atomic_path(_chunk_path(out, 0)) as tmp:
        pq.write_table(table.replace_schema_metadata(schema_meta), tmp)
    write_json(out / "meta.json", meta)
    return out


def groups_table(groups: Sequence[tuple[str, Sequence, Sequence[float]]], policy_tag: str, temperature: float,
                 top_p: float) -> pa.Table:
    """Store rows of sampled groups ``(prompt id, generations, rewards)``, e.g. the groups a trainer sampled."""
    rows = [(pid, i, gen, r) for pid, gens, rewards in groups for i, (gen, r) in enumerate(zip(gens, rewards))]
    return pa.table(
        {
            "prompt_id": [pid for pid, *_ in rows],
            "sample_index": [i for _, i, *_ in rows],
            "prompt_ids": [list(g.prompt_ids) for *_, g, _ in rows],
            "response_ids": [list(g.response_ids) for *_, g, _ in rows],
            "behavior_logprobs": [list(g.behavior_logprobs) for *_, g, _ in rows],
            "reward": [float(r) for *_, r in rows],
            "finish_reason": [g.finish_reason for *_, g, _ in rows],
            "policy_tag": [policy_tag] * len(rows),
            "temperature": [temperature] * len(rows),
            "top_p": [top_p] * len(rows),
        },
        schema=SCHEMA,
    )
