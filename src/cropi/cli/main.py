"""The ``cropi`` command line: the app, its shared options and the helpers every command uses.  The commands
live by job beside this module: ``pipeline`` (collect, score, select, eval, verl, models), ``train`` (train,
demo) and ``compare`` (compare, status).  Every command is a thin layer over a documented Python function.

Options shared by several commands are declared once (``OPTIONS``) and added to a command by
``config_command``, which also resolves and validates the run config, once, before the command body runs: the
defaults, then ``--config``, then every option that names a config key, then ``--set``.  Errors caused by
input (bad files, bad config, missing stores) print one line naming the file, the line and the problem, and
exit with code 2, before anything is written.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, get_args, get_origin

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cropi.config import load_config, settings
from cropi.errors import CropiError
from cropi.selection import resolve
from cropi.selection.registry import GENERAL_DEFAULTS

app = typer.Typer(
    help="cropi: data-efficient RL with verifiable rewards via off-policy influence guidance (CROPI).\n\n"
    "Flow: collect behaviour trajectories -> score prompts with the current policy -> select -> GRPO -> evaluate.  "
    "`cropi train` runs it all (stage by stage); `cropi demo` sets it against full-data GRPO on the embedded tiny "
    "model and synthetic task suite.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Fetch and inspect models.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console(stderr=True)


def _fail(msg: str) -> None:
    # escaped: messages hold brackets (pip install 'cropi[vllm]') that rich would read as markup
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class _WarningLine(logging.Handler):
    """cropi's library warnings (a damaged chunk being recomputed, ...) as one ``warning:`` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"warning: {record.getMessage()}", err=True)


_cropi_log = logging.getLogger("cropi")
_cropi_log.addHandler(_WarningLine(logging.WARNING))
_cropi_log.propagate = False


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CropiError as exc:
            _fail(str(exc))

    return wrapper


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


# -- shared options -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Opt:
    """A command-line option shared by commands; with ``key`` it sets that config key (``to_value`` converts)."""

    name: str
    annotation: Any
    info: Any
    key: str | None = None
    to_value: Callable[[list], Any] | None = None


def key_opt(name: str, key: str, *aliases: str, help: str | None = None, to_value=None) -> Opt:
    """Option ``--name`` setting config key ``key``; its help (the key's own unless given) names the key and default."""
    s = next(x for x in settings() if x.key == key)
    many = get_origin(s.type) in (list, dict)
    scalar = next((a for a in get_args(s.type) if a is not type(None)), s.type)
    flag = "--" + name.replace("_", "-")
    info = typer.Option(None, flag, *aliases, help=f"{help or s.help} ({key}; default {s.default})", show_default=False)
    return Opt(name, Optional[List[str]] if many else Optional[scalar], info, key, to_value)


def _field_map(items: list[str]) -> dict[str, str]:
    bad = [x for x in items if "=" not in x]
    if bad:
        raise CropiError(f"--field {bad[0]!r}: expected FIELD=COLUMN")
    return dict(x.split("=", 1) for x in items)


STEPS, STAGES = key_opt("steps", "train.steps"), key_opt("stages", "select.stages")
RATIO = key_opt("select_ratio", "select.ratio")  # one flag name per key, in every command
OPTIONS: dict[str, list[Opt]] = {
    "config": [
        Opt("config", Optional[Path], typer.Option(None, "--config", "-c", help="YAML config file (see `cropi config`); "
                                                   "options that name a config key override it.")),
        Opt("overrides", Optional[List[str]], typer.Option(None, "--set", "-s", help="Override any config key, last: "
                                                           "--set train.lr=3e-5, or a TRL name: --set num_generations=16 "
                                                           "(repeatable; `cropi config --list`).")),
    ],
    "model": [key_opt("model", "model.name"), key_opt("device", "model.device")],
    "pool": [key_opt("pool", "data.pool_file", help="Your own training pool (JSONL/Parquet) instead of the embedded suite.")],
    "splits": [key_opt("val", "data.validation_files", help="Validation set NAME=PATH (repeatable); its NAME marks a "
                       "test split as targeted."),
               key_opt("test", "data.test_files", help="Test split NAME=PATH (repeatable).")],
    "files": [key_opt("field", "data.fields", help="Column mapping FIELD=COLUMN for your files (repeatable), e.g. "
                      "--field prompt=question.", to_value=_field_map),
              key_opt("answer_format", "data.answer_format")],
    "budget": [STEPS, STAGES,
               Opt("steps_per_stage", Optional[int], typer.Option(None, help="GRPO steps per stage S: sets train.steps "
                                                                  "to S x select.stages (instead of --steps).")),
               RATIO, key_opt("pool_seed", "data.suite.pool_seed")],
    "train": [key_opt("selector", "train.selector"), key_opt("seed", "train.seed")],
    "rollout": [key_opt("group_size", "rollout.group_size", "-g"), key_opt("temperature", "rollout.temperature"),
                key_opt("top_p", "rollout.top_p"), key_opt("max_new_tokens", "rollout.max_new_tokens"),
                key_opt("seed", "rollout.seed"), key_opt("backend", "rollout.backend")],
    "score": [key_opt("mode", "select.score.mode"), key_opt("kind", "select.score.kind"), key_opt("k", "select.score.k"),
              RATIO, key_opt("batch_size", "select.score.batch_size"), key_opt("chunk_size", "select.score.chunk_size")],
    "ratio": [RATIO],
}
RUN_GROUPS = ("model", "pool", "splits", "files", "budget")


def _stages(config: Optional[Path], values: dict) -> int:
    """The curriculum stages in force: --stages, else --config's, else the default."""
    import cropi.config

    stages = values.get("stages") or cropi.config.load_config(config, list(values.get("overrides") or [])).select.stages
    return stages or GENERAL_DEFAULTS["select.stages"]


def _budget_overrides(config: Optional[Path], values: dict) -> list[str]:
    """--steps-per-stage S: train.steps = S x the stages in force."""
    if values.get("steps_per_stage") is None:
        return []
    if values.get("steps") is not None:
        raise CropiError("give --steps or --steps-per-stage, not both")
    return [f"train.steps={values['steps_per_stage'] * _stages(config, values)}"]


def config_command(*groups: str, derive: tuple[Callable[[Optional[Path], dict], list[str]], ...] = (),
                   per_selector: bool = False):
    """Give a command ``fn(cfg, **own_options)`` the options of ``groups`` (--config and --set always) and call
    it with the resolved, validated ``RunConfig``.  Each of ``derive(config_path, option_values)`` returns
    overrides computed from several options, applied after the key options and before --set.  A command that
    runs several selectors (``per_selector``) gets the config validated but not resolved: resolving fills in the
    default selector's own settings, which must not reach the other selectors' runs (each resolves its own)."""
    shared = [o for g in ("config", *groups) for o in OPTIONS[g]]

    def wrap(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "cfg"]
        params = own + [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.info,
                                          annotation=o.annotation) for o in shared]

        @functools.wraps(fn)
        def command(**values):
            config = values["config"]
            sets = [f"{o.key}={json.dumps(o.to_value(list(v)) if o.to_value else v)}" for o in shared
                    if o.key and (v := values[o.name]) not in (None, [], ())]
            sets += [o for rule in derive for o in rule(config, values)]
            cfg = load_config(config, sets + list(values["overrides"] or []))
            resolved = resolve(cfg)  # the one validation
            if not per_selector:
                cfg = resolved
            return fn(cfg, **{p.name: values[p.name] for p in own})

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return handles_errors(command)

    return wrap


def _shard_or_range(shard: Optional[str], prange: Optional[str]) -> tuple[tuple[int, int] | None, tuple | None]:
    """Parse --shard I/N (0 <= I < N) or --range START:END (END may be empty: to the end)."""
    if shard and prange:
        raise CropiError("give --shard or --range, not both")
    try:
        if shard:
            i, n = (int(x) for x in shard.split("/"))
            assert 0 <= i < n
            return (i, n), None
        if prange:
            a, _, b = prange.partition(":")
            return None, (int(a), int(b) if b else None)
    except (ValueError, AssertionError):
        raise CropiError(f"--shard {shard!r}: expected I/N with 0 <= I < N" if shard else
                         f"--range {prange!r}: expected START:END (prompt positions in the pool store)") from None
    return None, None


RayOpt = typer.Option(False, "--ray", help="Shard over Ray actors, one per GPU (else per CPU), on a local Ray "
                      "started for the job or on --ray-address; results are bit-identical to one process with "
                      "--ray-threads torch threads.  Needs the ray extra (pip install cropi\\[ray]).")
RayAddressOpt = typer.Option(None, "--ray-address", help="Ray cluster to run on (implies --ray), e.g. auto or "
                             "ray://HEAD:10001; paths must be on a filesystem every node sees.")
RayWorkersOpt = typer.Option(None, "--ray-workers", help="Ray actors (default: the cluster's GPUs, else its CPUs / "
                             "--ray-threads).")
RayThreadsOpt = typer.Option(1, "--ray-threads", help="torch threads in each Ray actor.")


def _ray_job(ray: bool, address: Optional[str], workers: Optional[int], threads: int, sharded: bool) -> Optional[dict]:
    """The Ray options as keyword arguments of ``cropi.integrations.ray_shards`` (None: no Ray)."""
    if not (ray or address):
        if workers is not None or threads != 1:
            raise CropiError("--ray-workers/--ray-threads need --ray")
        return None
    if sharded:
        raise CropiError("give --ray or --shard/--range, not both (Ray deals the shards itself)")
    return {"address": address, "workers": workers, "threads": threads}


def _ray_line(job) -> str:
    return (f"on Ray: {job.workers} worker(s) ({job.device}, {job.threads} torch thread(s) each), {job.tasks} shards; "
            f"Ray start {job.ray_start_seconds:.1f} s, actors up (policy loaded) in {job.actor_start_seconds:.1f} s")


def _int_list(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CropiError(f"{flag} {text!r}: expected comma-separated integers") from None


@app.command("config")
def show_config(
    list_keys: bool = typer.Option(False, "--list", help="Print every key as `section.key  default  help` instead."),
):
    """Print the default configuration as YAML (a starting point for --config files).

    Every command reads the defaults, then --config FILE, then its own options, then each --set section.key=VALUE
    (TRL GRPOConfig names such as num_generations or learning_rate are accepted too; docs/config.md maps them).
    The whole config is validated before anything is written.
    """
    from cropi.config import RunConfig, dump_config, settings_table

    typer.echo(settings_table() if list_keys else dump_config(RunConfig()))


REAL_DATA_MIN_TOKENS = 128  # below this a worked GSM8K or MATH answer is cut off before its final line


def _warn_about_data(cfg, problems, caps=("rollout", "eval")) -> None:
    """Say loudly when settings made for the embedded suite meet the user's own data: the short response caps,
    and a tokenizer (the embedded tiny policy's characters) that maps the prompts' text to <unk>."""
    d = cfg.data
    if d.pool_file is None and not d.validation_files and not d.test_files:
        return
    from transformers import AutoTokenizer

    from cropi.policy import resolve_model_path, vocabulary_gaps

    for section in caps:
        key, value = f"{section}.max_new_tokens", getattr(cfg, section).max_new_tokens
        if value < REAL_DATA_MIN_TOKENS:
            typer.echo(f"warning: {key}={value} suits the embedded suite's short answers, not worked solutions of real "
                       f"data; responses stop after {value} tokens (try --set {key}=512)", err=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model.name))
    except Exception:  # the model's own loading reports an unusable name; this check only adds a warning
        return
    checked, with_unk, missing = vocabulary_gaps(tokenizer, [p.prompt for p in problems])
    if with_unk:
        typer.echo(f"warning: model {cfg.model.name!r} maps text of {with_unk} of {checked} prompts checked to <unk> "
                   f"(characters {missing[:40]!r}); the embedded tiny policy only knows the synthetic suite's "
                   f"characters: use --model smollm2 or your own HF model for real data", err=True)


def _training_events(prog: Progress, task) -> Callable[[dict], None]:
    """Update ``task`` from a run's events: steps, evaluations, behaviour collection and stage selections."""
    acc = {"text": ""}

    def on_event(row: dict) -> None:
        event = row.get("event")
        if event == "eval":
            acc["text"] = f"targeted {100 * row['targeted']:.1f}%" + (
                f" untargeted {100 * row['untargeted']:.1f}%" if row.get("untargeted") is not None else "")
            prog.update(task, completed=row["step"], info=acc["text"])
        elif event == "step":
            prog.update(task, completed=row["step"], info=f"reward {row['reward_mean']:.2f} | {acc['text']}")
        elif event == "collect":
            prog.update(task, info=f"collecting behaviour rollouts: {row['store']} ({row['prompts']} prompts)")
        elif event == "select":
            prog.update(task, info=f"stage {row['stage']}: {row['n']} prompts selected in {row['seconds']:.0f} s")

    return on_event
