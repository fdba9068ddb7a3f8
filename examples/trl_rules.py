"""A cropi rule choosing what TRL's GRPOTrainer trains on, with a dataset and a reward function of the user's own.

Runs on CPU with the embedded tiny policy, the embedded arithmetic prompts exported as a plain
``datasets.Dataset`` and a reward function written here (seconds per step)::

    pip install 'cropi[trl]'
    python examples/trl_rules.py --out runs/trl-rules [--rule cropi_harvest --steps 10]

``--rule`` is one of cropi_harvest (needs the validation sets: here two held-out sets of the same families),
greso, online_filter, dapo.  TRL writes its output under --out as usual; cropi adds cropi_rule.json there (each
step's chosen prompts and what finding them cost) and prints one line per step.  Without TRL it prints one line
naming ``cropi[trl]`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys

from cropi.config import load_config
from cropi.errors import CropiError
from cropi.integrations.trl import require_trl
from cropi.policy import load_policy
from cropi.tasks.loading import load_data
from cropi.tasks.synthetic import FAMILIES


def exact_match(completions, solution, **kwargs) -> list[float]:
    """The user's reward: 1 when the completion (spaces dropped) is the solution."""
    return [1.0 if "".join(c.split()) == s else 0.0 for c, s in zip(completions, solution)]


def user_datasets():
    """The embedded suite as a user would hold it: prompts, a ``solution`` column, a ``topic`` column."""
    from datasets import Dataset

    suite = load_data(load_config(None, ["data.suite.pool_size=400", "data.suite.val_size=24",
                                         "data.suite.test_size_targeted=4", "data.suite.test_size_untargeted=2"]).data)

    def table(problems):  # the tiny policy writes sums and differences least significant digit first
        return Dataset.from_list([{"prompt": p.prompt, "solution": FAMILIES[p.family].target_text(p.answer),
                                   "topic": p.family} for p in problems])

    return table(suite.pool), {name: table(v) for name, v in suite.validation.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="TRL's output_dir")
    ap.add_argument("--rule", default="cropi_harvest", help="cropi_harvest, greso, online_filter or dapo")
    ap.add_argument("--steps", type=int, default=10, help="GRPO steps")
    opts = ap.parse_args(argv)
    try:
        trl = require_trl()
        from cropi.integrations.trl_rules import CropiGRPOTrainer

        train, validation = user_datasets()
        policy = load_policy("tiny", device="cpu")
        args = trl.GRPOConfig(output_dir=opts.out, max_steps=opts.steps, loss_type="grpo", learning_rate=1e-3,
                              per_device_train_batch_size=32, num_generations=8, max_completion_length=8,
                              use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
                              save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
        trainer = CropiGRPOTrainer(
            rule=opts.rule, validation=validation if opts.rule == "cropi_harvest" else None, family_column="topic",
            rule_settings=["select.score.max_val_prompts=24"],
            model=policy.model, processing_class=policy.tokenizer, reward_funcs=exact_match, args=args,
            train_dataset=train)
        trainer.train()
    except CropiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for s in trainer.cropi_steps:
        print(f"step {s['step']}: trained prompts {s['prompts']} ({s['mixed']} with mixed rewards), "
              f"{s['sampled_sequences']} completions sampled, {s['skipped_prompts']} prompts skipped unsampled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
