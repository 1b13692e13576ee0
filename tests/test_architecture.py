"""The import graph keeps the layers of docs/architecture.md.

Every import in ``src/overread`` counts: at module level, inside functions (a lazy
import is still a dependency) and under ``if TYPE_CHECKING:`` (a type is one too).
A package may import packages of its own layer or below, never above, and the
package graph has no cycles; nor does the graph of modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "overread"

#: Bottom to top. A package may import its own layer and the layers below it.
#: ``overread`` itself (``__init__``: the version and the error classes) is at the
#: bottom; ``__main__`` only starts the CLI.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("overread", "errors"),
    ("config", "findings", "results", "db", "netutil"),
    ("imaging",),
    ("phantom",),
    ("data", "models"),
    ("evaluation", "explain"),
    ("training",),
    ("inference",),
    ("audit",),
    ("security",),
    ("triage", "monitoring"),
    ("service",),
    ("web",),
    ("gateway",),
    ("harness",),
    ("bench", "demo"),
    ("cli",),
    ("__main__",),
)

#: Folders under src/overread that hold data, not code.
DATA_FOLDERS = frozenset({"examples"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterable[tuple[str, int]]:
    """Every ``overread`` module ``path`` imports, with the line, wherever it stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    yield from imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(text: str, package: str) -> Iterable[tuple[str, int]]:
    """The ``overread`` modules that source ``text`` of a module in ``package`` imports."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "overread":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "overread":
                continue
            for alias in node.names:
                # ``from overread.x import y`` imports the submodule y when there is one.
                sub = f"{target}.{alias.name}"
                yield (sub if _is_module(sub) else target), node.lineno


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "overread"


def source_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def module_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for path in source_files():
        source = module_name(path)
        graph[source]
        for target, line in imported_modules(path):
            if target != source:
                graph[source].setdefault(target, line)
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of() -> dict[str, int]:
    return {name: rank for rank, names in enumerate(LAYERS) for name in names}


def test_every_package_has_a_layer() -> None:
    layers = layer_of()
    packages = {top_package(module_name(p)) for p in source_files()}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")}
    unplaced = sorted((packages | (folders - DATA_FOLDERS)) - set(layers))
    assert not unplaced, f"place these in LAYERS (and docs/architecture.md): {unplaced}"


def test_no_upward_import() -> None:
    layers = layer_of()
    upward = []
    for path in source_files():
        source = top_package(module_name(path))
        for target, line in imported_modules(path):
            dest = top_package(target)
            if layers.get(dest, -1) > layers.get(source, len(LAYERS)):
                rel = path.relative_to(SRC.parent)
                upward.append(f"{rel}:{line} {source} -> {dest} ({target})")
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for source, targets in module_graph().items():
        for target in targets:
            a, b = top_package(source), top_package(target)
            if a != b:
                graph[a].add(b)
    assert cycles(graph) == []


def test_no_cycle_between_modules() -> None:
    graph = module_graph()
    # A package's __init__ re-exports its modules; a module importing its own
    # package's __init__ back is the cycle we look for, so edges into __init__
    # from inside the package stay in.
    found = cycles(graph)
    assert found == [], "module import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": ["b"], "b": ["c"], "c": []}, []),
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, [["a", "b", "c"]]),
        ({"a": ["b"], "b": ["a"], "c": ["c"]}, [["a", "b"]]),
    ],
)
def test_cycle_finder(graph: dict[str, list[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_lazy_relative_and_type_only_imports_are_seen() -> None:
    text = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from overread.triage.score import StudyContext\n"
        "def f():\n"
        "    from overread.web import app\n"
        "    import overread.gateway\n"
        "    from . import jobs\n"
        "    from ..findings import Finding\n"
    )
    found = {target for target, _ in imports_in(text, "overread.service")}
    assert found == {
        "overread.triage.score",
        "overread.web.app",
        "overread.gateway",
        "overread.service.jobs",
        "overread.findings",
    }
