"""cropi: data-efficient RLVR via off-policy influence guidance (CROPI).

Data flow (one module per arrow): tasks -> rollouts -> gradients -> projection -> scores -> selection
-> training -> evaluation.  See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
