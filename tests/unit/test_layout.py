"""The package's shape is a rule, not a habit: imports run one way (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "synapse_guard"
# What record/ may import: it records decisions and never makes one.
RECORD_MAY_IMPORT = {"verdict", "network", "config", "keyfile", "countries", "record"}


def imported_modules(path: Path) -> set[str]:
    """The synapse_guard modules a file imports, relative to the package ('record.metrics')."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "synapse_guard":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("synapse_guard."):
                found.add(node.module.removeprefix("synapse_guard."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("synapse_guard."):
                    found.add(alias.name.removeprefix("synapse_guard."))
    return found


def files_in(wing: str | None) -> list[Path]:
    files = sorted((PACKAGE / wing if wing else PACKAGE).rglob("*.py"))
    return [f for f in files if wing or f.parent == PACKAGE]


SYNAPSE_SIDE = [None, *sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())]
SYNAPSE_SIDE.remove("cli")


@pytest.mark.parametrize("path", [p for wing in SYNAPSE_SIDE for p in files_in(wing)])
def test_nothing_that_synapse_loads_imports_the_command_line(path: Path) -> None:
    assert not [m for m in imported_modules(path) if m == "cli" or m.startswith("cli.")]


@pytest.mark.parametrize("path", files_in("record"))
def test_the_record_wing_imports_no_decision_of_a_control(path: Path) -> None:
    top = {m.split(".")[0] for m in imported_modules(path)} - {"__version__"}
    assert top <= RECORD_MAY_IMPORT, top - RECORD_MAY_IMPORT


def test_every_subpackage_says_what_lives_there_and_what_it_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init} has no docstring saying what it may import"
