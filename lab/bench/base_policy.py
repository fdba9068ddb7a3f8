"""Profile the embedded base policy: greedy test accuracy and the pool's pass-rate histogram at G = 8.

    python -m lab.bench.base_policy [--model tiny] [--quick]

Writes lab/results/base_policy.json and base_policy.md (or runs/bench-quick/ with --quick).
"""

from __future__ import annotations

import argparse
import sys
import time

from lab.bench.common import QUICK_DIR, RESULTS_DIR
from cropi.runs.profile import profile_markdown, profile_policy
from lab.machines import machine_description
from cropi.io import write_json, write_text
from cropi.policy import load_policy
from cropi.tasks.synthetic import SuiteConfig, build_suite


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    cfg = SuiteConfig(pool_size=400, test_size_targeted=100, test_size_untargeted=50) if args.quick else SuiteConfig()
    out = QUICK_DIR if args.quick else RESULTS_DIR
    t0 = time.time()
    policy = load_policy(args.model, device="cpu")
    prof = profile_policy(policy, build_suite(cfg), group_size=8, temperature=1.0)
    result = {"benchmark": "base_policy", "model": args.model, "machine": machine_description(),
              "seconds": round(time.time() - t0, 1), "suite": cfg.__dict__, **prof}
    write_json(out / "base_policy.json", result)
    write_text(out / "base_policy.md", f"# Base policy profile ({args.model})\n\n- machine: {result['machine']}\n\n"
               + profile_markdown(prof))
    print(profile_markdown(prof))
    return 0


if __name__ == "__main__":
    sys.exit(main())
