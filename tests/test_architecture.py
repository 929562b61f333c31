"""The folder tree is the architecture: components share only `protocol`, `protocol` is pure, no
module of any package takes part in an import cycle, and no hub module grows past ~500 lines
(one room per noun) except the pure rollout machine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = ("hub", "agent", "compiler", "cloud")
PROTOCOL_ALLOWED = {"cryptography", "__future__"}


def imported_top_levels(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_imports_no_other_component(component):
    if not (REPO / component).is_dir():
        pytest.skip(f"{component}/ not present")
    imports = imported_top_levels(component)
    for other in COMPONENTS:
        if other != component:
            assert other not in imports, f"{component} imports {other} in {sorted(imports[other])}"


def test_simulator_imports_only_agent_and_protocol_of_ours():
    """sim/ runs the agent's code for many devices; the hub, compiler and cloud stay out of it."""
    imports = imported_top_levels("sim")
    for other in ("hub", "compiler", "cloud", "bench", "demo"):
        assert other not in imports, f"sim imports {other} in {sorted(imports[other])}"


def test_protocol_imports_only_stdlib_and_cryptography():
    import sys

    imports = imported_top_levels("protocol")
    third_party = {m for m in imports if m not in sys.stdlib_module_names and m != "protocol"}
    assert third_party <= PROTOCOL_ALLOWED, {m: imports[m] for m in third_party - PROTOCOL_ALLOWED}


def test_protocol_does_no_io():
    banned = {"open", "socket", "subprocess", "requests", "urllib", "os"}
    for path in (REPO / "protocol").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "open", f"{path.name} calls open()"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in mods:
                    assert m.split(".")[0] not in banned, f"{path.name} imports {m}"


ACYCLIC = ("protocol", "agent", "compiler", "cloud", "hub")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import the module can execute, lazy ones inside functions included; imports under
    ``if TYPE_CHECKING:`` never run, so they cannot close a cycle."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``agent.updater`` -> ``agent.errors``...).
    ``from . import x`` points at ``x`` when it is a module, else at the package itself."""
    paths = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in (REPO / package).rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in paths.items()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges = graph.setdefault(name, set())
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_cycle_finder_sees_a_lazy_import_and_ignores_type_checking_only_ones():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]
    lazy = ast.parse("def f():\n    from .b import x\n")
    typing_only = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n")
    assert [type(n).__name__ for n in _runtime_imports(lazy)] == ["ImportFrom"]
    assert [n.module for n in _runtime_imports(typing_only)] == ["typing"]


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_module_takes_part_in_an_import_cycle(package):
    """Two modules that import each other (even lazily, inside a function) are one module cut in
    two: the move that split them is unfinished."""
    graph = import_graph(package)
    assert len(graph) > 1
    assert cycles(graph) == [], f"{package}: modules importing each other (directly or round a loop)"


def test_no_hub_module_is_a_house_of_many_nouns():
    """One room per noun, under ~500 lines (the pure rollout machine too: its rules stay in
    hub/rollout.py's docstring and ``advance``, their code in hub/rollout_*.py by noun)."""
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "hub").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}
