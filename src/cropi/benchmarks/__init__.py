"""Benchmarks of the influence engine (issue 3 §5), importable so that ``cropi bench`` works from an installed
package: ``speed`` (``cropi bench projection``), ``fidelity`` (``cropi bench fidelity``, with the scoring cost),
``common`` (configuration names, the merged results file and its markdown), ``arith`` (the fidelity prompts)."""
