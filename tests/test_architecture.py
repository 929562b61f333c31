"""The folder tree is the architecture: components share only `protocol`, and `protocol` is pure."""

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
