"""cropi: data-efficient RLVR via off-policy influence guidance (CROPI).

Data flow (one package per arrow, imports run only backwards): tasks -> rollouts -> gradients -> projection
-> scores -> selection -> training -> evaluation -> runs (a run folder, a comparison on one machine), with the
engines' integrations and the CLI on top.  Benchmarks and long experiments live in the repository's lab/, which
is not installed.  See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
