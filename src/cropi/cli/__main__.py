"""``python -m cropi.cli``: the demo's helper process, and the command line without its script."""

from cropi.cli import app

app()
