"""The module graph: no import cycles, no module over 400 lines, and the rooms import only
what docs/architecture.md says they may.

The graph is read with ``ast``: every import statement, those inside functions included (a
lazy import is still a dependency), and the packages a dotted import runs (importing
``portguard.core.policy.model`` runs ``portguard/core/policy/__init__.py``). Imports under
``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400

# room -> the rooms it may import (besides itself); "top" is portguard/__init__.py (__version__)
ALLOWED: Mapping[str, frozenset[str]] = {
    "core": frozenset(),
    "io": frozenset({"core"}),
    "config": frozenset({"core", "io"}),
    "log": frozenset({"core", "io", "config", "top"}),
    "service": frozenset({"core", "io", "config", "log", "top"}),
    "cli": frozenset({"core", "io", "config", "log", "service", "top"}),
    "shipped": frozenset(),
    "__main__": frozenset({"cli"}),
}


def modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    return skipped


def imported(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The modules of ``known`` that importing ``name`` runs directly."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in known else module)
    return {
        parent
        for target in targets
        if target in known
        for parent in _with_packages(target)
        if parent in known and parent != name and not name.startswith(parent + ".")
    }


def _with_packages(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(2, len(parts) + 1)]


def graph(package: str) -> dict[str, set[str]]:
    known = modules(package)
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges.get(node, ()):
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return "top" if len(parts) == 1 else parts[1]


def test_cycles_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_imports_and_packages() -> None:
    edges = graph("portguard")
    assert "portguard.service.daemon" in edges["portguard.cli.main"]  # inside a function
    assert "portguard.core.policy" in edges["portguard.core.gate"]  # the package runs


@pytest.mark.parametrize("package", ["portguard", "lab"])
def test_no_import_cycles(package: str) -> None:
    assert cycles(graph(package)) == []


def test_no_module_over_400_lines() -> None:
    long = {
        name: lines
        for name, path in modules("portguard").items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_module_lives_in_a_room() -> None:
    assert {room(name) for name in modules("portguard")} <= {*ALLOWED, "top"}


def test_rooms_import_only_what_the_map_allows() -> None:
    crossings = sorted(
        f"{name} -> {target}"
        for name, targets in graph("portguard").items()
        for target in targets
        if room(target) != room(name) and room(target) not in ALLOWED.get(room(name), ())
    )
    assert crossings == []
