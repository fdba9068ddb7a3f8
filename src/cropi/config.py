"""Run configuration: nested dataclasses, loadable from YAML and overridable with ``section.key=value``.

Every field is declared with a one-line help and, where the value has a legal range, a check; ``validate``
runs every check when a config is loaded, so bad values fail before any output is written.  Every run folder
stores the resolved config (``config.yaml``), so a result can be reproduced from its folder alone:
``cropi train --config RUN/config.yaml``.  docs/config.md lists every key (``cropi config --list``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, get_type_hints

import yaml

from cropi.errors import ConfigError
from cropi.typed import InvalidValue, coerce, from_dict, to_dict  # noqa: F401 (part of this module's API)
from cropi.tasks.synthetic import SuiteConfig, suite_problems

Check = Callable[[Any], "str | None"]  # None when the value is legal, else what is expected


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be > {low}"


def fraction(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def in_unit_interval(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def setting(default: Any = None, help: str = "", check: Check | None = None, *,
            factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its one-line help (``cropi config --list``) and an optional check of its value."""
    metadata = {"help": help, **({"check": check} if check else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    """Where problems come from: the embedded suite, or the user's own files."""

    suite: SuiteConfig = setting(factory=SuiteConfig, help="The embedded synthetic task suite (used without --pool).")
    pool_file: str | None = setting(None, "Training pool file (JSONL / Parquet); replaces the embedded pool.")
    validation_files: list[str] = setting(factory=list, help="Validation sets NAME=PATH, one per file; their "
                                          "names mark the test splits of the same name as targeted.")
    test_files: list[str] = setting(factory=list, help="Test splits NAME=PATH, one per file.")
    fields: dict[str, str] = setting(factory=dict, help="Problem field -> column of your files, e.g. {prompt: question}.")
    answer_format: str = setting("plain", "How gold answers are read: plain, gsm8k (after ####), boxed (last \\boxed{}).",
                                 one_of("plain", "gsm8k", "boxed"))


@dataclass
class ModelConfig:
    name: str = setting("tiny", "The policy: tiny (embedded), smollm2 (fetched), an HF folder or hub id.")
    device: str = setting("auto", "cpu, cuda (or cuda:N), or auto (cuda when available).")
    dtype: str = setting("float32", "Weights dtype: float32, bfloat16 or float16.",
                         one_of("float32", "bfloat16", "float16"))
    chat_template: bool = setting(True, "Wrap each prompt in the tokenizer's chat template, when it has one; false "
                                  "feeds prompts as written (few-shot completion prompts).")
    trainable_blocks: int = setting(0, "Train only the last N transformer blocks and the final norm (influence is "
                                    "scored on their gradients); 0 trains every parameter.", at_least(0))


@dataclass
class RolloutConfig:
    group_size: int = setting(8, "Responses sampled per prompt (G).", at_least(1))
    temperature: float = setting(1.0, "Sampling temperature; behaviour log-probs are stored at it.", above(0))
    top_p: float = setting(1.0, "Nucleus mass; must be 1.0: the stored behaviour log-probs are of the full softmax, "
                           "so responses drawn from a nucleus would bias the ratios of influence scoring and training.",
                           fraction)
    # the embedded suite's answers are at most 7 characters
    max_new_tokens: int = setting(10, "Response length cap in tokens.", at_least(1))
    batch_size: int = setting(512, "Sequences per generation batch.", at_least(1))
    seed: int = setting(0, "Seed of the behaviour rollouts (`cropi collect`, and the curriculum's behaviour stores); "
                        "responses are keyed by (seed, prompt id, sample index).")
    backend: str = setting("hf", "Engine sampling the behaviour stores (`cropi collect`, the curriculum's collections "
                           "and refreshes): hf (built in) or vllm (the vllm extra and a GPU; needs top_p = 1).",
                           one_of("hf", "vllm"))


@dataclass
class FilterConfig:
    """How each GRPO step builds its batch of ``train.prompts_per_step`` groups (the per-batch rules of
    ``cropi.selection``).  ``none`` trains on the next prompts of the seeded order, whatever their rewards."""

    method: str = setting("none", "none (plain GRPO) or a per-batch rule: dapo, greso, online_filter, "
                          "online_influence, cropi_harvest (`cropi train --help` says what each does); a selector "
                          "with a batch rule of its own sets it.")
    # verl's DAPO recipe samples 3x the train batch per generation batch
    gen_batch_prompts: int = setting(96, "Prompts sampled per generation batch (dapo, online_filter, "
                                     "online_influence; greso's largest).", at_least(1))
    max_num_gen_batches: int = setting(10, "Generation batches at most per step; then the batch is filled with "
                                       "groups that had equal rewards (they add no gradient).", at_least(1))
    screen_samples: int = setting(4, "online_filter, online_influence: responses per prompt in the screening round (fewer than G).", at_least(1))
    greso_p_easy: float = setting(0.5, "greso: starting exploration probability of prompts whose groups were all "
                                  "correct.", in_unit_interval)
    greso_p_hard: float = setting(0.5, "greso: starting exploration probability of prompts whose groups were all "
                                  "wrong.", in_unit_interval)
    greso_step: float = setting(0.01, "greso: how far an exploration probability moves per step.", in_unit_interval)
    # GRESO's code splits the target one third all-correct, two thirds all-wrong
    greso_target: float = setting(0.25, "greso: share of the sampled groups that may have equal rewards (a third "
                                  "of it all-correct, two thirds all-wrong); the probabilities move towards it.",
                                  in_unit_interval)
    greso_p_min: float = setting(0.05, "greso: the least exploration probability.", in_unit_interval)
    greso_p_max: float = setting(0.95, "greso: the largest exploration probability.", in_unit_interval)
    influence_candidates: float = setting(2.0, "online_influence: screened prompts with mixed rewards ranked per step, "
                                          "as a multiple of train.prompts_per_step.", at_least(1))
    influence_refresh: int = setting(10, "online_influence: re-sample the validation groups and their mean gradients "
                                     "every this many steps.", at_least(1))
    greso_min_gen_prompts: int = setting(16, "greso: the fewest prompts of an adaptive generation batch.", at_least(1))
    screen_skip_p: float | None = setting(None, "online_filter, online_influence: GRESO's pre-rollout skip in front "
                                          "of the screen: a prompt whose last z screens in a row gave the batch "
                                          "nothing is screened again with probability max(p^z, 0.01); 1 screens "
                                          "every prompt.  Unset: 0.5 for online_influence (chosen on validation), "
                                          "1 for online_filter (as published).", in_unit_interval)
    screen_skip_ranked_out: bool = setting(True, "online_influence: a mixed prompt ranked out of the batch counts "
                                           "as a screen that gave the batch nothing (as equal rewards do).")
    harvest_share: float = setting(0.5, "cropi_harvest: share of each generation batch drawn from the prompts "
                                   "ranked by harvested influence; the rest explore the stream behind GRESO's skip.",
                                   in_unit_interval)
    harvest_top: float = setting(0.1, "cropi_harvest: only prompts in this top fraction of the harvested ranking "
                                 "(all scores held; at least one prompt) are drawn from it.", in_unit_interval)
    # fewest steps to full data's validation threshold among the probes (lab/results/probe-validation-harvest.json)
    harvest_family_decay: float = setting(0.5, "cropi_harvest: the stream keeps a prompt of the family ranked r-th "
                                          "by harvested influence (a running mean per family, fused across "
                                          "validation sets) with probability decay^(r-1), at least 0.05; 1 weighs "
                                          "every family alike.", in_unit_interval)
    harvest_gap: int = setting(10, "cropi_harvest: steps before a trained prompt may be drawn again from the "
                               "ranking.", at_least(1))
    harvest_max_age: int = setting(100, "cropi_harvest: a harvested score older than this many steps is forgotten "
                                   "(the prompt returns to the stream).", at_least(1))
    harvest_val_every: int = setting(25, "cropi_harvest: recompute the validation mean gradients with POPI from "
                                     "the stored validation groups every this many steps (no sampling).", at_least(1))
    harvest_val_resample: int = setting(200, "cropi_harvest: sample the validation groups afresh every this many "
                                        "steps.", at_least(1))
    harvest_score: str = setting("cosine", "cropi_harvest: cosine or dot (inner product) of a harvested gradient "
                                 "with each validation mean.", one_of("cosine", "dot"))


@dataclass
class TrainConfig:
    # crossed full data's best in 180 validation steps against the curriculum's 269 (lab/results/probe-validation.md)
    selector: str = setting("cropi_harvest", "Which prompts GRPO trains on: a rule (`cropi train --help` lists them; "
                            "cropi_harvest reads influence off the trainer's own backward, cropi is the paper's "
                            "curriculum, full is plain GRPO), optionally with +flags, e.g. cropi+greso.")
    # full-data GRPO on the default suite plateaus by about step 450 on the validation sets
    steps: int = setting(600, "GRPO steps in all (the budget), over every curriculum stage.", at_least(1))
    prompts_per_step: int = setting(32, "Prompts per GRPO step (each sampled G times).", at_least(1))
    lr: float = setting(1e-4, "Adam learning rate; chosen on the validation sets "
                        "(lab/results/lr_probe_validation.json).", above(0))
    weight_decay: float = setting(0.0, "AdamW weight decay.", at_least(0))
    betas: tuple[float, float] = setting((0.9, 0.99), "Adam betas (beta1, beta2).",
                                         lambda v: None if all(0 <= b < 1 for b in v) else "must be in [0, 1)")
    clip_eps: float = setting(0.2, "PPO clip of the token ratio; it acts only when ppo_epochs > 1.", above(0))
    aggregation: str = setting("grpo", "Loss aggregation: grpo (per-sequence token mean) or dr_grpo "
                               "(constant normaliser max_new_tokens).", one_of("grpo", "dr_grpo"))
    kl_coef: float = setting(0.0, "Weight of KL(pi_theta || pi_ref) to the starting policy; 0 keeps no reference model.",
                             at_least(0))
    ppo_epochs: int = setting(1, "Optimizer updates per rollout batch (> 1 makes the clip matter).", at_least(1))
    micro_batch: int = setting(256, "Sequences per forward/backward (gradient accumulation).", at_least(1))
    max_grad_norm: float = setting(1.0, "Gradient-norm clip.", above(0))
    seed: int = setting(0, "Training seed: prompt order and sampling.")
    eval_every: int = setting(20, "Greedy evaluation every this many steps (and at the end).", at_least(1))
    checkpoint_every: int = setting(50, "Checkpoint every this many steps (and at the end); --resume restarts there.",
                                    at_least(1))
    filter: FilterConfig = setting(factory=FilterConfig, help="How each step's batch is built (the peers' methods).")


@dataclass
class ScoreConfig:
    """Influence scoring: projector, what to score, and how many validation prompts to use."""

    # auto by default: exact scoring has no projection error and measured faster per prompt than the SJLT
    # projection on SmolLM2 gradients (lab/results/exact_scoring.md)
    mode: str = setting("auto", "projected (sparse random projection to k dims, the gradient store), exact "
                        "(each prompt's full gradient against each validation set's exact mean gradient; no "
                        "projection error), or auto (exact where the validation means fit in exact_memory_gb).",
                        one_of("projected", "exact", "auto"))
    exact_memory_gb: float = setting(2.0, "Memory allowed for the exact validation means in auto mode (GB).", above(0))
    # hashed SJLT without a sparsifier at k = 8192 had the best fidelity per second (lab/results/projection.md)
    kind: str = setting("sjlt", "Projector: sjlt, gaussian or rademacher (of the flat gradient, k dims), or "
                        "factored-sjlt (each weight's gradient P G Q^T, factor_k x factor_k, computed from module hooks "
                        "inside one backward over batch_size prompts: no per-prompt gradient is formed).",
                        one_of("sjlt", "gaussian", "rademacher", "factored-sjlt"))
    k: int = setting(8192, "Projection dimension of sjlt, gaussian and rademacher (SJLT costs the same at any k).",
                     at_least(1))
    factor_k: int = setting(16, "factored-sjlt: dimension on each side of a weight (factor_k^2 numbers per weight; "
                            "a 1-D parameter gets at most as many).", at_least(1))
    seed: int = setting(0, "Projector seed.")
    keep: float = setting(1.0, "Uniform keep fraction of coordinates before projecting (1 = all).",
                          fraction)
    exclude: list[str] = setting(factory=list, help="Parameter name globs left out of scoring, e.g. '*embed_tokens*'.")
    clip_eps: float | None = setting(None, "PPO clip applied to the off-policy ratios when scoring; null (the "
                                     "method's) differentiates the unclipped surrogate, since the trainer's clip "
                                     "never acts at ppo_epochs=1, where its ratio is exactly 1.", above(0))
    acg: bool = setting(False, "The ACG variant of POPI: self-normalised sequence weights for the group's mean "
                        "and std.")
    max_val_prompts: int = setting(100, "Validation prompts used per validation set (METHOD.md §4).", at_least(1))
    stage: int = setting(0, "Curriculum stage, recorded in the gradient stores.", at_least(0))
    # factored exact scoring of 32 prompts a backward was the fastest way with precision@10% >= 0.90 against exact
    # scores, on the tiny policy and on SmolLM2 (lab/results/factored_scoring*.json)
    batch_size: int = setting(32, "Prompts per backward pass (at most; factored batches also stop at "
                              "factor_memory_gb); 1 with factored false is the per-prompt loop.", at_least(1))
    chunk_size: int = setting(64, "Prompts per gradient-store chunk (resume unit, shard granularity).", at_least(1))
    factored: bool = setting(True, "Keep the gradients of bias-free linear weights factored per prompt (inputs and "
                             "output-gradients from one backward over select.score.batch_size prompts, each prompt run "
                             "once for its responses): exact scores and norms never form them.")
    factor_memory_gb: float = setting(2.0, "factored and factored-sjlt: memory allowed for one backward's factors "
                                      "(every token's input and output-gradient at every linear weight); a batch "
                                      "closes early above it.", above(0))


@dataclass
class SelectConfig:
    """Data selection and the curriculum (docs/method.md §5): ``stages`` rounds of score -> select -> train
    ``train.steps / stages`` steps.  Static selectors choose once; ``cropi`` re-scores every stage.  Optimizer
    state is carried across stages: a stage boundary changes the data, not the optimisation problem.  A key left
    unset (null) takes the selector's default (``cropi.selection.registry``), else the general one."""

    ratio: float = setting(0.1, "Share of the pool kept by random, learnability, pass_rate and static_influence, and "
                           "by cropi where select.size is 0.", fraction)
    size: int | None = setting(None, "Prompts selected per stage whatever the pool size (0 = ratio x pool).  Unset: "
                               "80 for cropi, 64 for gradalign, else 0.", at_least(0))
    stages: int | None = setting(None, "Curriculum stages over train.steps, at most train.steps for the selectors "
                                 "that re-score at each.  Unset: 10-step stages for cropi and gradalign, else 4.",
                                 at_least(1))
    stores: str | None = setting(None, "Folder of the behaviour stores (pool and validation trajectories of the "
                                 "starting policy); default RUN/stores.  A comparison shares one between its runs.")
    # the off-policy estimate is unreliable once the behaviour policy and the current one drift apart
    drift_ess_threshold: float = setting(0.0, "Re-collect the pool with the current policy when the median "
                                         "sequence-level ESS (in (0, 1]) falls below this (0 = never).", in_unit_interval)
    # with the behaviour policy's rewards, a prompt the policy has since mastered still looks mixed
    refresh_every: int = setting(0, "Re-scoring selectors (cropi, gradalign): re-collect pool and validation trajectories with the current policy "
                                 "every this many stages, before scoring (0 = never).", at_least(0))
    reprobe_prompts: int = setting(0, "Re-sample this many zero-variance prompts per stage with the current policy, "
                                   "so they can enter the selection once learnable (0 = off).", at_least(0))
    reprobe_samples: int = setting(8, "Responses per re-probed prompt.", at_least(1))
    # the trainer samples fresh groups of the prompts it trains on anyway: a free refresh of exactly those rows
    reuse_rollouts: bool = setting(False, "Re-scoring selectors: each later stage scores a prompt the trainer "
                                   "trained on from its latest trained group (sampled by the policy of that step) "
                                   "instead of its older behaviour rows; a group with equal rewards leaves the "
                                   "prompt out until it is sampled again.")
    # stage 0's subset is the same for static influence and cropi; scoring cost decides cropi's wall-clock
    candidates: int | None = setting(None, "Score only a seeded random subset of this many pool prompts per stage "
                                     "(0 = the whole pool, as the authors).  Unset: 1,280 for cropi and gradalign, "
                                     "else 0.", at_least(0))
    score: ScoreConfig = setting(factory=ScoreConfig, help="Influence scoring.")


@dataclass
class EvalConfig:
    max_new_tokens: int = setting(10, "Response length cap of the greedy evaluation.", at_least(1))
    batch_size: int = setting(512, "Sequences per evaluation batch.", at_least(1))
    # the validation sets hold targeted families only and their first prompts drive the influence scores, so
    # evaluating on them favours the influence selectors; validation_unscored leaves those prompts out
    split: str = setting("test", "test (the reported curves); validation (choose settings without looking at "
                         "the test splits); or validation_unscored: each validation set without its first "
                         "select.score.max_val_prompts prompts, the ones influence scoring reads, so that selectors "
                         "can be set against each other on validation.",
                         one_of("test", "validation", "validation_unscored"))


@dataclass
class RunConfig:
    data: DataConfig = setting(factory=DataConfig, help="Problems.")
    model: ModelConfig = setting(factory=ModelConfig, help="The policy.")
    rollout: RolloutConfig = setting(factory=RolloutConfig, help="Sampling.")
    train: TrainConfig = setting(factory=TrainConfig, help="GRPO.")
    eval: EvalConfig = setting(factory=EvalConfig, help="Evaluation.")
    select: SelectConfig = setting(factory=SelectConfig, help="Selection and curriculum.")


# TRL GRPOConfig names accepted by `--set` as aliases of cropi's keys (docs/config.md).
TRL_NAMES = {
    "num_generations": "rollout.group_size",
    "max_completion_length": "rollout.max_new_tokens",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "learning_rate": "train.lr",
    "max_steps": "train.steps",
    "seed": "train.seed",
    "beta": "train.kl_coef",
    "epsilon": "train.clip_eps",
    "loss_type": "train.aggregation",
    "num_iterations": "train.ppo_epochs",
    "max_grad_norm": "train.max_grad_norm",
    "weight_decay": "train.weight_decay",
    "eval_steps": "train.eval_every",
    "save_steps": "train.checkpoint_every",
}


def apply_override(cfg: Any, override: str) -> str:
    """Apply one ``a.b.c=value`` override (or ``trl_name=value``, see ``TRL_NAMES``) in place; return its key."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected section.key=value")
    dotted, raw = override.split("=", 1)
    dotted = TRL_NAMES.get(dotted.strip(), dotted.strip())
    parts = dotted.split(".")
    obj = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
            raise ConfigError(f"override {override!r}: no section {p!r}")
        obj = getattr(obj, p)
    key = parts[-1]
    if not dataclasses.is_dataclass(obj) or key not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"override {override!r}: unknown key {key!r}")
    value = yaml.safe_load(raw) if raw.strip() else ""
    setattr(obj, key, coerce(get_type_hints(type(obj))[key], value, dotted))
    return dotted


def _settings(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, dataclasses.Field, Any]]:
    """(dotted key, value, field, annotation) of every leaf setting of ``cfg``, in declaration order."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _settings(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f, hints[f.name]


def problems(cfg: RunConfig) -> Iterator[tuple[str, str]]:
    """(key, what is wrong) for every invalid value of ``cfg``.  The selector's name is checked by its
    registry (``cropi.selection.make_selector``), which sits above the config."""
    for key, value, f, _ in _settings(cfg):
        check = f.metadata.get("check")
        message = check(value) if check is not None and value is not None else None  # None: the key's "off"
        if message:
            yield key, f"{value!r}: {message}"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.model.device):
        yield "model.device", f"{cfg.model.device!r}: must be auto, cpu, cuda, cuda:N or mps"
    if cfg.rollout.top_p != 1.0:
        # every run's samples can become POPI's behaviour trajectories (collections, the trainer's reused groups,
        # online_influence's screens), whose ratios divide by the full softmax: draws from a nucleus bias them
        yield "rollout.top_p", (f"{cfg.rollout.top_p!r}: must be 1.0: behaviour log-probs for influence scoring are "
                                "of the full softmax")
    yield from suite_problems(cfg.data.suite)


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ``ConfigError`` (``section.key: value: what is expected``) at the first invalid value."""
    for key, problem in problems(cfg):
        raise InvalidValue(key, problem)
    return cfg


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line of a composed YAML document."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            lines[key] = k.start_mark.line + 1
            lines.update(_key_lines(v, key + "."))
    return lines


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The defaults, then the YAML file at ``path``, then ``overrides`` in order; validated.  A bad value
    from the file is reported at its line (``FILE:LINE: key: ...``)."""
    cfg, lines = RunConfig(), {}
    p = Path(path) if path is not None else None
    if p is not None:
        try:
            text = p.read_text(encoding="utf-8")
            data = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config ({exc.strerror})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        try:
            cfg = from_dict(RunConfig, data)
        except InvalidValue as exc:
            raise ConfigError(f"{p}:{lines[exc.key]}: {exc}" if exc.key in lines else f"{p}: {exc}") from None
    overridden = {apply_override(cfg, o) for o in overrides or []}
    for key, problem in problems(cfg):
        if key in lines and key not in overridden:
            raise ConfigError(f"{p}:{lines[key]}: {key}: {problem}")
        raise InvalidValue(key, problem)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _inline(value: Any) -> str:
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=1 << 20).strip()
    return text.removesuffix("...").strip()


@dataclass(frozen=True)
class Setting:
    key: str  # dotted, e.g. train.lr
    default: str  # inline YAML
    help: str
    type: Any  # the field's annotation


def settings() -> list[Setting]:
    """Every config key in declaration order, with its default and help."""
    return [Setting(key, _inline(value), f.metadata.get("help", ""), tp) for key, value, f, tp in _settings(RunConfig())]


def settings_table() -> str:
    """Every config key with its default and help, one per line (``cropi config --list``, docs/config.md)."""
    rows = settings()
    kw = max(len(s.key) for s in rows)
    dw = max(len(s.default) for s in rows if len(s.default) <= 12)  # a long list default pushes its own help right
    return "\n".join(f"{s.key:<{kw}}  {s.default:<{dw}}  {s.help}".rstrip() for s in rows)
