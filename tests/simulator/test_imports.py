"""The simulator's modules import each other one way only: no cycle, type-only imports included.

A cycle hides which part depends on which (the hosts once imported the simulator for a type, which
imported the hosts); reading every import statement, ``if TYPE_CHECKING`` blocks and function
bodies included, keeps that from coming back.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "agent.simulator"
ROOT = Path(__file__).resolve().parents[2] / "agent" / "simulator"


def _module(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def import_graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports."""
    modules = {_module(p) for p in ROOT.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in ROOT.glob("*.py"):
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges |= {n for n in names if n in modules}
        graph[_module(path)] = edges - {_module(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_simulator_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())

    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_part_imports_the_package_itself() -> None:
    """``from agent.simulator import x`` inside the package runs ``__init__``, which imports
    every part: a cycle through the package."""
    importers = sorted(m for m, edges in import_graph().items() if PACKAGE in edges)

    assert importers == []
