"""Experiments on top of the library: a run folder end to end (``run``), the selector comparison (``compare``,
with ``metrics``, ``report``, ``plots`` and ``locks``), a policy's profile (``profile``) and every benchmark
(``benchmarks``).  The top layer below the CLI: nothing in cropi's other packages imports from here."""
