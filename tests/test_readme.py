"""The README's commands run as written: every `cropi` command in it is accepted by the command line (its options
exist and its config resolves, before any work), the quick ones run, and the README stays under 150 lines."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cropi.cli.main as cli_main
from cropi.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands() -> list[list[str]]:
    """Every `cropi` command of the README's bash blocks, continuation lines joined, as argv after `cropi`."""
    text = README.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            words = shlex.split(line) if line else []
            if words and words[0] in (".venv/bin/cropi", "cropi"):
                out.append(words[1:])
    return out


def test_the_readme_is_short_and_names_its_commands():
    assert len(README.read_text().splitlines()) <= 150
    assert len(readme_commands()) >= 2  # the first command and the GSM8K curriculum at least


class _Resolved(Exception):
    pass


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_every_readme_command_is_accepted_and_its_config_resolves(monkeypatch, argv):
    seen = []
    real = cli_main.load_config

    def capture(path=None, overrides=None):
        if overrides is None:
            return real(path)
        seen.append(real(path, overrides))
        raise _Resolved

    monkeypatch.setattr(cli_main, "load_config", capture)
    r = CliRunner().invoke(app, argv)
    assert isinstance(r.exception, _Resolved), r.output
    assert seen


def test_the_quick_readme_commands_run(tmp_path):
    for argv in (["--help"], ["config"], ["config", "--list"], ["train", "--help"], ["compare", "--help"]):
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 0, (argv, r.output)
    assert "train.selector" in CliRunner().invoke(app, ["config", "--list"]).output
    assert "selector: cropi" in CliRunner().invoke(app, ["config"]).output


@pytest.mark.slow
def test_the_first_command_runs_as_written(tmp_path):
    """The README's first command, from a folder of its own (minutes on one core)."""
    first = readme_commands()[0]
    assert first[0] == "train"
    r = subprocess.run([sys.executable, "-m", "cropi.cli", *first], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "report: runs/first/report.md" in r.stdout and "charged" in r.stdout
    assert (tmp_path / "runs" / "first" / "report.md").exists()
