"""The module map holds: dependencies point one way, no part below the wiring imports it, and there
is no import cycle anywhere in ``agent/``, the simulator included (imports for type checking and
inside functions count too: a cycle that only type checkers see still ties two modules together).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "agent"
WIRING = {"agent.cli", "agent.server", "agent.runtime", "agent.__main__"}
"""The modules that wire the parts together; no part imports them."""
VIEWS = {"agent.snapshot", "agent.metrics", "agent.views"}
"""What renders: the read model and everything that turns it into a page."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(AGENT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in AGENT.rglob("*.py")}


def known(name: str) -> str | None:
    """The module of ``agent`` that ``name`` (a module, or a name in one) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> Iterator[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    yield from imports_in(path.read_text(encoding="utf-8"), module, package)


def imports_in(source: str, module: str, package: str) -> Iterator[str]:
    """Every module of ``agent`` the source imports, wherever the import statement is."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            found = known(target)
            if found is not None and found != module:
                yield found


GRAPH = {module: set(imports(module)) for module in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
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


def test_there_is_no_import_cycle_in_agent() -> None:
    assert cycles(GRAPH) == []


def test_type_only_and_late_imports_count_and_cycles_are_found() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from agent.runtime import Agent\n"
        "def f():\n    from .views import report\n    import agent.causes\n"
    )
    found = set(imports_in(source, "agent.x", "agent"))
    assert found == {"agent.runtime", "agent.views", "agent.views.report", "agent.causes"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_part_below_the_wiring_imports_it() -> None:
    offenders = {
        module: sorted(targets & WIRING)
        for module, targets in GRAPH.items()
        if module not in WIRING and targets & WIRING
    }
    assert offenders == {}


def test_the_views_render_the_snapshot_and_never_reach_into_the_running_agent() -> None:
    """A view that imported the scheduler, the client's transport or the server could do I/O
    or read state that moves under it; it gets everything from the snapshot."""
    forbidden = {"agent.scheduler", "agent.transport", "agent.webconfig", *WIRING}
    for module, targets in GRAPH.items():
        if module in VIEWS or module.startswith("agent.views"):
            assert not targets & forbidden, (module, sorted(targets & forbidden))
