"""Every benchmark, importable so that ``python -m lab.bench`` works from an installed package and each script runs
as ``python -m lab.bench.NAME`` (index: ``benchmarks/README.md``).

Influence engine: ``speed`` (``python -m lab.bench projection``), ``fidelity`` (``python -m lab.bench fidelity``, with the
scoring cost), ``exact_scoring`` (``python -m lab.bench exact``: exact scoring next to the projection), ``common``
(configuration names, targets, the merged results file and its markdown), ``arith`` (the fidelity prompts).  Training and estimator: ``base_policy``, ``grpo_full``, ``lr_probe``,
``per_example_grads``, ``popi_bias``.

Output folders are relative to the working directory, like ``python -m lab.bench``'s: run them from the repository
root to write ``lab/results/``."""
