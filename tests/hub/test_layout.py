"""The tree is the diagram: the hub imports protocol, never agent, compiler or cloud."""

from __future__ import annotations

import ast
from pathlib import Path

HUB = Path(__file__).resolve().parents[2] / "hub"
FORBIDDEN = {"agent", "compiler", "cloud"}


def test_hub_never_imports_another_component():
    offenders = []
    for path in HUB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{path.relative_to(HUB.parent)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
