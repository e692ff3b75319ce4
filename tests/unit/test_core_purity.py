"""The core stays pure: no I/O library is imported under apsis_server/core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).parents[2] / "apsis_server" / "core"
FORBIDDEN = {"asyncio", "starlette", "httpx", "sqlite3", "msgpack", "uvicorn", "socket"}


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert (
                node.func.attr not in ("now", "time")
                or not isinstance(node.func.value, ast.Name)
                or node.func.value.id not in ("time", "datetime", "ora")
            ), f"{path.name} reads the clock"
