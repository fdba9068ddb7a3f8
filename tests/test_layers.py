"""Imports run one way: every module under src/cropi imports only from its own package or a lower layer, and no
two packages import each other.  Read from the source with ``ast`` (nothing is imported), imports inside
functions included, since a deferred import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first.  Packages in one tuple share a layer and still may not import each other.
LAYERS = (
    ("core",),  # cropi/__init__.py, errors.py, io.py, extras.py, machine.py, typed.py
    ("tasks",),
    ("config",),
    ("policy", "objective"),
    ("rollouts",),
    ("gradients",),
    ("projection",),
    ("scores",),
    ("selection",),
    ("training",),
    ("evaluation",),
    ("runs",),  # a run folder end to end, and a single-machine comparison of runs
    ("integrations",),  # trainers and engines driving cropi's stages (TRL, verl, Ray)
    ("cli",),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
CORE_MODULES = {"errors", "io", "extras", "machine", "typed"}


def package_of(module: str) -> str:
    """``cropi.scores.engine`` -> ``scores``; ``cropi``, ``cropi.errors``, ``cropi.io``, ``cropi.extras`` -> ``core``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in CORE_MODULES:
        return "core"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def cropi_imports(path: Path):
    """(line, imported module) for every import of a cropi module in ``path``, relative ones resolved."""
    here = module_name(path)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cropi":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "cropi":
                # ``from cropi import x`` may name a subpackage: the dependency is on what it names
                if target == "cropi":
                    for alias in node.names:
                        sub = SRC / "cropi" / alias.name
                        yield node.lineno, f"cropi.{alias.name}" if sub.is_dir() or sub.with_suffix(".py").exists() else target
                else:
                    yield node.lineno, target


def _edges():
    """(importer package, imported package, "file:line", imported module) for every cross-package import."""
    out = []
    for path in sorted((SRC / "cropi").rglob("*.py")):
        importer = package_of(module_name(path))
        for line, target in cropi_imports(path):
            imported = package_of(target)
            if imported != importer:
                out.append((importer, imported, f"{path.relative_to(SRC)}:{line}", target))
    return out


def test_every_package_has_a_layer():
    unknown: dict[str, str] = {}
    for a, b, where, _ in _edges():
        for pkg in (a, b):
            if pkg not in RANK:
                unknown.setdefault(pkg, where)
    assert not unknown, "packages missing from LAYERS in tests/test_layers.py: " + ", ".join(
        f"{pkg} (first seen at {where})" for pkg, where in sorted(unknown.items()))


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = []
    for importer, imported, where, target in _edges():
        if importer not in RANK or imported not in RANK:
            continue  # reported by test_every_package_has_a_layer
        if RANK[imported] >= RANK[importer]:
            bad.append(f"{where}: {importer} (layer {RANK[importer]}) imports {target} "
                       f"({imported}, layer {RANK[imported]})")
    assert not bad, "imports against the layer order:\n  " + "\n  ".join(bad)


def test_no_import_cycle_between_packages():
    graph: dict[str, dict[str, str]] = {}
    for importer, imported, where, target in _edges():
        graph.setdefault(importer, {}).setdefault(imported, f"{where} imports {target}")
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                loop = path[path.index(nxt):] + [nxt]
                cycles.append(" -> ".join(loop) + "\n    " + "\n    ".join(
                    graph[a][b] for a, b in zip(loop, loop[1:])))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles between packages:\n  " + "\n  ".join(cycles)


def test_the_package_imports_nothing_from_the_lab():
    """The lab (top-level lab/, not installed) imports the package, never the reverse: an installed cropi has
    no lab to import."""
    bad = []
    for path in sorted((SRC / "cropi").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(SRC)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "lab"]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_deferred_and_relative_imports():
    """The parser itself: a relative import and an import inside a function both count."""
    relative = SRC / "cropi" / "projection" / "kernels.py"  # ``from ..errors import ConfigError``
    assert "cropi.errors" in {t for _, t in cropi_imports(relative)}
    deferred = SRC / "cropi" / "tasks" / "__init__.py"  # ``from cropi.tasks.grading import ...`` in a function
    assert "cropi.tasks.grading" in {t for _, t in cropi_imports(deferred)}
