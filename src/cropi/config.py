"""Run configuration: nested dataclasses, loadable from YAML and overridable with ``section.key=value``.

Every run folder stores the resolved config (``config.yaml``), so a result can be reproduced from its folder
alone: ``cropi train --config RUN/config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from cropi.errors import ConfigError
from cropi.tasks.synthetic import SuiteConfig


@dataclass
class DataConfig:
    """Where problems come from: the embedded suite, or the user's own files."""

    suite: SuiteConfig = field(default_factory=SuiteConfig)
    pool_file: str | None = None  # JSONL / Parquet; replaces the embedded pool
    validation_files: list[str] = field(default_factory=list)  # one validation set per file (targeted)
    test_files: list[str] = field(default_factory=list)  # one test split per file; targeted if its family is
    fields: dict[str, str] = field(default_factory=dict)  # Problem field -> column, e.g. {prompt: question}
    answer_format: str = "plain"  # plain | gsm8k (extract after ####) | boxed (last \boxed{})


@dataclass
class ModelConfig:
    name: str = "tiny"  # "tiny" (embedded), "smollm2" (fetched), an HF folder or hub id
    device: str = "auto"
    dtype: str = "float32"


@dataclass
class RolloutConfig:
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 10  # the embedded suite's answers are at most 7 characters
    batch_size: int = 512
    seed: int = 0  # seed of the behaviour rollouts (collect, and the curriculum's behaviour stores)


@dataclass
class TrainConfig:
    selector: str = "full"
    steps: int = 300
    prompts_per_step: int = 32
    lr: float = 1e-4  # chosen on the validation sets: 3e-4 and 1e-3 were worse on the embedded model, 2e-4 on an earlier one
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    clip_eps: float = 0.2
    aggregation: str = "grpo"  # grpo | dr_grpo
    kl_coef: float = 0.0  # KL(π_θ‖π_ref) to the starting policy; 0 = off (no reference model is kept)
    ppo_epochs: int = 1  # optimizer updates per rollout batch (>1 makes the clip matter)
    micro_batch: int = 256  # sequences per forward/backward (gradient accumulation)
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 15
    checkpoint_every: int = 50


@dataclass
class ScoreConfig:
    """Influence scoring (issue 3): projector, what to score, and how many validation prompts to use."""

    # Default from the projection benchmarks (`cropi bench`, benchmarks/results/projection.md): hashed SJLT, no
    # sparsifier, k = 8192.  Real SmolLM2 POPI gradients are heavy-tailed (top 1% of coordinates: ~90% of the
    # squared norm), so masks drop mass that carries the inner product.  Probe at k = 8192, RMS error / (‖x‖‖y‖)
    # on pairs of real gradients: keep 1 0.011, calibrated 10% 0.05, uniform 10% 0.09, uniform 1% 0.55; Spearman ρ
    # of projected vs exact influence cosines (30 SmolLM2 prompts, 3 seeds): keep 1 0.990 ± 0.007 (k = 1024:
    # 0.944), calibrated 10% 0.944 ± 0.033, uniform 1% 0.81 ± 0.17.  On CPU a mask is not even cheaper (its hash
    # per coordinate costs what SJLT's does): per SmolLM2 gradient keep 1 0.36 s, uniform 1% 0.63 s, calibrated
    # 10% 1.4 s.  SJLT's cost does not depend on k, so k = 8192 (cosine noise ~1/√k ≈ 0.011, under the 0.09-0.14
    # SD of exact cosines) costs what 1024 does, plus k floats per prompt.
    kind: str = "sjlt"
    k: int = 8192
    seed: int = 0
    keep: float = 1.0
    exclude: list[str] = field(default_factory=list)  # parameter globs left out of scoring
    # projected (sparse projection to k dims) | exact (full gradients against exact validation means) | auto
    mode: str = "projected"
    exact_memory_gb: float = 2.0  # auto: exact when the validation means fit in this much memory
    # PPO clip on the off-policy ratios when scoring; None differentiates the unclipped surrogate (the
    # trainer's clip never acts at ppo_epochs = 1, where its ratio is exactly 1)
    clip_eps: float | None = None
    max_val_prompts: int = 100  # per validation set (METHOD.md §4)
    stage: int = 0  # curriculum stage, recorded in the gradient stores
    batch_size: int = 1  # prompts per backward pass (1: one per prompt; batched was not faster on the tiny policy)
    chunk_size: int = 64  # prompts per gradient-store chunk (resume unit, shard granularity)


@dataclass
class SelectConfig:
    """Data selection and the CROPI curriculum (METHOD.md §5): ``stages`` rounds of score -> select -> train
    ``train.steps / stages`` steps.  Static selectors choose once; ``cropi`` re-scores every stage."""

    ratio: float = 0.1  # share of the pool trained on, the same for every selector
    stages: int = 1
    # Behaviour stores (pool and validation trajectories of the starting policy); default RUN/stores.  A
    # comparison shares one folder between its runs; its collection seconds are still charged to each run.
    stores: str | None = None
    # Re-collect the pool with the current policy when the median sequence-level ESS falls below this
    # (0 = never): the off-policy estimate is unreliable once β and π_θ drift apart.
    drift_ess_threshold: float = 0.0
    # cropi only: re-collect the pool and validation trajectories with the current policy every this many
    # stages, before scoring (0 = never).  The stored rewards then say which prompts are learnable *now*: with β's rewards
    # a prompt the policy has since mastered still looks mixed, and training on it gives all-correct groups.
    refresh_every: int = 0
    # Re-sample this many zero-variance ("blind-spot") prompts per stage with the current policy (0 = off),
    # ``reprobe_samples`` responses each, so they can enter the selection once they become learnable.
    reprobe_prompts: int = 0
    reprobe_samples: int = 8
    # Score only a seeded random subset of this many pool prompts per stage (0 = the whole pool); stage 0's
    # subset is the same for static influence and cropi.  Scoring cost decides whether cropi saves wall-clock.
    candidates: int = 0
    # Optimizer state is carried across stages: a stage boundary changes the data, not the optimisation
    # problem, and resetting Adam's moments would give cropi a warm-restart that full data does not get.
    score: ScoreConfig = field(default_factory=ScoreConfig)


@dataclass
class EvalConfig:
    max_new_tokens: int = 10
    batch_size: int = 512
    # "test" (the reported curves) or "validation": choose settings (a selector's stages, drift threshold, ...)
    # on the validation sets without looking at the test splits.  The embedded validation sets hold targeted
    # families only, and they also drive the influence scores, so they favour the influence selectors: use
    # them to rank variants of one selector, not to compare selectors.
    split: str = "test"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    select: SelectConfig = field(default_factory=SelectConfig)


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(x) for x in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the annotated type ``tp``."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is type(None) or tp is type(None):
        return None
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        elem = args[0] if args else Any
        out = [_coerce(elem, v, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (Any, Any)
        return {k: _coerce(vt, v, where) for k, v in value.items()}
    args = get_args(tp)
    if args:  # Optional / Union: None or the first non-None type that accepts the value
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(float(value)) if tp is int else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def apply_override(cfg: Any, override: str) -> None:
    """Apply one ``a.b.c=value`` override in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    dotted, raw = override.split("=", 1)
    parts = dotted.strip().split(".")
    obj = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
            raise ConfigError(f"override {override!r}: no section {p!r}")
        obj = getattr(obj, p)
    key = parts[-1]
    if not dataclasses.is_dataclass(obj) or key not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"override {override!r}: unknown key {key!r}")
    value = yaml.safe_load(raw) if raw.strip() else ""
    setattr(obj, key, _coerce(get_type_hints(type(obj))[key], value, dotted))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        cfg = from_dict(RunConfig, data, str(p))
    for o in overrides or []:
        apply_override(cfg, o)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
