"""The CROPI curriculum with verl as the trainer: per stage, the same ``Curriculum`` as the built-in trainer chooses
the prompts with the current policy (``cropi`` scores them off-policy from the stored trajectories), they are
written as a verl RL dataset, verl's PPO trainer trains S steps from the previous stage's checkpoint, and the
actor is merged back to a Hugging Face folder that the next stage scores with.

verl pins its own torch / transformers (``transformers < 5.11`` for verl 0.9), so it usually lives in its own
environment; cropi runs it as a command (``python -m verl.trainer.main_ppo`` with hydra overrides, and
``python -m verl.model_merger merge``), with that environment's interpreter (``verl_python`` or
``$CROPI_VERL_PYTHON``, else this one).  Both commands are replaceable (``launcher`` / ``merger``).

Run folder::

    config.yaml, verl-run.json      the cropi config and the loop's fixed settings (a rerun must match them)
    val.parquet                     the run's validation sets (--val, or the embedded suite's) in verl's layout,
                                    verl's default ``data.val_files``
    checkpoints/                    ``trainer.default_local_dir``: verl's global_step_N/actor/... (one per stage end)
    resume/stage-NN/global_step_N/  what stage NN resumes from: links to the previous stage's checkpoint without
                                    its dataloader state (data.pt), which belongs to the previous stage's dataset
    stages/stage-NN/
        behaviour/                      with ``select.refresh_every`` R, every R-th stage first re-collects the
                                        pool and validation trajectories with the policy it starts from (cropi's
                                        sampler, the run's validation sets); later stages score on them too
        selection.json                  the stage's choice, its diagnostics and seconds (``training.curriculum``)
        scores.parquet (+ .gradients/)  influence scores with the policy the stage starts from
        train.parquet, train.ids.json   the chosen prompts (verl layout; index = pool id)
        command.json, verl-train.log    the trainer's command line and output
        trained.json                    the trainer finished and its checkpoint is there
        model/, verl-merge.log          the merged actor (Hugging Face folder)
        done.json                       the stage is complete (written last, atomically)

Steps carry across stages: stage s trains from global step start(s) to end(s) = (s+1)·T // M with
``trainer.total_training_steps = end(s)``, resuming optimizer, learning-rate scheduler and RNG state from
``checkpoints/global_step_<start(s)>``.  A rerun skips the stages with ``done.json``; an interrupted stage
restarts from its start checkpoint (the checkpoints it left past that step are removed first), or from its
merge when its training had finished.  A rerun must have the same cropi config (``config.yaml``), the same verl
overrides and the same stores.

verl sets the scheduler's horizon (``actor.optim.total_training_steps``) to each stage's end, so a resumed
cosine decay or warmup *ratio* would follow another curve in every stage; the loop therefore takes only the
constant learning-rate schedule (``actor.optim.lr_scheduler_type=constant``, ``lr_warmup_steps_ratio=0``; a
warmup of ``lr_warmup_steps`` N steps is fine, it does not depend on the horizon).  verl formats prompts with the
model's own chat template, as cropi's sampler and scorer do; overrides that change that template or its
arguments are refused.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cropi.config import RunConfig, dump_config
from cropi.errors import CropiError
from cropi.extras import MissingExtra, require
from cropi.io import read_json, write_json, write_text
from cropi.integrations.verl_overrides import check_verl_args, hydra_value, mapped_defaults, override_key, stage_end

VERL_PYTHON_ENV = "CROPI_VERL_PYTHON"
REWARD_MODULE = Path(__file__).with_name("verl_reward.py")
TRAINER_MODULE = "verl.trainer.main_ppo"
MERGER_MODULE = "verl.model_merger"

@dataclass
class VerlPlan:
    """What ``run_verl`` needs besides the cropi config: the behaviour stores and how to run verl.

    ``launcher`` / ``merger`` are command prefixes; the loop appends the hydra overrides, resp.
    ``--backend fsdp --local_dir ... --target_dir ...``.  None: verl's own modules run by ``verl_python``."""

    pool_store: Path
    val_stores: dict[str, Path]
    verl_args: list[str] = field(default_factory=list)
    launcher: list[str] | None = None
    merger: list[str] | None = None
    verl_python: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def python(self) -> str:
        return self.verl_python or os.environ.get(VERL_PYTHON_ENV) or sys.executable

    def trainer_command(self) -> list[str]:
        return list(self.launcher) if self.launcher else [self.python(), "-m", TRAINER_MODULE]

    def merger_command(self) -> list[str]:
        return list(self.merger) if self.merger else [self.python(), "-m", MERGER_MODULE, "merge"]


def parse_command(text: str | None) -> list[str] | None:
    """A ``--launcher`` / ``--merger`` option (shell words) as a command prefix."""
    if text is None:
        return None
    words = shlex.split(text)
    if not words:
        raise CropiError("--launcher/--merger: empty command")
    return words


def require_verl(plan: VerlPlan) -> None:
    """verl must be importable by the interpreter that runs its modules (only checked for the default commands)."""
    if plan.launcher and plan.merger:
        return
    python = plan.python()
    if Path(python).resolve() == Path(sys.executable).resolve():
        require("verl", "verl", "cropi verl")
        return
    try:
        ok = subprocess.run([python, "-c", "import verl"], capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        raise MissingExtra(f"cropi verl needs the 'verl' extra in {python} (set by --verl-python or "
                           f"${VERL_PYTHON_ENV}), which cannot import verl; install it there with: "
                           "pip install 'cropi[verl]'")


class VerlRun:
    """One run folder of the verl stage loop (module docstring)."""

    def __init__(self, cfg: RunConfig, plan: VerlPlan, out: str | Path,
                 on_event: Callable[[dict], None] | None = None):
        from cropi.selection import resolve

        cfg = resolve(cfg)  # the stage count a selector implies, where it was left unset
        self.cfg, self.plan, self.out = cfg, plan, Path(out)
        self.on_event = on_event or (lambda row: None)
        self.stages = cfg.select.stages
        self.steps = cfg.train.steps

    # -- layout ----------------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def stage_dir(self, stage: int) -> Path:
        return self.out / "stages" / f"stage-{stage:02d}"

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / f"global_step_{step}"

    def start_step(self, stage: int) -> int:
        return 0 if stage == 0 else stage_end(stage - 1, self.steps, self.stages)

    def end_step(self, stage: int) -> int:
        return stage_end(stage, self.steps, self.stages)

    def model_for(self, stage: int) -> str:
        """The policy stage ``stage`` starts from: the base model, then the previous stage's merged actor."""
        from cropi.policy import resolve_model_path

        return resolve_model_path(self.cfg.model.name) if stage == 0 else str(self.stage_dir(stage - 1) / "model")

    def fixed_settings(self) -> dict:
        return {"model": self.cfg.model.name, "stages": self.stages, "steps": self.steps,
                "ratio": self.cfg.select.ratio, "refresh_every": self.cfg.select.refresh_every,
                "pool_store": str(self.plan.pool_store),
                "val_stores": {k: str(v) for k, v in sorted(self.plan.val_stores.items())},
                "verl_args": list(self.plan.verl_args)}

    # -- checks before anything is written ---------------------------------------------------------------------
    def check(self):
        """Everything that can be checked without training; returns the loaded data.  Raises ``CropiError``."""
        from cropi.rollouts.trajectory_store import store_meta
        from cropi.tasks.loading import load_data

        if self.steps < self.stages:
            raise CropiError(f"train.steps {self.steps} < select.stages {self.stages}: every stage needs a step")
        check_verl_args(self.plan.verl_args)
        for path in [self.plan.pool_store, *self.plan.val_stores.values()]:
            store_meta(path)  # a missing store is one line naming it
        if not self.plan.val_stores:
            raise CropiError("cropi verl needs at least one validation store (--val-store NAME=PATH)")
        if self.cfg.train.filter.method != "none":
            raise CropiError(f"train.filter.method={self.cfg.train.filter.method}: verl builds each step's batch "
                             "itself; cropi chooses at stage boundaries (use a stage selector such as cropi)")
        if self.cfg.select.reuse_rollouts:
            raise CropiError("select.reuse_rollouts scores from the groups each step trained on, which verl does "
                             "not write; leave it off with verl")
        suite = load_data(self.cfg.data, need=("pool", "validation"))
        self._check_stores(suite)
        self._check_chat_template()
        self._check_same_run()
        require_verl(self.plan)
        return suite

    def _check_stores(self, suite) -> None:
        """The stores hold the loaded data's prompts in its order: stage 0 scores on them, refreshed stages
        re-collect from the loaded data, and val.parquet is written from it."""
        from cropi.rollouts.trajectory_store import _order_hash, store_meta

        if set(self.plan.val_stores) != set(suite.validation):
            raise CropiError(f"--val-store names {sorted(self.plan.val_stores)} differ from the validation sets "
                             f"{sorted(suite.validation)} (--val NAME=PATH, or the embedded suite's); give one store "
                             "per validation set, under its name")
        jobs = [("the pool", self.plan.pool_store, suite.pool)]
        jobs += [(f"validation set {name!r}", path, suite.validation[name]) for name, path in self.plan.val_stores.items()]
        for what, path, problems in jobs:
            if store_meta(path).get("prompt_order_hash") != _order_hash(problems):
                raise CropiError(f"{path}: this store was collected from other prompts (or another order) than "
                                 f"{what} of this run; collect it from the same file")

    def _check_same_run(self) -> None:
        """A rerun in an existing folder continues its later stages, so it must have the settings they began with."""
        import yaml

        saved, text = self.out / "config.yaml", dump_config(self.cfg)
        if saved.exists() and saved.read_text() != text:
            key, old, new = _first_difference(yaml.safe_load(saved.read_text()), yaml.safe_load(text))
            raise CropiError(f"{saved}: this run was started with another config ({key}: {old!r}, now {new!r}); "
                             "rerun with the same options or use a new --out")
        saved = self.out / "verl-run.json"
        if saved.exists():
            before = {k: v for k, v in read_json(saved).items() if k != "schema_version"}
            if before != self.fixed_settings():
                key, old, new = _first_difference(before, self.fixed_settings())
                raise CropiError(f"{saved}: this run was started with other settings ({key}: {old!r}, now "
                                 f"{new!r}); rerun with the same options or use a new --out")

    def _check_chat_template(self) -> None:
        from transformers import AutoTokenizer

        path = self.model_for(0)
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise CropiError(f"{path}: cannot load the tokenizer ({str(exc).splitlines()[0]})") from None
        if not getattr(tok, "chat_template", None):
            raise CropiError(f"{path}: the tokenizer has no chat template; verl formats every prompt with it "
                             "(add one to tokenizer_config.json, and collect the behaviour stores with that model)")

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume) every stage; returns the summary also written to ``RUN/summary.json``."""
        from cropi.selection.export import write_verl_problems

        suite = self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "config.yaml", dump_config(self.cfg))
        write_json(self.out / "verl-run.json", self.fixed_settings())
        write_verl_problems([p for probs in suite.validation.values() for p in probs], self.out / "val.parquet",
                            split="validation")
        records = []
        for stage in range(self.stages):
            done = self.stage_dir(stage) / "done.json"
            if done.exists():
                self.on_event({"event": "stage_skipped", "stage": stage})
            else:
                self._run_stage(stage, suite)
            records.append(read_json(done))
        summary = {"stages": records, "final_model": records[-1]["model"], "steps": self.steps}
        write_json(self.out / "summary.json", summary)
        return summary

    def _run_stage(self, stage: int, suite) -> None:
        from cropi.policy import load_policy
        from cropi.selection import parse_selector
        from cropi.selection.export import Selection, ids_path, write_selection
        from cropi.training.curriculum import BehaviourStores, Curriculum

        folder = self.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        record: dict = {"stage": stage, "start_step": self.start_step(stage), "end_step": self.end_step(stage),
                        "scored_with": self.model_for(stage)}
        policy = load_policy(self.model_for(stage), self.cfg.model.device, self.cfg.model.dtype)
        stores = BehaviourStores(self.plan.pool_store, dict(self.plan.val_stores), 0.0)
        self.on_event({"event": "score", "stage": stage, "prompts": _store_prompts(self.plan.pool_store)})
        # the built-in trainer's curriculum: its selection.json, scores and refreshes in this stage's folder
        curriculum = Curriculum(self.cfg, parse_selector(self.cfg.train.selector)[0], suite, policy, self.out,
                                stores, self.on_event)
        choice = curriculum.selection(stage, fresh=True)
        del policy, curriculum
        by_id = {p.id: p for p in suite.pool}
        ids = list(choice["selected"])
        selection = Selection(ids, [by_id[i] for i in ids], self.cfg.select.ratio, len(suite.pool),
                              {"selector": self.cfg.train.selector, "stage": stage})
        train_file = write_selection(selection, folder / "train.parquet", layout="verl")
        record["behaviour"] = choice.get("behaviour") or {
            "pool": str(self.plan.pool_store), "validation": {k: str(v) for k, v in self.plan.val_stores.items()}}
        record["behaviour"].pop("overlays", None)
        if "refresh" in choice:
            record["refresh_collect_seconds"] = choice["refresh"]["collect_seconds"]
        record.update(selected=len(ids), ids=str(ids_path(train_file)), score_seconds=choice["seconds"])

        t0 = time.perf_counter()
        trained = folder / "trained.json"
        if not trained.exists():
            self._train(stage, train_file, len(ids))
            write_json(trained, {"checkpoint": str(self.step_dir(self.end_step(stage)))})
        record["train_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        record["model"] = str(self._merge(stage))
        record["merge_seconds"] = time.perf_counter() - t0
        record["checkpoint"] = str(self.step_dir(self.end_step(stage)))
        write_json(folder / "done.json", record)
        self.on_event({"event": "stage_done", "stage": stage, "model": record["model"]})

    # -- training ----------------------------------------------------------------------------------------------
    def trainer_args(self, stage: int, train_file: Path, selected: int) -> list[str]:
        """The hydra overrides of stage ``stage``: the loop's own keys, then cropi-mapped defaults the user did
        not override, then the user's overrides as given."""
        start, end = self.start_step(stage), self.end_step(stage)
        own = {
            "data.train_files": str(train_file.resolve()),
            "actor_rollout_ref.model.path": _absolute_if_folder(self.model_for(0)),
            "trainer.default_local_dir": str(self.checkpoints.resolve()),
            "trainer.total_training_steps": str(end),
            # the loop runs epochs from global_step // batches-per-epoch; end epochs always leave room for
            # end - start steps, and total_training_steps stops it
            "trainer.total_epochs": str(end),
        }
        if stage == 0:
            own["trainer.resume_mode"] = "disable"
        else:
            own["trainer.resume_mode"] = "resume_path"
            own["trainer.resume_from_path"] = str(self._resume_view(stage, start).resolve())
        defaults = {
            **mapped_defaults(self.cfg, min(self.cfg.train.prompts_per_step, selected)),
            "data.val_files": hydra_value((self.out / "val.parquet").resolve()),
            "reward.custom_reward_function.path": hydra_value(REWARD_MODULE.resolve()),
            "reward.custom_reward_function.name": "compute_score",
            "trainer.save_freq": str(end - start),
            "trainer.logger": "[console]",
            "trainer.project_name": "cropi",
            "trainer.experiment_name": hydra_value(self.out.resolve().name),
        }
        user_keys = {override_key(a) for a in self.plan.verl_args}
        args = [f"{k}={hydra_value(v) if k in own else v}" for k, v in own.items()]
        args += [f"{k}={v}" for k, v in defaults.items() if k not in user_keys]
        return args + list(self.plan.verl_args)

    def _prepare_checkpoints(self, stage: int) -> None:
        """Remove what an interrupted attempt at this stage left past its start step, and require the start."""
        start = self.start_step(stage)
        for d in self.checkpoints.glob("global_step_*"):
            step = d.name[len("global_step_"):]
            if step.isdigit() and int(step) > start:
                shutil.rmtree(d)
        latest = self.checkpoints / "latest_checkpointed_iteration.txt"
        if stage == 0:
            latest.unlink(missing_ok=True)
        else:
            if not (self.step_dir(start) / "actor").is_dir():
                raise CropiError(f"{self.step_dir(start)}: stage {stage} resumes from this checkpoint, which is "
                                 "gone (trainer.max_actor_ckpt_to_keep?); start again in a new --out")
            write_text(latest, str(start))

    def _resume_view(self, stage: int, start: int) -> Path:
        """A global_step_<start> folder linking every part of the real checkpoint except the dataloader state."""
        view = self.out / "resume" / f"stage-{stage:02d}" / f"global_step_{start}"
        if view.exists() or view.is_symlink():
            shutil.rmtree(view)
        view.mkdir(parents=True)
        for entry in self.step_dir(start).iterdir():
            if entry.name != "data.pt":
                (view / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        return view

    def _train(self, stage: int, train_file: Path, selected: int) -> None:
        folder = self.stage_dir(stage)
        end = self.end_step(stage)
        self._prepare_checkpoints(stage)
        command = self.plan.trainer_command() + self.trainer_args(stage, train_file, selected)
        write_json(folder / "command.json", {"command": command})
        self.on_event({"event": "train", "stage": stage, "steps": end - self.start_step(stage),
                       "log": str(folder / "verl-train.log")})
        _run_logged(command, folder / "verl-train.log", self.plan.env, f"stage {stage}: verl's trainer")
        actor = self.step_dir(end) / "actor"
        if not (actor / "fsdp_config.json").is_file():
            raise CropiError(f"stage {stage}: verl finished but {actor} holds no FSDP checkpoint "
                             f"(see {folder / 'verl-train.log'})")

    def _merge(self, stage: int) -> Path:
        folder = self.stage_dir(stage)
        target, partial = folder / "model", folder / "model.partial"
        if (target / "config.json").is_file():
            return target
        shutil.rmtree(partial, ignore_errors=True)
        actor = self.step_dir(self.end_step(stage)) / "actor"
        command = self.plan.merger_command() + ["--backend", "fsdp", "--local_dir", str(actor.resolve()),
                                                "--target_dir", str(partial.resolve())]
        self.on_event({"event": "merge", "stage": stage, "log": str(folder / "verl-merge.log")})
        _run_logged(command, folder / "verl-merge.log", self.plan.env, f"stage {stage}: verl's model merger")
        if not (partial / "config.json").is_file():
            raise CropiError(f"stage {stage}: the model merger wrote no Hugging Face folder at {partial}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        return target


def _first_difference(old, new, prefix: str = "") -> tuple[str, object, object]:
    """The first dotted key at which two nested dicts differ, with both values (None where absent)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(top level)", old, new


def _absolute_if_folder(model: str) -> str:
    """A local model folder as an absolute path (verl's workers may run elsewhere); a hub id as given."""
    return str(Path(model).resolve()) if Path(model).is_dir() else model


def _store_prompts(path: Path) -> int:
    from cropi.rollouts.trajectory_store import store_meta

    return int(store_meta(path)["num_prompts"])


def _run_logged(command: Sequence[str], log: Path, env: dict[str, str], what: str) -> None:
    """Run ``command`` with its output in ``log``; a failure is one line naming the log."""
    with open(log, "ab") as fh:
        fh.write(f"$ {shlex.join(command)}\n".encode())
        fh.flush()
        try:
            rc = subprocess.run(list(command), stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env}).returncode
        except OSError as exc:
            raise CropiError(f"{what}: cannot start {command[0]!r} ({exc})") from None
    if rc != 0:
        raise CropiError(f"{what} exited with code {rc} (log: {log}); rerun the same command to restart this stage")


def run_verl(cfg: RunConfig, plan: VerlPlan, out: str | Path,
             on_event: Callable[[dict], None] | None = None) -> dict:
    """The CROPI curriculum trained by verl, in run folder ``out`` (module docstring); resumable by stage."""
    return VerlRun(cfg, plan, out, on_event).run()
