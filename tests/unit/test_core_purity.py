"""The core stays pure: nothing under apsis_server/core reaches an I/O library.

Imports are read from the source (`ast`), not by importing, and followed through
every module of the project a core module reaches, however indirectly: an import
inside a function or under `TYPE_CHECKING` counts, and so does each package whose
`__init__` runs on the way.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CORE = ROOT / "apsis_server" / "core"
# Followed into: the project's own packages.
PROJECT = ("apsis_common", "apsis_server")
# Never reached from the core: I/O libraries, and the project's impure parts.
FORBIDDEN = {
    "asyncio",
    "starlette",
    "httpx",
    "sqlite3",
    "msgpack",
    "msgspec",
    "uvicorn",
    "socket",
    "apsis_agent",
    "cli",
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_of(module: str, root: Path) -> Path | None:
    """The file of a project module, or None if it is not one."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def with_parents(module: str) -> Iterator[str]:
    """`a.b.c` runs `a`, `a.b` and `a.b.c`."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def imports(path: Path, root: Path) -> Iterator[str]:
    """Every module `path` imports anywhere in its source, parent packages included;
    `from X import Y` yields `X.Y` too when that is a module of the project."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from with_parents(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield from with_parents(base)
            for alias in node.names:
                if source_of(f"{base}.{alias.name}", root) is not None:
                    yield f"{base}.{alias.name}"


def forbidden(module: str) -> bool:
    top, _, rest = module.partition(".")
    if top in FORBIDDEN:
        return True
    # Of the server, only the core and the package's own __init__ may be reached.
    return top == "apsis_server" and rest != "" and rest.split(".")[0] != "core"


def impure_chain(path: Path, root: Path) -> list[str] | None:
    """The first chain of imports from `path` to a forbidden module, or None."""
    # Importing a module first runs the packages it is in.
    queue = list(with_parents(module_name(path, root)))
    came_from: dict[str, str | None] = dict.fromkeys(queue)
    while queue:
        current = queue.pop(0)
        source = source_of(current, root)
        if source is None:
            continue
        for module in imports(source, root):
            if module in came_from:
                continue
            came_from[module] = current
            if forbidden(module):
                chain = [module]
                while (previous := came_from[chain[-1]]) is not None:
                    chain.append(previous)
                return chain[::-1]
            if module.split(".")[0] in PROJECT:
                queue.append(module)
    return None


CORE_MODULES = sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_reaches_no_io(path: Path) -> None:
    chain = impure_chain(path, ROOT)
    assert chain is None, " → ".join(chain or [])


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_reads_no_clock(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert (
                node.func.attr not in ("now", "time")
                or not isinstance(node.func.value, ast.Name)
                or node.func.value.id not in ("time", "datetime", "ora")
            ), f"{path.name} reads the clock"


FILES = {
    "apsis_server/__init__.py": "",
    "apsis_server/core/__init__.py": "",
    "apsis_server/core/clean.py": "import json\nfrom . import sibling\n",
    "apsis_server/core/sibling.py": "from apsis_common import wire\n",
    "apsis_server/core/typed.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..engine import engine\n"
    ),
    "apsis_server/core/late.py": "def f() -> None:\n    from .deep.inner import x\n",
    "apsis_server/core/deep/__init__.py": "import apsis_common.net\n",
    "apsis_server/core/deep/inner.py": "x = 1\n",
    "apsis_server/engine/__init__.py": "",
    "apsis_server/engine/engine.py": "",
    "apsis_common/__init__.py": "",
    "apsis_common/wire.py": "from apsis_common.codec import encode\n",
    "apsis_common/codec.py": "import msgspec\n",
    "apsis_common/net.py": "import socket\n",
}


@pytest.mark.parametrize(
    ("module", "chain"),
    [
        (
            "apsis_server/core/clean.py",
            "apsis_server.core.clean apsis_server.core.sibling apsis_common.wire"
            " apsis_common.codec msgspec",
        ),
        ("apsis_server/core/typed.py", "apsis_server.core.typed apsis_server.engine"),
        (
            "apsis_server/core/late.py",
            "apsis_server.core.late apsis_server.core.deep apsis_common.net socket",
        ),
        ("apsis_server/core/deep/inner.py", "apsis_server.core.deep apsis_common.net socket"),
    ],
)
def test_chains_are_followed(tmp_path: Path, module: str, chain: str) -> None:
    """The walk itself: relative imports, `from package import module`, imports under
    TYPE_CHECKING or in a function, and packages run on the way all count."""
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = impure_chain(tmp_path / module, tmp_path)
    assert found is not None
    assert found[-len(chain.split()) :] == chain.split()
