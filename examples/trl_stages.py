"""TRL's GRPOTrainer on the prompts cropi selects, re-selected with the current weights at every stage.

Runs on CPU with the embedded tiny policy and a small embedded suite (about a minute of CPU time: behaviour
stores, two scorings, eight GRPO steps)::

    pip install 'cropi[trl]'
    python examples/trl_stages.py --out runs/trl-demo [--steps 8 --stages 2]

It writes runs/trl-demo/ (behaviour stores, stages/stage-NN/selection.json and scores, TRL's output per
stage, trl_stages.json) and prints, per stage, how many prompts cropi chose and TRL trained on.  Without TRL it
prints one line naming ``cropi[trl]`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.integrations.trl import require_trl, train_stages
from cropi.policy import load_policy
from cropi.tasks.loading import load_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run folder (must not hold a staged run yet)")
    ap.add_argument("--steps", type=int, default=8, help="GRPO steps over all stages")
    ap.add_argument("--stages", type=int, default=2, help="selection stages")
    opts = ap.parse_args(argv)
    try:
        trl = require_trl()
        # the data side: a small embedded suite, 10% of the pool per stage, cheap exact scoring
        cfg = load_config(None, ["data.suite.pool_size=80", "data.suite.val_size=16",
                                 "data.suite.test_size_targeted=4", "data.suite.test_size_untargeted=2",
                                 f"select.stages={opts.stages}", "select.ratio=0.1", "rollout.group_size=8",
                                 "select.candidates=0", "select.size=0",  # the whole pool scored, 10% kept
                                 "select.score.max_val_prompts=8", "model.device=cpu"])
        policy = load_policy("tiny", device="cpu")
        # the training side: TRL's own settings (4 prompts x 4 completions per step)
        args = trl.GRPOConfig(output_dir=f"{opts.out}/trl", max_steps=opts.steps, loss_type="grpo",
                              per_device_train_batch_size=16, num_generations=4, max_completion_length=8,
                              learning_rate=1e-3, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                              report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
        result = train_stages(policy.model, policy.tokenizer, load_data(cfg.data), args, cfg, opts.out)
    except CropiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for rec in result.stages:
        print(f"stage {rec.stage}: steps {rec.start_step}-{rec.end_step}, cropi chose {len(rec.selected)} prompts, "
              f"TRL graded {len(rec.trained)} completions of {len(set(rec.trained))} of them, "
              f"lr {rec.lr_first:.2e} -> {rec.lr_after:.2e}, optimizer step {rec.optimizer_steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
