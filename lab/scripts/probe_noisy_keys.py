"""Does the offline influence score see the wrong keys?  The ``noisy_keys`` pool's targeted prompts, collected with
the embedded policy (G = 8) and scored with ``cropi score`` against the two validation sets; the mis-keyed prompts
set against the rest among the prompts with mixed rewards (``lab/results/noisy_keys-probe.json``).

If the score sees them, the mis-keyed share of the top ``select.ratio`` falls below their share of the mixed
prompts, their cosines sit lower, and the chance that a random mis-keyed prompt scores below a random correct one
(``p_mis_keyed_lower``) is well above one half.  The targeted families come first in the pool (``data.suite``
families in order), so ``--limit`` takes exactly them.  Resumable (``cropi collect`` and ``cropi score`` are).

    OMP_NUM_THREADS=1 .venv/bin/python lab/scripts/probe_noisy_keys.py --work runs/probe-noisy_keys \
        --out lab/results/noisy_keys-probe.json
"""
import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.config import load_config
from cropi.io import write_json
from cropi.tasks.synthetic import build_suite

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--work", type=Path, required=True, help="folder for the stores and the scores (not committed)")
ap.add_argument("--out", type=Path, required=True)
ap.add_argument("--cropi", default=".venv/bin/cropi")
args = ap.parse_args()

SETTINGS = ["--set", "data.suite.scenario=noisy_keys", "--set", "rollout.group_size=8"]
cfg = load_config(None, [s for s in SETTINGS if s != "--set"])
suite = build_suite(cfg.data.suite)
n_targeted = sum(p.family in suite.targeted for p in suite.pool)
assert all(p.family in suite.targeted for p in suite.pool[:n_targeted]), "the targeted families must come first"
mis_keyed = {p.id: bool(p.metadata.get("noisy_key")) for p in suite.pool[:n_targeted]}


def cropi(*argv: str) -> None:
    subprocess.run([args.cropi, *argv, *SETTINGS], check=True)


work = args.work
cropi("collect", "--out", str(work / "pool"), "--split", "pool", "--limit", str(n_targeted))
stores = []
for name in suite.targeted:
    cropi("collect", "--out", str(work / f"val-{name}"), "--split", f"validation:{name}")
    stores += ["--val-store", f"{name}={work / f'val-{name}'}"]
cropi("score", "--pool-store", str(work / "pool"), *stores, "--out", str(work / "scores.parquet"))

t = pq.read_table(work / "scores.parquet").to_pydict()
rows = [dict(zip(t, vals)) for vals in zip(*t.values())]
mixed = [r for r in rows if r["usable"]]
top = [r for r in rows if r["fused_rank"] is not None]  # the fused top select.ratio (ranks 1..n)


def mis_share(rs) -> float | None:
    return round(sum(mis_keyed[r["prompt_id"]] for r in rs) / len(rs), 4) if rs else None


def p_lower(name: str) -> float | None:
    bad = [r[f"score_{name}"] for r in mixed if mis_keyed[r["prompt_id"]]]
    good = [r[f"score_{name}"] for r in mixed if not mis_keyed[r["prompt_id"]]]
    if not bad or not good:
        return None
    pairs = sum((b < g) + 0.5 * (b == g) for b in bad for g in good)
    return round(pairs / (len(bad) * len(good)), 4)


def mean(xs) -> float | None:
    return round(statistics.fmean(xs), 5) if xs else None


write_json(args.out, {
    "schema_version": 1, "what": __doc__.split("\n\n")[0], "settings": SETTINGS[1::2],
    "policy": "embedded tiny policy, before any RL", "select_ratio": cfg.select.ratio,
    "targeted_prompts": len(rows), "mis_keyed_in_pool": sum(mis_keyed.values()),
    "mis_keyed_share_pool": mis_share(rows), "mixed_prompts": len(mixed), "mis_keyed_share_mixed": mis_share(mixed),
    "top_prompts": len(top), "mis_keyed_share_top": mis_share(top),
    "per_set": {name: {
        "mean_score_mis_keyed": mean([r[f"score_{name}"] for r in mixed if mis_keyed[r["prompt_id"]]]),
        "mean_score_correct": mean([r[f"score_{name}"] for r in mixed if not mis_keyed[r["prompt_id"]]]),
        "p_mis_keyed_lower": p_lower(name)} for name in suite.targeted},
})
print(args.out)
