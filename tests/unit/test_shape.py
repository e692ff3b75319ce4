"""The server's shape, checked on its source: one module sets run states, and no
module imports another that imports it back (TYPE_CHECKING imports included)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from apsis_server.core import lifecycle

SERVER = Path(__file__).resolve().parents[2] / "apsis_server"
# Where a run is given a state: the lifecycle (every transition), and the stores,
# which read runs back from their rows.
SETS_STATE = {"core/lifecycle.py", "store/sqlite.py", "store/memory.py"}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SERVER.rglob("*.py")):
        rel = path.relative_to(SERVER.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def _state_settings(tree: ast.AST) -> list[int]:
    """Lines that give a run a state: `state=` passed to `replace(...)` or `Run(...)`
    (other than `Run(..., state=State.NEW)`, a run not yet in the lifecycle)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("replace", "Run", "_replace"):
            continue
        if node.args and ast.unparse(node.args[0]) == "config":
            continue  # the server's Config has a `state` too: its state directory
        for keyword in node.keywords:
            if keyword.arg == "state" and ast.unparse(keyword.value) != "State.NEW":
                found.append(node.lineno)
            if keyword.arg is None and name != "Run":  # **changes could hold a state
                found.append(node.lineno)
    return found


def test_only_the_lifecycle_sets_a_run_state() -> None:
    offenders = {
        str(path.relative_to(SERVER)): lines
        for _, path in modules()
        if str(path.relative_to(SERVER)) not in SETS_STATE
        and (lines := _state_settings(ast.parse(path.read_text())))
    }
    assert offenders == {}, f"a run's state is set outside core/lifecycle.py: {offenders}"


def test_the_check_finds_a_state_set_by_hand() -> None:
    bad = "new = dataclasses.replace(run, state=State.ERROR)\nr = run.replace(**changes)\n"
    assert _state_settings(ast.parse(bad)) == [1, 2]
    fine = "run = Run(run_id, job_id, args, state=State.NEW)\nx = text.replace('a', 'b')\n"
    assert _state_settings(ast.parse(fine)) == []


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules a module imports, anywhere in it (TYPE_CHECKING included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    found = dict(modules())
    # A package imports nothing by being the parent of a module: only its own imports count.
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_architecture_doc_shows_the_lifecycle_table_of_the_code() -> None:
    doc = (SERVER.parent / "docs" / "architecture.md").read_text()
    assert lifecycle.table_markdown() in doc, "regenerate the table in docs/architecture.md"
