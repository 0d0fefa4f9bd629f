"""The house keeps its shape: imports only go down the layer order, and no module cycle exists.

Every module under ``bench/`` and ``methods/`` is parsed; every import counts, wherever it stands (module
level, inside a function, under ``TYPE_CHECKING``). ``docs/architecture.md`` explains the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# High to low. A module may import its own package and anything in a lower layer. Packages that share a
# layer (the plug-ins) never import each other.
LAYERS: list[tuple[str, ...]] = [
    ("devtools",),
    ("cli",),
    ("worldgen",),
    ("run",),
    ("report",),
    ("methods", "judges", "attacks"),
    ("world",),
    ("metrics",),
    ("model",),
    ("api",),
    ("core",),
]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("bench", "methods"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def package_of(module: str) -> str:
    """The layer-carrying package of a module: ``methods``, or the package right under ``bench``.
    Entry points (``__main__``, ``bench`` itself) sit with the command line."""
    parts = module.split(".")
    if parts[0] == "methods":
        return "methods"
    if parts[-1] == "__main__" or len(parts) == 1:
        return "cli"
    return parts[1]


def resolve_parameter(name: str) -> str | None:
    """The project module an import names (the longest one that exists), or None for a third-party one."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    """Every project module ``module`` imports, at any depth of its code."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = resolve_parameter(name)
            if target and target != module:
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def upward_imports() -> list[str]:
    bad = []
    for module, targets in GRAPH.items():
        mine = package_of(module)
        for target in sorted(targets):
            theirs = package_of(target)
            if theirs == mine:
                continue
            if RANK[theirs] < RANK[mine] or (RANK[theirs] == RANK[mine]):
                bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return bad


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    assert {package_of(m) for m in MODULES} <= set(RANK), "a new package needs a place in LAYERS"


def test_imports_only_go_down():
    assert upward_imports() == []


def test_no_import_cycle():
    assert cycles() == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checks above would pass on an empty graph: show they see what they must."""
    source = ("def f():\n    from bench.run.cell import run_cell\n"
              "from . import formulas\n")
    path = tmp_path / "x.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "bench.metrics.x", path)
    found = imports_of("bench.metrics.x")
    assert {"bench.run.cell", "bench.metrics.formulas"} <= found
    monkeypatch.setitem(GRAPH, "bench.metrics.x", found)
    assert "bench.metrics.x (metrics) imports bench.run.cell (run)" in upward_imports()
    monkeypatch.setitem(GRAPH, "bench.run.cell", GRAPH["bench.run.cell"] | {"bench.metrics.x"})
    assert any("bench.metrics.x" in c and "bench.run.cell" in c for c in cycles())


@pytest.mark.parametrize("module", sorted(m for m in MODULES if package_of(m) == "methods"))
def test_methods_reach_only_api_model_and_core(module):
    """A method is one file on the plug-in interface: it never reads a world, the metrics or another method."""
    assert {package_of(t) for t in GRAPH[module]} <= {"api", "model", "core", "methods"}
    assert not [t for t in GRAPH[module] if package_of(t) == "methods"], "a method imports another method"
