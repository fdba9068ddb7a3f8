"""Which targeted prompts the harvest trained on in the ``noisy_keys`` scenario: the share of its trained targeted
groups whose key is the common mistake, against that share in the pool (``lab/results/noisy_keys-trained.json``).

Only ``cropi_harvest`` records its trained groups (``RUN/trained/step-*.parquet``, the store it scores from), so the
peers' shares are not known.  A trained group comes from one of two sources the record does not tell apart:
GRESO's stream or the harvested ranking.  Every first training of a prompt comes from the stream; a repeat comes
from the ranking or from the stream coming round again.  First trainings and repeats are counted apart.  A
mis-keyed group's reward is the share of responses that gave the mistake.

    .venv/bin/python lab/scripts/trained_noisy_keys.py runs/compare-noisy_keys/runs/cropi_harvest-s* \
        --out lab/results/noisy_keys-trained.json
"""
import argparse
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.config import load_config
from cropi.io import write_json
from cropi.tasks.synthetic import build_suite

QUARTERS = 4


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def read_run(run: Path) -> dict:
    cfg = load_config(run / "config.yaml")
    suite = build_suite(cfg.data.suite)
    targeted = {p.id: bool(p.metadata.get("noisy_key")) for p in suite.pool if p.family in suite.targeted}
    steps = sorted(run.glob("trained/step-*.parquet"))
    if not steps:
        raise SystemExit(f"{run}: no trained/step-*.parquet (only cropi_harvest records its trained groups)")
    budget = int(steps[-1].stem.split("-")[1]) + 1  # steps are numbered from 0
    seen: set[str] = set()
    rows = []  # (step, mis-keyed, first training, group reward)
    n_groups = 0
    for path in steps:
        step = int(path.stem.split("-")[1])
        t = pq.read_table(path, columns=["prompt_id", "reward"]).to_pydict()
        groups: dict[str, list[float]] = {}
        for pid, r in zip(t["prompt_id"], t["reward"]):
            groups.setdefault(pid, []).append(r)
        n_groups += len(groups)
        for pid, rewards in groups.items():
            if pid in targeted:
                rows.append((step, targeted[pid], pid not in seen, sum(rewards) / len(rewards)))
            seen.add(pid)

    def count(sel) -> dict:
        chosen = [r for r in rows if sel(r)]
        bad = [r for r in chosen if r[1]]
        return {"targeted_groups": len(chosen), "mis_keyed": len(bad),
                "mis_keyed_share": share(len(bad), len(chosen)),
                "mis_keyed_mean_reward": round(sum(r[3] for r in bad) / len(bad), 4) if bad else None}

    edges = [round(budget * q / QUARTERS) for q in range(QUARTERS + 1)]
    bad_pool = sum(targeted.values())
    return {
        "run": run.name,
        "pool_targeted": len(targeted), "pool_mis_keyed": bad_pool,
        "pool_mis_keyed_share": share(bad_pool, len(targeted)),
        "trained_groups": n_groups, "targeted_share_of_trained": share(len(rows), n_groups),
        "all": count(lambda r: True),
        "first_trainings": count(lambda r: r[2]),
        "repeats": count(lambda r: not r[2]),
        "by_quarter": {f"steps {a}-{b - 1}": count(lambda r, a=a, b=b: a <= r[0] < b)
                       for a, b in zip(edges, edges[1:])},
        "distinct_mis_keyed_trained": sum(bad and pid in seen for pid, bad in targeted.items()),
        "distinct_targeted_trained": sum(pid in seen for pid in targeted),
    }


ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("runs", type=Path, nargs="+", help="cropi_harvest run folders of the noisy_keys comparison")
ap.add_argument("--out", type=Path, required=True)
args = ap.parse_args()
runs = [read_run(r) for r in args.runs]
write_json(args.out, {"schema_version": 1, "what": __doc__.split("\n\n")[0], "sources": __doc__.split("\n\n")[1],
                      "runs": runs})
for r in runs:
    print(f"{r['run']}: targeted {r['targeted_share_of_trained']} of trained groups; mis-keyed share of them "
          f"{r['all']['mis_keyed_share']} (pool {r['pool_mis_keyed_share']}), first trainings "
          f"{r['first_trainings']['mis_keyed_share']}, repeats {r['repeats']['mis_keyed_share']}")
