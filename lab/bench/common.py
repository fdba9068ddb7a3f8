"""Shared pieces of the benchmarks: the results folders, and for the projection benchmarks configuration
names, targets, the results file, machine measurements and timers.

The results file ``projection.json`` has one schema for both commands; each command fills its sections and
the file is merged on write (read, update, write under a temporary name, rename), so ``python -m lab.bench
projection`` and ``python -m lab.bench fidelity`` can run in either order.  ``projection.md`` is rendered from the
merged JSON every time, so the two never disagree.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from cropi.errors import ConfigError
from cropi.io import read_json, write_json, write_text

# Relative to the working directory (as ``python -m lab.bench`` resolves them): the committed results, and the
# reduced runs that must never overwrite them.
RESULTS_DIR = Path("benchmarks") / "results"
QUICK_DIR = Path("runs") / "bench-quick"

RESULTS_NAME = "projection"
TOP_KEYS = ("schema_version", "machine", "stream_read_gbps", "backward_seconds", "default_config", "speed",
            "fidelity", "scoring_cost_ratio")
SPEED_KEYS = ("config", "kind", "keep", "k", "d", "seconds_per_gradient", "naive_sjlt_seconds_per_gradient",
              "trak_seconds_per_gradient", "ip_rel_error", "naive_sjlt_ip_rel_error", "trak_ip_rel_error")
FIDELITY_KEYS = ("config", "kind", "keep", "k", "precision_at_10", "precision_at_10_sd", "spearman",
                 "exact_cosine_sd")

# The projection engine's targets.  Influence selection only pays if scoring is cheap next to training and its
# ranking survives the projection: the streaming SJLT must beat the naive stored-table SJLT it replaces
# (keep = 1, k = 8192), projecting must be a small share of the backward pass that produces the gradient,
# the top 10% by projected cosine must be (nearly) the top 10% by exact cosine, and scoring a prompt must
# cost well under training on it.
NAIVE_SPEEDUP_TARGET = 2.0  # streaming SJLT at keep = 1, k = 8192 vs the naive stored-table SJLT
BACKWARD_SHARE_TARGET = 0.05  # projection seconds / SmolLM2 forward+backward of one prompt
PRECISION_TARGET = 0.90  # precision@10% at k = 8192
SCORING_RATIO_TARGET = 0.5  # seconds to score a pool prompt / GRPO training seconds per prompt


# ----------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class ProjConfig:
    """One projection configuration: kind, k and a sparsifier rule.

    ``rule = "uniform"``: every tensor keeps a fraction ``keep`` (``keep = 1``: no sparsifier);
    ``rule = "calibrated"``: per-tensor probabilities from ``calibrate_keep`` spending ``keep`` of d overall.
    The name (``sjlt-k8192-keep1``, ``sjlt-k8192-cal0.1``) is what ``config`` means in every section."""

    kind: str
    k: int
    keep: float = 1.0
    rule: str = "uniform"
    no_embed: bool = False  # the parameter filter: leave the token embedding (tied to the LM head) out

    @property
    def name(self) -> str:
        tag = "cal" if self.rule == "calibrated" else "keep"
        return f"{self.kind}-k{self.k}-{tag}{self.keep:g}" + ("-noembed" if self.no_embed else "")

    def with_k(self, k: int) -> "ProjConfig":
        return ProjConfig(self.kind, k, self.keep, self.rule, self.no_embed)

    def shapes(self, shapes: Mapping[str, tuple]) -> dict[str, tuple]:
        """The parameters this configuration projects."""
        return {n: s for n, s in shapes.items() if not (self.no_embed and ("embed_tokens" in n or "lm_head" in n))}


_NAME = re.compile(r"^(sjlt|gaussian|rademacher)-k(\d+)-(keep|cal)([0-9.eE]+)(-noembed)?$")


def parse_config(name: str) -> ProjConfig:
    m = _NAME.match(name.strip())
    if not m:
        raise ConfigError(f"projection configuration {name!r}: expected KIND-kK-keepQ or KIND-kK-calB, optionally "
                          "ending in -noembed, e.g. sjlt-k8192-keep1 or sjlt-k8192-cal0.1")
    keep = float(m.group(4))
    if not 0 < keep <= 1:
        raise ConfigError(f"projection configuration {name!r}: keep must be in (0, 1]")
    return ProjConfig(m.group(1), int(m.group(2)), keep, "calibrated" if m.group(3) == "cal" else "uniform",
                      bool(m.group(5)))


def default_config_name() -> str:
    """The configuration ``cropi score`` uses by default (``ScoreConfig``), in benchmark naming."""
    from cropi.config import ScoreConfig

    cfg = ScoreConfig()
    return ProjConfig(cfg.kind, cfg.k, cfg.keep, "uniform").name


# ----------------------------------------------------------------------------- measurements
def set_threads(n: int) -> None:
    """Benchmarks are timed single-threaded by default: the machine's cores are shared."""
    torch.set_num_threads(max(1, int(n)))


def best_time(fn: Callable[[], object], repeat: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``repeat`` calls after ``warmup`` untimed ones (the least-disturbed run on a
    shared machine)."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def stream_read_gbps(n_bytes: int = 1 << 30, repeat: int = 3) -> float:
    """Streaming-read bandwidth (GB/s, 1e9 bytes) of one fp32 reduction over ``n_bytes``: the ceiling for a
    projector that must read every coordinate once."""
    x = torch.ones(n_bytes // 4, dtype=torch.float32)
    secs = best_time(lambda: float(x.sum()), repeat=repeat)
    return n_bytes / secs / 1e9


def rms(values) -> float:
    values = list(values)
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else math.nan


# ----------------------------------------------------------------------------- results file
def results_paths(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / f"{RESULTS_NAME}.json", out_dir / f"{RESULTS_NAME}.md"


def _finite(obj):
    """NaN / inf -> null: strict JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def merge_results(out_dir: Path, update: Mapping) -> dict:
    """Merge ``update`` into ``out_dir/projection.json`` (sections replace sections), rewrite the markdown."""
    from lab.machines import machine_description

    json_path, md_path = results_paths(out_dir)
    old = read_json(json_path) if json_path.exists() else {}
    merged = {key: old.get(key) for key in TOP_KEYS}
    merged.update({k: v for k, v in old.items() if k not in merged})
    merged.update(update)
    if "meta" in update:  # each command owns its own keys of meta
        merged["meta"] = {**(old.get("meta") or {}), **update["meta"]}
    merged["machine"] = update.get("machine") or old.get("machine") or machine_description()
    merged["default_config"] = default_config_name()
    for key in ("speed", "fidelity"):
        merged[key] = merged.get(key) or []
    merged.pop("schema_version", None)
    write_json(json_path, _finite(merged))
    write_text(md_path, render_markdown(read_json(json_path)))
    return read_json(json_path)


def _f(x, fmt: str = ".3g") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


MISSED = {
    "naive": "Why: the streaming SJLT computes its map (one splitmix64 hash per 4 coordinates, ~60% of its time) "
             "and scatters, where the naive one reads a stored 12-byte-per-coordinate table; both are single "
             "passes of separate torch ops.  What would close it: a fused hash+scatter kernel (C++/numba on CPU, "
             "one Triton kernel on GPU), or a cheaper 2-independent multiply-shift bucket hash (CountSketch needs "
             "only pairwise-independent rows and 4-wise signs).",
    "share": "Why: the projection reads every coordinate once (plus a per-tensor overhead that dominates on small "
             "models) while this forward+backward is short (few tokens).  "
             "What would close it: the fused kernel above, or scoring longer responses (the backward grows with "
             "tokens, the projection does not).",
    "precision": "Why: projection noise in cosine units is ~1/√k (0.011 at k = 8192) against the spread of exact "
                 "cosines (SD in the fidelity table); prompts near the top-10% boundary swap.  What would close it: "
                 "a larger k — SJLT costs the same at any k, only k floats per prompt of memory (k = 32768: 128 KB).",
    "scoring": "Why: scoring takes one backward per prompt (G sequences) while GRPO's update backs up 256 sequences "
               "at once.  What would close it: per-example gradients of several prompts in one backward pass "
               "(torch.func / hooks), or scoring on a parameter subset.",
}


def _verdict(ok: bool | None) -> str:
    return "n/a (not measured)" if ok is None else ("**met**" if ok else "**NOT met**")


def target_checks(res: Mapping) -> list[tuple[str, str, bool | None, str]]:
    """(key, target, met?, measured) for each projection-engine target, from a results dict (``MISSED[key]`` says
    why a missed one is missed and what would close it)."""
    out = []
    big = [r for r in res.get("speed") or [] if r["d"] > 10_000_000] or list(res.get("speed") or [])
    d_big = max((r["d"] for r in big), default=None)
    big = [r for r in big if r["d"] == d_big]
    row = next((r for r in big if r["config"].startswith("sjlt-k8192-keep1")), None)
    if row and row.get("naive_sjlt_seconds_per_gradient"):
        speedup = row["naive_sjlt_seconds_per_gradient"] / row["seconds_per_gradient"]
        ok = speedup >= NAIVE_SPEEDUP_TARGET and row["ip_rel_error"] <= 1.1 * row["naive_sjlt_ip_rel_error"]
        out.append(("naive", f"streaming SJLT >= {NAIVE_SPEEDUP_TARGET:g}x faster than the naive SJLT at keep = 1, k = 8192 "
                    "(d = {:.3g}), no larger error (within 10%: an RMS over ~200 pairs has ~5% sampling error)".format(d_big), ok,
                    f"{speedup:.2f}x ({_f(row['seconds_per_gradient'])} s vs {_f(row['naive_sjlt_seconds_per_gradient'])} s); "
                    f"error {_f(row['ip_rel_error'])} vs {_f(row['naive_sjlt_ip_rel_error'])}"))
    else:
        out.append(("naive", "streaming SJLT >= 2x faster than the naive SJLT at keep = 1, k = 8192", None, "—"))
    default = res.get("default_config")
    drow = next((r for r in big if r["config"] == default), None)
    bwd = res.get("backward_seconds")
    if drow and bwd:
        share = drow["seconds_per_gradient"] / bwd
        out.append(("share", f"default projection ({default}) <= {100 * BACKWARD_SHARE_TARGET:g}% of one forward+backward",
                    share <= BACKWARD_SHARE_TARGET,
                    f"{100 * share:.1f}% ({_f(drow['seconds_per_gradient'])} s / {_f(bwd)} s)"))
    else:
        out.append(("share", "default projection <= 5% of one forward+backward", None, "—"))
    # the default configuration's kind and sparsifier at k = 8192 (the k the target names)
    dcfg = parse_config(default).with_k(8192).name if default else None
    frow = next((r for r in res.get("fidelity") or [] if r["config"] == dcfg), None)
    if frow is None:
        frow = max((r for r in res.get("fidelity") or [] if r["k"] == 8192),
                   key=lambda r: r["precision_at_10"], default=None)
    if frow:
        out.append(("precision", f"precision@10% >= {PRECISION_TARGET:g} at k = 8192 ({frow['config']})",
                    frow["precision_at_10"] >= PRECISION_TARGET,
                    f"{frow['precision_at_10']:.3f} ± {frow['precision_at_10_sd']:.3f}"))
    else:
        out.append(("precision", "precision@10% >= 0.90 at k = 8192", None, "—"))
    ratio = res.get("scoring_cost_ratio")
    out.append(("scoring", f"scoring cost ratio <= {SCORING_RATIO_TARGET:g} on the embedded default",
                None if ratio is None else ratio <= SCORING_RATIO_TARGET, _f(ratio)))
    return out


def render_markdown(res: Mapping) -> str:
    meta = res.get("meta") or {}
    lines = ["# Projection benchmarks", "",
             f"- machine: {res.get('machine')}",
             f"- streaming-read bandwidth: {_f(res.get('stream_read_gbps'))} GB/s (one fp32 sum over 1 GiB)",
             f"- {meta.get('backward_model', 'smollm2')} forward+backward of one prompt "
             f"({' responses x '.join(map(str, meta.get('backward_shape', [8, 96])))} tokens, POPI loss): "
             f"{_f(res.get('backward_seconds'))} s",
             f"- default configuration (`ScoreConfig`): `{res.get('default_config')}`"]
    for key in ("speed_note", "fidelity_note", "scoring_note"):
        if meta.get(key):
            lines.append(f"- {meta[key]}")
    lines += ["", "## Targets", "", "| target | verdict | measured |", "| --- | --- | --- |"]
    checks = target_checks(res)
    for _, name, ok, measured in checks:
        lines.append(f"| {name} | {_verdict(ok)} | {measured} |")
    for key, name, ok, _ in checks:
        if ok is False:
            lines += ["", f"*{name}* — NOT met. {MISSED[key]}"]
    speed = res.get("speed") or []
    if speed:
        lines += ["", "## Speed (seconds per gradient, single vector) and inner-product error", "",
                  "Error: RMS over fixed pairs of |<Px, Py> − <x, y>| / (‖x‖ ‖y‖), the same pairs for every method. "
                  "Effective read: 4 d bytes / seconds (share of the streaming-read bandwidth).", "",
                  "| config | d | s / gradient | eff. read GB/s | / fwd+bwd | error | naive SJLT s | naive error "
                  "| TRAK s | TRAK error |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        bwd = res.get("backward_seconds")
        for r in speed:
            eff = 4 * r["d"] / r["seconds_per_gradient"] / 1e9 if r.get("seconds_per_gradient") else None
            share = f"{100 * r['seconds_per_gradient'] / bwd:.1f}%" if bwd and r.get("seconds_per_gradient") else "—"
            err_note = "" if r.get("ip_error_d") in (None, r["d"]) else f" (at d = {r['ip_error_d']:.3g})"
            stream = res.get("stream_read_gbps")
            eff_cell = _f(eff) + (f" ({100 * eff / stream:.0f}%)" if eff and stream else "")
            lines.append(f"| `{r['config']}` | {r['d']:.3g} | {_f(r['seconds_per_gradient'])} | {eff_cell} | {share} "
                         f"| {_f(r['ip_rel_error'])}{err_note} | {_f(r['naive_sjlt_seconds_per_gradient'])} "
                         f"| {_f(r['naive_sjlt_ip_rel_error'])} | {_f(r['trak_seconds_per_gradient'])} "
                         f"| {_f(r['trak_ip_rel_error'])} |")
    fid = res.get("fidelity") or []
    if fid:
        lines += ["", "## Fidelity on real policy gradients", "",
                  "Against the exact cosines of full gradients; mean ± SD over projection seeds.", "",
                  "Error on real pairs: RMS of |<Pg, Pv̄> − <g, v̄>| / (‖g‖ ‖v̄‖) over training prompts and seeds.", "",
                  "| config | precision@10% | Spearman ρ | exact-cosine SD | error on real pairs | s / projection |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in fid:
            lines.append(f"| `{r['config']}` | {r['precision_at_10']:.3f} ± {r['precision_at_10_sd']:.3f} "
                         f"| {r['spearman']:.3f} ± {_f(r.get('spearman_sd'), '.3f')} | {r['exact_cosine_sd']:.3f} "
                         f"| {_f(r.get('ip_rel_error_real'))} | {_f(r.get('projection_seconds'))} |")
    ex = res.get("exact_scoring")
    if ex:
        lines += ["", "## Exact scoring next to the default projection", "",
                  f"`python -m lab.bench exact` (`exact_scoring.md`), on prompts and stores made as the fidelity benchmark makes "
                  f"them (same problems, sampling settings and seeds: its first {ex['train_prompts']} usable training "
                  f"prompts), against the exact mean of {ex['val_prompts']} validation prompts; {ex['model']}; each "
                  f"gradient fed to both modes in one run ({ex['threads']} threads).", "",
                  "| mode | precision@10% vs fp64 | Spearman ρ | s / prompt after the gradient | memory per validation set |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for r in ex["modes"]:
            memory = (f"{4 * ex['d'] / 2 ** 20:.0f} MiB" if r["mode"] == "exact" else f"{4 * ex['k'] / 2 ** 10:.0f} KiB")
            lines.append(f"| {r['mode']} | {r['precision_at_10']:.3f} | {r['spearman']:.4f} | "
                         f"{_f(r['seconds_per_prompt'])} | {memory} |")
    sc = res.get("scoring")
    if sc:
        lines += ["", "## Scoring cost on the embedded default", "",
                  f"- seconds to score one pool prompt (POPI gradient + projection + cosine, validation sets "
                  f"included): {_f(sc.get('score_seconds_per_prompt'))} s; {_f(sc.get('prompts_scored_per_second'))} prompts/s",
                  f"- GRPO training seconds per prompt (one step ÷ its prompts, generation included): "
                  f"{_f(sc.get('train_seconds_per_prompt'))} s",
                  f"- scoring cost ratio: {_f(res.get('scoring_cost_ratio'))}",
                  f"- per usable pool prompt, pool phase only: {_f(sc.get('score_seconds_per_usable_prompt_pool_only'))} s "
                  f"scoring vs {_f(sc.get('forward_backward_seconds_per_usable_prompt'))} s for the POPI forward+backward "
                  f"alone on the same trajectories: ratio {_f(sc.get('ratio_to_forward_backward'))}",
                  f"- trajectory collection (once per pool, not per scoring pass): "
                  f"{_f(sc.get('collect_seconds_per_prompt'))} s per prompt"]
    notes = list(meta.get("speed_notes") or []) + list(meta.get("fidelity_notes") or [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
