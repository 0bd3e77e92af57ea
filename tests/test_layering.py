"""The layers (docs/architecture.md, "Layers"): each package imports only
the ones below it, and projections only their public faces.

    eventstore  ←  trading  ←  projections  ←  storectl

Read from the source with ``ast`` (every import, also those inside
functions and ``if TYPE_CHECKING:`` blocks), so an import that would only
run on some path is caught too.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("eventstore", "trading", "projections", "storectl")
#: What each package may import of the others: None, any module of it;
#: "face", only names its ``__init__`` exports.
ALLOWED: dict[str, dict[str, str | None]] = {
    "eventstore": {},
    "trading": {"eventstore": None},
    "projections": {"eventstore": "face", "trading": "face"},
    "storectl": {"eventstore": None, "trading": None, "projections": None},
}


def imports(package: str) -> Iterator[tuple[str, int, str, tuple[str, ...]]]:
    """(file, line, module, names) for every absolute import in ``package``:
    ``import a.b`` gives ("a.b", ()), ``from a import x, y`` ("a", ("x", "y"))."""
    for path in sorted((REPO / package).rglob("*.py")):
        name = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text(encoding="utf-8"), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield name, node.lineno, alias.name, ()
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield name, node.lineno, node.module, tuple(a.name for a in node.names)


def violations(package: str) -> list[str]:
    found: list[str] = []
    allowed = ALLOWED[package]
    for name, line, module, names in imports(package):
        top = module.split(".")[0]
        if top not in PACKAGES or top == package:
            continue
        where = f"{name}:{line}: {module}"
        if top not in allowed:
            found.append(f"{where}: {package} may not import {top}")
        elif allowed[top] == "face":
            if module != top:
                found.append(f"{where}: only {top}'s public face, not its module {module}")
                continue
            face = set(importlib.import_module(top).__all__)
            for imported in names or ("*",):
                if imported not in face:
                    found.append(f"{where}: {imported} is not on {top}'s public face")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_upward(package: str) -> None:
    assert violations(package) == []


def test_nothing_imports_the_programs() -> None:
    for package in ("eventstore", "trading", "projections"):
        assert not [m for _, _, m, _ in imports(package) if m.split(".")[0] == "storectl"]


def test_the_checker_sees_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It finds what it is for: an upward import, a module behind a face,
    a name that is not on it."""
    fake = tmp_path / "repo"
    for package in ("eventstore", "projections"):
        (fake / package).mkdir(parents=True)
    (fake / "eventstore" / "x.py").write_text("def f():\n    import projections.rules\n")
    (fake / "projections" / "y.py").write_text(
        "from eventstore.codec import check_value\nfrom eventstore import EventStore, sql\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", fake)
    assert violations("eventstore") == [
        "eventstore/x.py:2: projections.rules: eventstore may not import projections"
    ]
    assert violations("projections") == [
        "projections/y.py:1: eventstore.codec: only eventstore's public face, "
        "not its module eventstore.codec",
        "projections/y.py:2: eventstore: sql is not on eventstore's public face",
    ]
