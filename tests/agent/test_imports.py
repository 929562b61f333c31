"""The agent and protocol run on a device Python without tensorflow, fastapi or sqlmodel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"tensorflow", "fastapi", "sqlmodel", "keras", "tf2onnx", "hub", "cloud", "compiler"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None
    sys.meta_path.insert(0, Block())
""")


def test_agent_and_protocol_import_without_server_or_training_packages():
    code = BLOCKER + textwrap.dedent("""
        import protocol, protocol.messages, protocol.bundle, protocol.sketch, protocol.features
        import agent.daemon, agent.__main__, agent.runtime, agent.serve, agent.updater, agent.install
        import agent.enrollment, agent.config, agent.backlog, agent.telemetry, agent.transport
        from agent.runtime import LiteRTBackend
        loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not loaded, loaded
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_blocker_really_blocks_tensorflow():
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + "import tensorflow"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "blocked import of tensorflow" in proc.stderr
