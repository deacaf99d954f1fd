"""The library's layering, as CONTRIBUTING.md states it, and no import cycles anywhere (imports inside functions
included): the import graph is read from the source, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
import re
from collections import defaultdict

import pytest

from conftest import ROOT

LIB = ROOT / "lib" / "unveiled"


def read_layers() -> dict[str, tuple[int, int]]:
    """``{component: (layer, rank within the layer)}`` from the ```layers block of CONTRIBUTING.md.

    A component is a top-level module or package of ``unveiled`` (``unveiled`` itself for the root package).
    Names separated by ``<`` are ordered (rank 0, 1, ...); names separated by spaces share a rank.
    """
    text = (ROOT / "CONTRIBUTING.md").read_text()
    match = re.search(r"```layers\n(.*?)```", text, flags=re.S)
    assert match, "CONTRIBUTING.md lost its ```layers block (the library's map)"
    out: dict[str, tuple[int, int]] = {}
    for layer, line in enumerate(match.group(1).strip().splitlines()):
        _, names = line.split(":", 1)
        for rank, group in enumerate(names.split("<")):
            for name in group.split():
                assert name not in out, f"{name} appears twice in the layers block"
                out[name] = (layer, rank)
    return out


def module_names() -> dict[str, object]:
    """Every module of the package by dotted name (a package by its own name), with its path."""
    mods = {}
    for path in LIB.rglob("*.py"):
        parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(mod: str, node: ast.AST, is_package: bool, mods: dict) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.split(".")[0] == "unveiled"]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".") if is_package else mod.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "unveiled":
            return []
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name not in mods:
            name = name.rsplit(".", 1)[0]
        out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Edges module → module for every import statement, at module level or inside functions. Importing
    ``unveiled.a.b`` also runs the package ``unveiled.a``: that edge is added too (except to the importer's own
    packages, which are already being initialised)."""
    mods = module_names()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _targets(mod, node, path.name == "__init__.py", mods):
                parts = target.split(".")
                chain = [".".join(parts[:i]) for i in range(2, len(parts) + 1)]  # unveiled.a, unveiled.a.b, ...
                for t in chain:
                    own_ancestor = mod == t or mod.startswith(t + ".")
                    if t != mod and (t == target or not own_ancestor):
                        graph[mod].add(t)
    return graph


def component(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "unveiled"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (or a self-loop) are the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(comp))

    nodes = set(graph) | {w for ws in graph.values() for w in ws}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_not_even_inside_functions():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles (move the shared piece to a lower module):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_every_component_is_on_the_map():
    layers = read_layers()
    components = {component(m) for m in module_names()}
    missing = sorted(components - set(layers))
    assert not missing, (f"{missing} are not on the library's map: add each to the ```layers block of "
                         "CONTRIBUTING.md (its layer says what it may import) and to the table under it")


def test_imports_follow_the_layers():
    layers = read_layers()
    bad = []
    for mod, targets in import_graph().items():
        a = component(mod)
        for t in targets:
            b = component(t)
            if a == b or a not in layers or b not in layers:
                continue
            if layers[b] > layers[a]:  # a higher layer, or a later name of the same layer
                bad.append(f"{mod} imports {t} ({a} {layers[a]} may not import {b} {layers[b]})")
    assert not bad, "imports against the layers of CONTRIBUTING.md:\n" + "\n".join(sorted(bad))


def test_the_checks_catch_a_cycle_and_an_upward_import():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
    layers = read_layers()
    assert layers["quant"] < layers["kvcache"] < layers["plots"] and layers["hardware"] < layers["analyzer"]


@pytest.mark.parametrize("path", sorted(LIB.rglob("*.py")), ids=lambda p: str(p.relative_to(LIB)))
def test_modules_stay_readable(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 650, f"{path.relative_to(LIB)} has {lines} lines; split it by idea (about 600 at most)"
