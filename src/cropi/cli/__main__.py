"""``python -m cropi.cli``: the demo's helper process."""

from cropi.cli import main

main()
