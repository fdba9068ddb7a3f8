"""User-facing errors.  The CLI prints ``str(error)`` as one line and exits with code 2."""

from __future__ import annotations


class CropiError(Exception):
    """Base class for errors caused by user input or environment (not bugs)."""


class DataError(CropiError):
    """Bad input data: names the file, the line (1-based, when known) and what is wrong."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(CropiError):
    """Invalid configuration value or override."""
