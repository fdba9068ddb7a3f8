"""verl's hydra overrides as the cropi verl loop reads and writes them: which keys the loop owns, which settings
it refuses (a horizon-dependent schedule, another chat template), values quoted for hydra, and the verl
defaults a cropi config maps to, so that verl trains the loss cropi scores."""

from __future__ import annotations

import re
from typing import Sequence

from cropi.config import RunConfig
from cropi.errors import CropiError


# Keys the loop sets at every stage; a user override of one would break the resume arithmetic or the data flow.
RESERVED = {
    "data.train_files": "each stage's selection",
    "actor_rollout_ref.model.path": "--model",
    "trainer.default_local_dir": "--out (RUN/checkpoints)",
    "trainer.resume_mode": "the stage loop",
    "trainer.resume_from_path": "the stage loop",
    "trainer.total_training_steps": "--steps / --steps-per-stage",
    "trainer.total_epochs": "the stage loop (large enough for the stage's steps)",
}
# Keys whose non-default values make verl train with another learning-rate curve per stage, or on other prompt
# tokens than cropi scores (module docstring).
SCHEDULE_KEYS = ("actor_rollout_ref.actor.optim.lr_scheduler_type", "actor_rollout_ref.actor.optim.warmup_style",
                 "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio")
CHAT_TEMPLATE_KEYS = ("data.apply_chat_template_kwargs", "actor_rollout_ref.model.custom_chat_template")
_OVERRIDE = re.compile(r"(~|\+\+|\+)?([A-Za-z_][\w.\-@/]*)(?:=(.*))?", re.S)
_BARE_VALUE = re.compile(r"[\w./:+@\-]+")


def override_key(arg: str) -> str:
    """The config key a hydra override sets (``key=v``, ``+key=v``, ``++key=v``, ``~key``)."""
    m = _OVERRIDE.fullmatch(arg)
    if m is None or (m.group(3) is None and m.group(1) != "~"):
        raise CropiError(f"verl argument {arg!r}: expected a hydra override KEY=VALUE (or +KEY=VALUE, ~KEY)")
    return m.group(2)


def hydra_value(value) -> str:
    """A value as hydra's override grammar reads it back unchanged (quoted unless it is a plain token)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _BARE_VALUE.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _plain_value(arg: str) -> str:
    """The value of a ``key=value`` override without hydra's quotes."""
    value = arg.split("=", 1)[1].strip() if "=" in arg else ""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def check_verl_args(args: Sequence[str]) -> None:
    """Refuse (one line) an override the stage loop cannot honour: a key it sets itself, a save frequency that
    would skip a stage's last step, a learning-rate schedule whose horizon verl resets every stage, a chat
    template other than the one cropi scores with."""
    for arg in args:
        key = override_key(arg)
        value = _plain_value(arg)
        if key in RESERVED:
            raise CropiError(f"verl argument {arg!r}: {key} is set by cropi verl from {RESERVED[key]}")
        if key == "trainer.save_freq" and not re.fullmatch(r"[1-9]\d*", value):
            raise CropiError(f"verl argument {arg!r}: trainer.save_freq must be a positive integer (each "
                             "stage's last step must be saved for the next stage to resume from)")
        if arg.startswith("~"):
            continue
        if key in SCHEDULE_KEYS[:2] and value not in ("constant", "null"):
            raise CropiError(f"verl argument {arg!r}: cropi verl takes only the constant learning-rate schedule "
                             "(verl restarts a schedule's horizon at every stage's end step)")
        if key == SCHEDULE_KEYS[2]:
            try:
                ratio = float(value)
            except ValueError:
                ratio = None
            if ratio != 0:
                raise CropiError(f"verl argument {arg!r}: lr_warmup_steps_ratio must be 0 (verl takes the ratio "
                                 "of every stage's end step); set actor_rollout_ref.actor.optim.lr_warmup_steps "
                                 "instead")
        if any(key == k or key.startswith(k + ".") for k in CHAT_TEMPLATE_KEYS):
            raise CropiError(f"verl argument {arg!r}: verl would format prompts other than cropi scores them "
                             "(cropi uses the model's own chat template; put another one in its tokenizer_config.json "
                             "and collect the behaviour stores with it)")


def stage_end(stage: int, steps: int, stages: int) -> int:
    """verl's global step at the end of ``stage`` (0-based) when ``steps`` are spread over ``stages``."""
    return (stage + 1) * steps // stages


def mapped_defaults(cfg: RunConfig, batch_prompts: int) -> dict[str, str]:
    """verl settings that follow cropi's config, so that verl trains with the loss cropi scores with (the
    scoring engine differentiates ``cfg.train`` / ``cfg.rollout``'s loss).  Each one is a default: the user's
    own override of the same key wins."""
    t, r = cfg.train, cfg.rollout
    return {
        "algorithm.adv_estimator": "grpo",
        "actor_rollout_ref.rollout.n": str(r.group_size),
        "actor_rollout_ref.rollout.temperature": hydra_value(r.temperature),
        "actor_rollout_ref.rollout.top_p": hydra_value(r.top_p),
        "data.max_response_length": str(r.max_new_tokens),
        "data.train_batch_size": str(batch_prompts),
        "actor_rollout_ref.actor.ppo_mini_batch_size": str(batch_prompts),
        "actor_rollout_ref.actor.ppo_epochs": str(t.ppo_epochs),
        "actor_rollout_ref.actor.optim.lr": hydra_value(t.lr),
        "actor_rollout_ref.actor.optim.weight_decay": hydra_value(t.weight_decay),
        "actor_rollout_ref.actor.optim.betas": f"[{hydra_value(t.betas[0])},{hydra_value(t.betas[1])}]",
        "actor_rollout_ref.actor.clip_ratio": hydra_value(t.clip_eps),
        "actor_rollout_ref.actor.grad_clip": hydra_value(t.max_grad_norm),
        "actor_rollout_ref.actor.loss_agg_mode": {"grpo": "seq-mean-token-mean",
                                                  "dr_grpo": "seq-mean-token-sum-norm"}[t.aggregation],
        "actor_rollout_ref.actor.use_kl_loss": hydra_value(t.kl_coef > 0),
        "actor_rollout_ref.actor.kl_loss_coef": hydra_value(t.kl_coef),
        "data.seed": str(t.seed),
    }
