"""The shape of the code: the import graph has no cycles, and the API views never touch storage types."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in APP.rglob("*.py") if "migrations" not in p.parts}


def imports_of(name: str) -> set[str]:
    """Every app module `name` imports, wherever the import statement is (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name and m != "app"}


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycles():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("app.api")))
def test_api_views_do_not_import_storage(name):
    assert not {m for m in GRAPH[name] if m.startswith("app.storage")}


@pytest.mark.parametrize("name", ["app.services.headers", "app.services.sse"])
def test_pure_modules_import_nothing_with_io(name):
    assert GRAPH[name] <= {"app.config", "app.version", "app.jsontext"}


def test_the_worker_class_loads_without_flask():
    """gunicorn's master imports the worker class before forking and before gevent patches anything: a
    Flask import there leaves logging handlers that every worker then fails to free at exit (a traceback)."""
    import subprocess
    import sys

    code = "import sys, app.worker; print('flask' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=APP.parent, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
