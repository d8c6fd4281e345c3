"""The module structure: no two mtlser modules import each other, the packages form a ladder (no package
imports one that imports it back), and inference stays light.

Imports are read from the source (function-level imports included, since a lazy import
is still a dependency), so a cycle is caught even when Python would tolerate it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """mtlser module -> the mtlser modules it imports anywhere in its source."""
    files = {module_name(p): p for p in (ROOT / "mtlser").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` names a module when pkg.mod is one; else pkg itself is the dependency.
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    """``mtlser.data.datadir -> mtlser.data``; a module directly under mtlser (``mtlser.config``) is its own unit."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """mtlser package -> the other mtlser packages its modules import. The root package ``mtlser`` (the
    version string) is left out: every module is inside it."""
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if module == "mtlser":
            continue
        out.setdefault(package_of(module), set()).update(
            package_of(d) for d in deps if d != "mtlser" and package_of(d) != package_of(module))
    return out


def edges_between(graph: dict[str, set[str]], packages: list[str]) -> list[str]:
    """The module imports that tie a package cycle together, for the failure message."""
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if package_of(m) in packages and package_of(d) in packages and package_of(m) != package_of(d))


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "mtlser.model.architectures" in graph["mtlser.model.checkpoints"]
    assert cycles(graph) == [], "modules that import each other (directly or around a loop)"


def test_package_cycle_is_found_where_modules_have_none():
    # data.a -> text.b and text.c -> data.d: no module imports itself back, but the packages do.
    graph = {"mtlser.data.a": {"mtlser.text.b"}, "mtlser.text.b": set(), "mtlser.text.c": {"mtlser.data.d"},
             "mtlser.data.d": set(), "mtlser.corpora.e": {"mtlser.data.a", "mtlser.text.c"}}
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == [["mtlser.data", "mtlser.text"]]
    assert edges_between(graph, ["mtlser.data", "mtlser.text"]) == ["mtlser.data.a -> mtlser.text.b",
                                                                    "mtlser.text.c -> mtlser.data.d"]


def test_packages_form_a_ladder():
    graph = import_graph()
    packages = package_graph(graph)
    found = cycles(packages)
    assert found == [], "packages that import each other (directly or around a loop), through: " + "; ".join(
        ", ".join(edges_between(graph, c)) for c in found)
    # The graph is read, not empty: the ladder data -> text -> corpora is in it.
    assert {"mtlser.data", "mtlser.text", "mtlser.corpora", "mtlser.model"} <= set(packages)
    assert "mtlser.data" in packages["mtlser.text"] and "mtlser.text" in packages["mtlser.corpora"]
