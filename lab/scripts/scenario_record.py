"""Record the pool scenarios' parameters, and what they draw, before any scenario run uses them
(``lab/results/scenarios.json``).  The parameters are the config defaults of ``data.suite``; changing them after a
run has started would change the testbed under it.

    .venv/bin/python lab/scripts/scenario_record.py --out lab/results/scenarios.json
"""
import argparse
import dataclasses
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the lab is not installed

from cropi.io import write_json
from cropi.tasks.synthetic import SuiteConfig, build_suite

WHY = {
    "noisy_key_rate": (
        "A plain choice, fixed before any run: a fifth of the targeted families' pool prompts. Public math pools "
        "carry some wrong keys (GSM8K-Platinum re-labelled part of GSM8K's test set; the share in scraped training "
        "pools is not measured here). A fifth is large enough that a pass-rate filter's kept groups hold many of "
        "them, and small enough that the correct keys still dominate."),
    "targeted_share": (
        "A plain choice, fixed before any run: the targeted families make up 5% of the pool (a twentieth), against "
        "25% in the clean pool (2 of 8 families). It stands for a pool where most prompts are off the target."),
}

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--out", type=Path, required=True)
args = ap.parse_args()
clean = SuiteConfig()
out = {"schema_version": 1, "base": "the default draw (data.suite defaults, pool_seed 0)", "scenarios": {}}
for name in ("clean", "noisy_keys", "off_target"):
    cfg = dataclasses.replace(clean, scenario=name)
    suite = build_suite(cfg)
    noisy = [p for p in suite.pool if p.metadata.get("noisy_key")]
    out["scenarios"][name] = {
        "settings": {"data.suite.scenario": name} | (
            {"data.suite.noisy_key_rate": cfg.noisy_key_rate} if name == "noisy_keys" else
            {"data.suite.targeted_share": cfg.targeted_share} if name == "off_target" else {}),
        "why": WHY["noisy_key_rate"] if name == "noisy_keys" else WHY["targeted_share"] if name == "off_target" else
        "the main scenario",
        "pool_by_family": dict(Counter(p.family for p in suite.pool)),
        "noisy_keys_by_family": dict(Counter(p.family for p in noisy)),
        "validation_and_test_as_clean": True,
    }
write_json(args.out, out)
print(args.out)
