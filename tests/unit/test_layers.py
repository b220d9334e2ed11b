"""The folders are floors: each imports only from the floors below it (README's folder table)."""

from __future__ import annotations

import ast
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
