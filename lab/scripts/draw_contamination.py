"""How many of a draw's validation and test problems the embedded tiny policy saw in SFT, before and after the
suite kept every draw's held-out splits out of SFT's problems (``cropi.tasks.synthetic.embedded_sft_keys``).
Writes ``lab/results/draw-contamination.json``.

    python lab/scripts/draw_contamination.py          # about a minute on one core
"""

from __future__ import annotations

import json
from pathlib import Path

from cropi.policy.tiny import PretrainConfig, sft_data
from cropi.tasks.synthetic import SuiteConfig, _build, build_suite

OUT = Path(__file__).resolve().parents[1] / "results" / "draw-contamination.json"
DRAWS = {"draw 0 (pool_seed 0)": {}, "draw 1 (pool_seed 1)": {"pool_seed": 1},
         "draw 2 (pool_seed 2, easier levels)": {"pool_seed": 2, "difficulty_weights": [3.0, 3.0, 2.0, 1.0, 1.0]}}


def main() -> None:
    seen: dict[str, set[str]] = {}
    for p in [x for phase in sft_data(PretrainConfig()) for x in phase]:  # what the policy was trained on
        seen.setdefault(p.family, set()).add(p.metadata["canonical"])

    def share(problems) -> float:
        return sum(p.metadata["canonical"] in seen.get(p.family, ()) for p in problems) / len(problems)

    out = {"schema_version": 1, "what": "share of each draw's test and validation problems in the tiny policy's SFT "
           "data (both phases), with the suite as it drew them before, and as it draws them now", "draws": {}}
    for name, extra in DRAWS.items():
        cfg = SuiteConfig(**extra)
        row = {}
        for label, suite in (("before", _build(cfg, {})), ("now", build_suite(cfg))):
            row[label] = {"test": round(share(suite.test_problems()), 4),
                          "validation": round(share([p for v in suite.validation.values() for p in v]), 4)}
        out["draws"][name] = row
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(OUT)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
