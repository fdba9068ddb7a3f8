"""The ``cropi`` command line (``cropi.cli.main``), its commands by job: ``pipeline``, ``train``, ``compare``."""

from cropi.cli import compare, pipeline, train  # noqa: F401  (registers the commands)
from cropi.cli.main import app

__all__ = ["app"]
