"""The folders are floors: each imports only from the floors below it, and no module imports itself back.

Every import counts, wherever it stands: at the top of a module, inside a function (a lazy import that keeps
torch or prometheus_client out of a process), under ``TYPE_CHECKING``. A function-local import may put off a
cost; it may not hide a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BELOW: dict[str, set[str]] = {
    "shared": {"shared"},
    "api": {"api", "shared"},
    "workers": {"workers", "shared"},
    "cli": {"cli", "shared", "api", "workers"},
}
"""What each top-level package may import from this project."""

OURS = {"api", "workers", "shared", "cli", "bench", "tests"}
PRODUCT = ("api", "workers", "shared", "cli", "bench")

SHARED_FLOORS: dict[str, set[str]] = {
    "shared.errors": set(),
    "shared.infra": {"shared.errors"},
    "shared.ml": {"shared.errors", "shared.infra"},
    "shared.store": {"shared.errors", "shared.infra"},
    "shared.jobs": {"shared.errors", "shared.infra"},
    "shared.logic": {"shared.errors", "shared.infra", "shared.ml", "shared.store", "shared.jobs"},
}
"""Inside shared/, what each room may import besides itself: stores hold Redis state and know no model, models
know no store, the job system knows neither, and the composition layer (logic/) stands on all of them."""


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of this project that ``path`` imports, anywhere in the module (lazy ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


def test_each_package_imports_only_from_the_floors_below() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) - allowed)
        for package, allowed in BELOW.items()
        for path in sorted((REPO / package).rglob("*.py"))
        if imported_packages(path) - allowed
    }
    assert offenders == {}


# -- the module graph ----------------------------------------------------------------------------------------
@cache
def modules() -> dict[str, Path]:
    """Every product module by its dotted name (a package by its own name)."""
    found = {}
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _module_of(name: str) -> str | None:
    """The module ``name`` lies in: itself, or the longest prefix of it that is a module of ours."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, path: Path) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            for alias in node.names:  # ``from a import b``: module a.b when there is one, else a name in a
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the modules of ours it imports, by any import statement anywhere in it."""
    return {
        module: frozenset(t for target in _targets(module, path) if (t := _module_of(target)) and t != module)
        for module, path in modules().items()
    }


def circles() -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph():
        if root in index:
            continue
        work = [(root, iter(sorted(graph()[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    work.append((nxt, iter(sorted(graph()[nxt]))))
                    break
                if nxt in stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
    return found


def test_no_circle_in_the_import_graph() -> None:
    assert circles() == []


def test_the_graph_is_read_whole() -> None:
    """The reader sees relative, lazy and package imports: the checks above would pass on a blind one."""
    edges = graph()
    assert "api.context" in edges["api.jobs"]  # relative: from .context import ...
    assert "shared.ml.siamese" in edges["shared.ml.training"]  # lazy: inside train()
    assert "shared.logic.evaluation" in edges["workers.janitor"]  # package: from shared.logic import evaluation
    assert "api.metrics" in edges["api"]  # the blueprints, imported inside create_app


def room(module: str) -> str:
    """The room of a shared module: shared.errors, or shared.<sub-package>."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_rooms_of_shared_import_only_the_rooms_below() -> None:
    offenders = {
        module: sorted({room(t) for t in targets if room(t) != room(module) and room(t) not in allowed})
        for module, targets in graph().items()
        if module.startswith("shared.") and (allowed := SHARED_FLOORS.get(room(module))) is not None
        if any(room(t) != room(module) and room(t) not in allowed for t in targets)
    }
    assert offenders == {}


def test_no_blueprint_imports_the_package_that_builds_the_app() -> None:
    """The factory (api/__init__.py) imports the blueprints; they reach what they share through api/context.py.
    (api/server.py, which serves the app the factory builds, stands above it.)"""
    blueprints = [m for m, path in modules().items() if m.startswith("api.") and "APIBlueprint(" in path.read_text()]
    assert len(blueprints) >= 10
    assert sorted(m for m in blueprints if "api" in graph()[m]) == []
