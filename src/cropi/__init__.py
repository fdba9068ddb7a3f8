"""cropi: data-efficient RLVR via off-policy influence guidance (CROPI).

Data flow (one package per arrow, imports run only backwards): tasks -> rollouts -> gradients -> projection
-> scores -> selection -> training -> evaluation, with experiments (runs, comparisons, benchmarks) and the CLI on
top.  See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
