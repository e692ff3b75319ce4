"""The packages import across layers only one way: server and agent share apsis_common.

The agent runs on hosts that have only the agent: what both sides need (the wire
format, keys, TLS) is in apsis_common, and each owns its own state. Every import
statement counts, inside functions and `if TYPE_CHECKING:` blocks too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# package -> the packages none of its modules may import
FORBIDDEN = {
    "apsis_server": {"apsis_agent"},
    "apsis_agent": {"apsis_server"},
    "apsis_common": {"apsis_server", "apsis_agent"},
}
MODULES = [
    (package, path)
    for package in sorted(FORBIDDEN)
    for path in sorted((ROOT / package).rglob("*.py"))
]


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import statement anywhere in `tree`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize(
    ("package", "path"), MODULES, ids=[str(p.relative_to(ROOT)) for _, p in MODULES]
)
def test_module_imports_no_other_side(package: str, path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for line, module in imported(tree):
        assert module.split(".")[0] not in FORBIDDEN[package], (
            f"{path.relative_to(ROOT)}:{line} imports {module}"
        )


@pytest.mark.parametrize(
    "source",
    [
        "import apsis_agent.state\n",
        "from apsis_agent.state import StateDir\n",
        "from apsis_agent import state\n",
        "def f() -> None:\n    from apsis_agent import provision\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from apsis_agent import x\n",
    ],
)
def test_every_kind_of_import_is_seen(source: str) -> None:
    assert any(module.startswith("apsis_agent") for _, module in imported(ast.parse(source)))


def test_the_layers_have_modules() -> None:
    """A moved package would otherwise pass with nothing checked."""
    assert {package for package, _ in MODULES} == set(FORBIDDEN)
    assert len(MODULES) > 30
