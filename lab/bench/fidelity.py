"""``python -m lab.bench fidelity``: projected vs exact influence scores on real policy gradients, and the scoring cost
on the embedded default.

Fidelity (SmolLM2-135M-Instruct; the embedded tiny model with ``--quick``):

1. collect G = 4 responses at T = 0.8 (16 tokens) for single-digit arithmetic prompts, block by block, until
   enough prompts have mixed reward groups (the zero-variance share is reported);
2. the exact mean validation gradient v̄ = mean of the full POPI gradients of the usable validation prompts
   (METHOD.md §4; up to 100), kept as one fp32 dict and cached on disk, with each tensor's squared norm summed
   for the calibrated sparsifiers;
3. stream each training gradient g_x once: its exact cosine cos(g_x, v̄) in fp64, and for every configuration and
   projection seed cos(P g_x, P v̄) (P v̄ is the projection of the exact mean, which by linearity equals the mean of
   the projections).  One JSON line per prompt, so an interrupted run resumes after its last finished prompt;
4. per configuration: precision@10% (overlap of the top-10% sets by projected and by exact cosine) and Spearman ρ,
   mean ± SD over the seeds, next to the SD of the exact cosines (the spread a projection's noise, about 1/√k in
   cosine units, must stay under).

SJLT sketches at a smaller k' dividing k are folds of the k sketch: with a power-of-two k/s the row of coordinate i
at k' is its row at k modulo k' with the same sign (``SJLTProjector``: row = (lane mod 2k) // 2, sign = lane mod 2,
both read from the same 16-bit hash lane), so P_{k'} x = sum over r ≡ r' (mod k') of (P_k x)_r.  Each fold is
checked against a direct projection on the first prompt.

Scoring cost (embedded tiny model and default suite, default ``ScoreConfig``, same run): seconds to score one pool
prompt with ``score_pool`` (POPI gradient + projection + cosine, validation sets included) ÷ GRPO training seconds
per prompt (one ``grpo_step`` of the default config ÷ its prompts, generation included).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from lab.bench.common import ProjConfig, merge_results, parse_config, set_threads
from cropi.errors import CropiError
from cropi.io import atomic_path, read_json, read_jsonl, write_json

Tracker = Callable[[str, int], Callable[[int], None]]


@dataclass
class FidelityPlan:
    quick: bool = False
    model: str = "smollm2"
    problems: str = "arith"  # arith: single-digit arithmetic (SmolLM2 half-solves it); suite: the embedded suite
    train_prompts: int = 200  # usable (mixed-reward) training prompts scored
    val_prompts: int = 60  # usable validation prompts in the exact mean (METHOD.md §4: up to 100)
    block: int = 64  # prompts collected per store; blocks are added until enough are usable
    group_size: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 16
    ks: Sequence[int] = (1024, 8192)
    # keep 1 (the default), the paper's ~1% uniform mask, and the per-tensor calibrated mask; with 5 seeds about
    # 14 s per training prompt single-threaded (gradient 1.9 s + 5 x (0.36 + 0.63 + 1.37) s), so 200 prompts fit
    # in under an hour.  The parameter filter is one more: --config 'sjlt-k{k}-keep1-noembed'.
    configs: Sequence[str] = ("sjlt-k{k}-keep1", "sjlt-k{k}-keep0.01", "sjlt-k{k}-cal0.1")
    seeds: int = 5
    threads: int = 1
    scoring: bool = True
    scoring_pool: int | None = None  # pool prompts scored for the cost ratio (None: the whole default pool)
    scoring_val_prompts: int | None = None  # per validation set (None: the default sets whole)
    grpo_steps: int = 3
    notes: list = field(default_factory=list)

    @staticmethod
    def quick_plan(**kw) -> "FidelityPlan":
        base = dict(quick=True, model="tiny", problems="suite", train_prompts=40, val_prompts=12, block=64, group_size=8,
                    temperature=1.0, max_new_tokens=10, scoring_pool=128, grpo_steps=1)
        base.update(kw)
        return FidelityPlan(**base)

    def projection_configs(self) -> list[ProjConfig]:
        """Configurations actually projected: SJLT only at the largest k (smaller ks are folds)."""
        kmax = max(self.ks)
        out = []
        for c in self.configs:
            for k in self.ks:
                cfg = parse_config(c.format(k=k))
                if cfg.kind == "sjlt" and kmax % cfg.k == 0:
                    cfg = cfg.with_k(kmax)
                if cfg not in out:
                    out.append(cfg)
        return out

    def reported_configs(self) -> list[ProjConfig]:
        out = []
        for c in self.configs:
            for k in self.ks:
                cfg = parse_config(c.format(k=k))
                if cfg not in out:
                    out.append(cfg)
        return out


# ----------------------------------------------------------------------------- problems and stores
def _problems(plan: FidelityPlan):
    """(train, validation) problem lists in collection order."""
    if plan.problems == "suite":
        from cropi.tasks.synthetic import SuiteConfig, build_suite

        suite = build_suite(SuiteConfig(pool_size=600, val_size=60, test_size_targeted=10, test_size_untargeted=5))
        return suite.pool, [p for v in suite.validation.values() for p in v]
    from lab.bench.arith import arithmetic_problems

    return arithmetic_problems()


def _collect_until(policy, problems, work: Path, tag: str, plan: FidelityPlan, need: int,
                   track: Tracker) -> tuple[list[Path], int, int]:
    """Collect blocks of ``plan.block`` problems into ``work/tag-NNN`` until ``need`` prompts have mixed reward
    groups (or the problems run out).  Returns (stores, prompts collected, usable prompts)."""
    from cropi.rollouts.trajectory_store import CollectConfig, collect, pass_rates

    cfg = CollectConfig(group_size=plan.group_size, temperature=plan.temperature, max_new_tokens=plan.max_new_tokens,
                        seed=0, chunk_size=32, batch_size=64)
    stores, total, usable = [], 0, 0
    for b in range(0, len(problems), plan.block):
        if usable >= need:
            break
        members = problems[b:b + plan.block]
        path = work / f"{tag}-{b // plan.block:03d}"
        advance = track(f"collect {tag} block {b // plan.block}", len(members))
        collect(policy, members, path, cfg, on_prompts=advance)
        rates = pass_rates(path)
        stores.append(path)
        total += len(rates)
        usable += sum(0 < r < 1 for r in rates.values())
    return stores, total, usable


def _usable_groups(stores: Sequence[Path], limit: int):
    from cropi.rollouts.trajectory_store import prompt_groups, read_store

    out = []
    for s in stores:
        for g in prompt_groups(read_store(s).to_pylist()):
            if not g.zero_variance:
                out.append(g)
                if len(out) >= limit:
                    return out
    return out


# ----------------------------------------------------------------------------- metrics
def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean rank)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den if den > 0 else math.nan


def precision_at(ids: Sequence[str], exact: Sequence[float], approx: Sequence[float], ratio: float = 0.1) -> float:
    """|top-ratio by exact ∩ top-ratio by approx| / n, n = max(1, floor(ratio N)); ties broken by id."""
    n = max(1, int(math.floor(ratio * len(ids))))
    top = lambda s: {ids[i] for i in sorted(range(len(ids)), key=lambda i: (-s[i], ids[i]))[:n]}
    return len(top(exact) & top(approx)) / n


def _sd(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def fidelity_rows(records: Sequence[dict], plan: FidelityPlan) -> list[dict]:
    ids = [r["prompt_id"] for r in records]
    exact = [r["exact"] for r in records]
    exact_sd = _sd(exact)
    rows = []
    for cfg in plan.reported_configs():
        prec, rho = [], []
        for s in range(plan.seeds):
            approx = [r["proj"][cfg.name][s] for r in records]
            prec.append(precision_at(ids, exact, approx))
            rho.append(spearman(exact, approx))
        ip = [e for r in records for e in r["ip_err"][cfg.name]]
        rows.append({"config": cfg.name, "kind": cfg.kind, "keep": cfg.keep, "k": cfg.k,
                     "precision_at_10": statistics.fmean(prec), "precision_at_10_sd": _sd(prec),
                     "spearman": statistics.fmean(rho), "spearman_sd": _sd(rho), "exact_cosine_sd": exact_sd,
                     "keep_rule": cfg.rule, "prompts": len(records), "seeds": plan.seeds,
                     # RMS |<Pg, Pv̄> − <g, v̄>| / (‖g‖ ‖v̄‖) over prompts and seeds: the speed section's error on real pairs
                     "ip_rel_error_real": math.sqrt(statistics.fmean(e * e for e in ip))})
    return rows


# ----------------------------------------------------------------------------- gradients
def _dot(a: dict, b: dict) -> float:
    return float(sum(torch.dot(a[n].flatten().double(), b[n].flatten().double()) for n in a))


def _per_prompt(policy, groups, names=None):
    """g_x per usable group (prompt_id, grads, ess), one backward pass each."""
    from cropi.gradients.popi import make_estimator

    for gb in make_estimator(policy.model, policy.pad_token_id, param_names=names).gradients(groups).batches:
        yield SimpleNamespace(prompt_id=gb.prompt_ids[0], grads=gb.prompt(0), ess=gb.ess[0])


def exact_validation_mean(policy, groups, names, work: Path, track: Tracker) -> tuple[dict, dict]:
    """(v̄, per-tensor squared-norm sums) over ``groups``; cached as safetensors + JSON."""

    path, meta_path = work / "val_mean.safetensors", work / "val_mean.json"
    ids = [g.prompt_id for g in groups]
    if path.exists() and meta_path.exists() and read_json(meta_path).get("ids") == ids:
        return load_file(str(path)), read_json(meta_path)["energy"]
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in policy.model.named_parameters() if n in names}
    energy = {n: 0.0 for n in names}
    advance = track("exact validation mean", len(groups))
    for pg in _per_prompt(policy, groups, names):
        for n, g in pg.grads.items():
            total[n].add_(g)
            energy[n] += float(g.double().pow(2).sum())
        advance(1)
    mean = {n: t.div_(len(groups)).contiguous() for n, t in total.items()}
    with atomic_path(path) as tmp:
        save_file(mean, str(tmp))
    write_json(meta_path, {"ids": ids, "energy": energy})
    return mean, energy


def _fold(v: torch.Tensor, k: int) -> torch.Tensor:
    return v.view(-1, k).sum(0)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def run_fidelity_section(plan: FidelityPlan, work: Path, track: Tracker, log: Callable[[str], None]) -> dict:
    from cropi.policy import load_policy
    from cropi.projection import calibrate_keep, make_projector, param_shapes_of

    policy = load_policy(plan.model, "cpu")
    train_p, val_p = _problems(plan)
    t0 = time.perf_counter()
    val_stores, val_total, val_usable = _collect_until(policy, val_p, work, "val", plan, plan.val_prompts, track)
    train_stores, train_total, train_usable = _collect_until(policy, train_p, work, "train", plan,
                                                             plan.train_prompts, track)
    collect_s = time.perf_counter() - t0
    log(f"collected {train_total} training prompts ({train_usable} usable) and {val_total} validation prompts "
        f"({val_usable} usable) in {collect_s:.0f} s")
    if val_usable == 0 or train_usable < 10:
        raise CropiError(f"fidelity: too few prompts with mixed rewards ({train_usable} training, {val_usable} "
                         "validation); the policy solves all or none of them")
    shapes = param_shapes_of(policy.model)
    names = list(shapes)
    t0 = time.perf_counter()
    val_groups = _usable_groups(val_stores, plan.val_prompts)
    vbar, energy = exact_validation_mean(policy, val_groups, names, work, track)
    val_s = time.perf_counter() - t0
    vbar_norm = math.sqrt(_dot(vbar, vbar))

    keep_cache: dict[tuple, dict] = {}

    def keep_of(cfg: ProjConfig):
        if cfg.rule != "calibrated":
            return cfg.keep
        own = cfg.shapes(shapes)
        if (cfg.keep, cfg.no_embed) not in keep_cache:
            # calibrate_keep only uses each tensor's summed squared entries: hand it those sums directly
            # (calibration at θ = β from the validation gradients, computed anyway)
            keep_cache[(cfg.keep, cfg.no_embed)] = calibrate_keep(
                [{n: torch.tensor([math.sqrt(energy[n])]) for n in own}], own, cfg.keep)
        return keep_cache[(cfg.keep, cfg.no_embed)]

    def make(cfg: ProjConfig, seed: int):
        return make_projector(cfg.kind, cfg.k, seed, cfg.shapes(shapes), keep=keep_of(cfg))

    def own(p, grads: dict) -> dict:
        return {n: grads[n] for n in p.names}

    projected = plan.projection_configs()
    projectors = {(c.name, s): make(c, s) for c in projected for s in range(plan.seeds)}
    pv = {key: p.project(own(p, vbar)) for key, p in projectors.items()}
    # which reported configuration comes from which projected one (itself, or a fold of the largest-k sketch)
    source = {}
    for cfg in plan.reported_configs():
        src = next(c for c in projected if c.with_k(cfg.k) == cfg and c.k % cfg.k == 0
                   and (c.k == cfg.k or c.kind == "sjlt"))
        source[cfg.name] = (src, cfg.k)

    records_path = work / "train_records.jsonl"
    wanted = [c.name for c in plan.reported_configs()]
    # a prompt is done when its last line has every requested configuration with enough seeds; a changed
    # --config list recomputes the gradients of the prompts that lack one (collection and v̄ are kept)
    latest = {r["prompt_id"]: r for r in (read_jsonl(records_path) if records_path.exists() else [])}
    records = [r for r in latest.values() if all(len(r["proj"].get(c, ())) >= plan.seeds for c in wanted)]
    done = {r["prompt_id"] for r in records}
    groups = _usable_groups(train_stores, plan.train_prompts)
    todo = [g for g in groups if g.prompt_id not in done]
    seconds = {"gradient": 0.0, **{c.name: 0.0 for c in projected}}
    counted = 0
    advance = track("train gradients", len(groups))
    advance(len(groups) - len(todo))
    checked_folds = False
    t_prev = time.perf_counter()
    for pg in _per_prompt(policy, todo, names):
        t_grad = time.perf_counter()
        seconds["gradient"] += t_grad - t_prev
        g_norm = math.sqrt(_dot(pg.grads, pg.grads))
        exact_dot = _dot(pg.grads, vbar)
        exact = exact_dot / (g_norm * vbar_norm) if g_norm > 0 else 0.0
        sketches = {}
        for (name, s), p in projectors.items():
            t = time.perf_counter()
            sketches[(name, s)] = p.project(own(p, pg.grads))
            seconds[name] += time.perf_counter() - t
        proj, ip_err = {}, {}
        for cfg in plan.reported_configs():
            src, k = source[cfg.name]
            cos, err = [], []
            for s in range(plan.seeds):
                a, b = sketches[(src.name, s)], pv[(src.name, s)]
                if k != src.k:
                    a, b = _fold(a, k), _fold(b, k)
                    if not checked_folds and s == 0:
                        direct_p = make(cfg, s)
                        direct = direct_p.project(own(direct_p, pg.grads))
                        # fp32 sums in another order differ by ~1e-5 of a bucket; another map would differ by O(1)
                        if not torch.allclose(direct, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()) + 1e-30):
                            raise RuntimeError(f"fold of {src.name} to k={k} differs from a direct projection")
                cos.append(_cos(a, b))
                err.append((float(a.double() @ b.double()) - exact_dot) / (g_norm * vbar_norm) if g_norm > 0 else 0.0)
            proj[cfg.name] = cos
            ip_err[cfg.name] = err
        checked_folds = True
        rec = {"prompt_id": pg.prompt_id, "exact": exact, "grad_norm": g_norm, "ess": pg.ess, "proj": proj, "ip_err": ip_err}
        with open(records_path, "a", encoding="utf-8") as fh:  # one line per finished prompt: the resume point
            fh.write(json.dumps(rec) + "\n")
        records.append(rec)
        counted += 1
        advance(1)
        t_prev = time.perf_counter()
    order = {g.prompt_id: i for i, g in enumerate(groups)}
    records = sorted((r for r in records if r["prompt_id"] in order), key=lambda r: order[r["prompt_id"]])
    rows = fidelity_rows(records, plan)
    # seconds per prompt for the gradient, per single projection (one seed) for each configuration; a resumed
    # run that had nothing left to compute reports the timings of the invocation that did the work
    per = {k: v / (counted * (1 if k == "gradient" else plan.seeds)) for k, v in seconds.items()} if counted else {}
    timing_path = work / "fidelity-timing.json"
    timing = read_json(timing_path) if timing_path.exists() else {}
    if counted:
        timing.update(seconds_per_prompt=per, prompts_timed=counted)
    timing["collect_seconds"] = max(collect_s, timing.get("collect_seconds", 0.0))  # a resumed collection is shorter
    timing["val_mean_seconds"] = max(val_s, timing.get("val_mean_seconds", 0.0))
    write_json(timing_path, timing)
    per = timing.get("seconds_per_prompt", {})
    counted = timing.get("prompts_timed", 0)
    collect_s, val_s = timing["collect_seconds"], timing["val_mean_seconds"]
    for r in rows:
        src, _ = source[r["config"]]
        r["projection_seconds"] = per.get(src.name)
    stats = {"train_collected": train_total, "train_usable": train_usable, "val_collected": val_total,
             "val_usable": val_usable, "train_scored": len(records), "val_in_mean": len(val_groups),
             "zero_variance_share_train": 1 - train_usable / train_total,
             "zero_variance_share_val": 1 - val_usable / val_total, "collect_seconds": collect_s,
             "val_mean_seconds": val_s, "seconds_per_prompt_this_run": per, "prompts_timed": counted,
             "model": plan.model, "group_size": plan.group_size, "temperature": plan.temperature,
             "max_new_tokens": plan.max_new_tokens, "seeds": plan.seeds}
    return {"rows": rows, "stats": stats}


# ----------------------------------------------------------------------------- scoring cost
def scoring_cost(plan: FidelityPlan, work: Path, track: Tracker, log: Callable[[str], None]) -> dict:
    """Scoring vs training seconds per prompt on the embedded default (tiny model, default suite and config)."""
    from cropi.config import RunConfig
    from cropi.policy import load_policy
    from cropi.rollouts.trajectory_store import CollectConfig, collect, prompt_groups, read_store
    from cropi.scores.engine import score_pool
    from cropi.tasks.synthetic import build_suite
    from cropi.training.grpo import grpo_step, make_optimizer, step_prompts

    run = RunConfig()
    suite = build_suite(run.data.suite)
    pool = suite.pool[:plan.scoring_pool] if plan.scoring_pool else suite.pool
    r = run.rollout
    ccfg = CollectConfig.from_rollout(r)
    policy = load_policy(run.model.name, "cpu")
    t0 = time.perf_counter()
    pool_store = collect(policy, pool, work / f"score-pool-{len(pool)}", ccfg,
                         on_prompts=track("collect scoring pool", len(pool)))
    collect_s = time.perf_counter() - t0
    vals, vals_problems = {}, {}
    for fam, probs in suite.validation.items():
        probs = probs[:plan.scoring_val_prompts] if plan.scoring_val_prompts else probs
        vals_problems[fam] = probs
        vals[fam] = collect(policy, probs, work / f"score-val-{fam}-{len(probs)}", ccfg, on_prompts=track(f"collect val {fam}", len(probs)))
    advance = track("score pool (default config)", len(pool))
    stamps = []

    def on_prompt(n):
        stamps.append((time.perf_counter(), n))
        advance(n)

    t0 = time.perf_counter()
    table = score_pool(policy, pool_store, vals, work / "scores.parquet", run, on_prompt=on_prompt).table
    score_s = time.perf_counter() - t0
    usable = sum(table.column("usable").to_pylist())
    # the pool phase alone (validation gradients come first and are amortised over a real pool): the store
    # reports once per chunk, so time the chunks after the first and spread it over their usable prompts
    # (zero-variance groups cost almost nothing next to a gradient)
    after_first = sum(n for _, n in stamps[1:])
    usable_share = usable / max(1, table.num_rows)
    pool_only = ((stamps[-1][0] - stamps[0][0]) / (after_first * usable_share)
                 if len(stamps) > 1 and after_first and usable_share else None)
    # forward+backward alone on the same pool trajectories (no projection, no cosine)
    groups = [g for g in prompt_groups(read_store(pool_store).to_pylist()) if not g.zero_variance]
    adv = track("forward+backward only", len(groups))
    t0 = time.perf_counter()
    for _ in _per_prompt(policy, groups):
        adv(1)
    fb_s = time.perf_counter() - t0
    # GRPO: default config, generation included
    train_policy = load_policy(run.model.name, "cpu")
    opt = make_optimizer(train_policy.model, run.train)
    per_step = []
    adv = track("GRPO steps (default config)", plan.grpo_steps)
    for step in range(plan.grpo_steps):
        st = grpo_step(train_policy, opt, step_prompts(suite.pool, step, run.train.prompts_per_step, run.train.seed),
                       step, run.train, run.rollout)
        per_step.append((st.rollout_seconds + st.train_seconds) / run.train.prompts_per_step)
        adv(1)
    train_per_prompt = statistics.median(per_step)
    score_per_prompt = score_s / len(pool)
    log(f"scoring {score_per_prompt * 1e3:.1f} ms per pool prompt vs GRPO {train_per_prompt * 1e3:.1f} ms per prompt")
    return {"score_seconds_per_prompt": score_per_prompt, "prompts_scored_per_second": len(pool) / score_s,
            "train_seconds_per_prompt": train_per_prompt, "train_seconds_per_prompt_steps": per_step,
            "ratio": score_per_prompt / train_per_prompt,
            "forward_backward_seconds_per_usable_prompt": fb_s / max(1, len(groups)),
            "score_seconds_per_usable_prompt_pool_only": pool_only,
            "ratio_to_forward_backward": None if pool_only is None else pool_only / (fb_s / max(1, len(groups))),
            "collect_seconds_per_prompt": collect_s / len(pool), "pool_prompts": len(pool),
            "usable_pool_prompts": usable, "validation_sets": {k: len(v) for k, v in vals_problems.items()},
            "score_config": run.select.score.__dict__, "grpo_prompts_per_step": run.train.prompts_per_step}


# ----------------------------------------------------------------------------- driver
def run_fidelity(plan: FidelityPlan, out_dir: Path, work_dir: Path, track: Tracker | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Fidelity and scoring-cost sections (resumable through ``work_dir``), merged into ``out_dir/projection.json``."""
    set_threads(plan.threads)
    track = track or (lambda desc, total: (lambda n: None))
    work_dir.mkdir(parents=True, exist_ok=True)
    plan_key = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in plan.__dict__.items()
                if k in ("model", "problems", "group_size", "temperature", "max_new_tokens", "block", "val_prompts")}
    key_path = work_dir / "fidelity-plan.json"
    if key_path.exists() and read_json(key_path).get("plan") != plan_key:
        raise CropiError(f"{work_dir}: holds a fidelity run with another setup ({read_json(key_path)['plan']}); "
                         "use another --work folder")
    write_json(key_path, {"plan": plan_key})
    fid = run_fidelity_section(plan, work_dir, track, log)
    update: dict = {"fidelity": fid["rows"]}
    st = fid["stats"]
    notes = [
        f"Fidelity: {plan.model}, {st['train_scored']} training prompts with mixed reward groups (of {st['train_collected']} "
        f"collected: zero-variance share {100 * st['zero_variance_share_train']:.0f}%), validation mean over "
        f"{st['val_in_mean']} prompts (zero-variance share {100 * st['zero_variance_share_val']:.0f}%); "
        f"G = {plan.group_size}, T = {plan.temperature}, {plan.max_new_tokens} new tokens; {plan.seeds} projection seeds.",
        "Measured while the prompts were computed: gradient {:.2f} s per prompt; one projection (one seed): {}.".format(
            st["seconds_per_prompt_this_run"].get("gradient", math.nan),
            ", ".join(f"{k} {v:.2f} s" for k, v in st["seconds_per_prompt_this_run"].items() if k != "gradient")),
    ]
    meta = {"fidelity_note": f"fidelity: {'QUICK (reduced) run' if plan.quick else 'full run'}",
            "fidelity_stats": st}
    if plan.scoring:
        cost_path = work_dir / "scoring-cost.json"
        cost = read_json(cost_path) if cost_path.exists() else None
        if cost is None:
            cost = scoring_cost(plan, work_dir, track, log)
            write_json(cost_path, cost)
        update["scoring_cost_ratio"] = cost["ratio"]
        update["scoring"] = {k: v for k, v in cost.items() if k != "schema_version"}
        meta["scoring_note"] = (f"scoring cost: embedded tiny model, {cost['pool_prompts']} pool prompts "
                                f"({'QUICK subset' if plan.quick else 'the default pool'}), default ScoreConfig")
    meta["fidelity_notes"] = notes + list(plan.notes)
    update["meta"] = meta
    return merge_results(out_dir, update)
