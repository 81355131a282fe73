"""Import boundaries: the engine never imports its interfaces; the interfaces never reach into the ledger.

The HTTP API (``api/``) and the ``coopdp`` command (``cli/``) call :class:`engine.Engine`, which owns
every use of the ledger: charging, releases and the stewards' governance records.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
INTERFACES = ("api", "cli")


def _modules(package: str) -> list[Path]:
    return sorted((REPOSITORY / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (a function's own imports too)."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return imported


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("path", _modules("engine"), ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_the_engine_imports_no_interface(path: Path) -> None:
    upward = sorted(m for m in _imports(path) if any(_within(m, package) for package in INTERFACES))
    assert upward == [], f"{path.relative_to(REPOSITORY)} imports {upward}"


@pytest.mark.parametrize(
    "path",
    [path for package in INTERFACES for path in _modules(package)],
    ids=lambda path: str(path.relative_to(REPOSITORY)),
)
def test_the_interfaces_never_reach_into_the_ledger(path: Path) -> None:
    source = path.read_text()
    assert not re.search(r"\.ledger\.", source), f"{path.relative_to(REPOSITORY)} reaches into the ledger"
    ledger_imports = sorted(m for m in _imports(path) if _within(m, "engine.ledger"))
    assert ledger_imports == [], f"{path.relative_to(REPOSITORY)} imports {ledger_imports}"


def test_the_boundaries_are_checked_on_real_code() -> None:
    """The checks above see the modules they guard (a moved package would make them vacuous)."""
    assert len(_modules("engine")) > 20 and _modules("api") and _modules("cli")
    assert "engine.ledger" in _imports(REPOSITORY / "engine" / "engine.py")
