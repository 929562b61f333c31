"""The reliability suite: each test injects one fault or attack into real parts (Mosquitto with
the hub's generated passwd/ACL/listener, the hub, agent code) and records the figure it proves
with ``figure(...)`` before asserting its goal, so a failing check still shows its number.

Figures go to ``$EDGEFLEET_RELIABILITY_OUT`` (JSON lines; default
``test-artifacts/reliability/figures.jsonl``); ``make reliability`` runs the whole suite and
``scripts/reliability_report.py`` turns them into the table in ``docs/reliability.md``. The
quick checks run inside ``make test``; the ones marked ``slow`` only in ``make reliability``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from hub import keys as hub_keys_mod

from ..conftest import REPO, free_port, wait_port

OUT = Path(os.environ.get("EDGEFLEET_RELIABILITY_OUT", REPO / "test-artifacts" / "reliability" / "figures.jsonl"))


FULL = os.environ.get("EDGEFLEET_RELIABILITY_FULL") == "1"  # set by `make reliability`


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" not in str(item.fspath).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.reliability)
        if item.get_closest_marker("slow") and not FULL:
            item.add_marker(pytest.mark.skip(reason="full reliability run only: make reliability"))


Figure = Callable[..., None]


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """``figure(check, injected, name, value, goal, ok)``: one row of the reliability table."""

    def record(check: str, injected: str, name: str, value: Any, goal: str, ok: bool) -> None:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        row = {
            "check": check,
            "injected": injected,
            "figure": name,
            "value": value,
            "goal": goal,
            "ok": bool(ok),
            "test": request.node.nodeid,
            "at": int(time.time()),
        }
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")

    return record


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    hub_keys_mod.init(d)
    return d


@pytest.fixture
def make_agent_at(tmp_path: Path, trust: Any) -> Any:
    """Real agent processes (as tests/agent's make_agent) talking to the broker at ``url``."""
    from ..agent.conftest import new_agent

    made: list[Any] = []
    root = tmp_path / "root.json"
    root.write_bytes(trust.root_bytes)

    def make(url: str, device: str, trusted: Path | None = None, **extra: Any) -> Any:
        """``trusted``: another root.json to pin (a real hub's, instead of the tests' trust)."""
        made.append(new_agent(tmp_path, trusted or root, url, device, **extra))
        return made[-1]

    yield make
    for a in made:
        a.stop()


def windows_stored(hub: Any, want: int, timeout: float) -> int:
    """How many telemetry windows the hub has stored, once it has ``want`` or ``timeout`` passed:
    a check records the figure it reached, not a timeout."""
    from sqlmodel import select

    from hub.models import TelemetryWindow

    def count() -> int:
        with hub.fleet.session() as s:
            return len(s.exec(select(TelemetryWindow.id)).all())

    deadline = time.monotonic() + timeout
    while (n := count()) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def _http_json(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/octet-stream"
    elif body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class HubProcess:
    """``edgefleet-hub serve --dev`` as a subprocess (so it can be killed -9), logging to
    ``tmp/hub.log``. ``db``: its database URL (default: SQLite in ``tmp``); ``extra``: more flags."""

    def __init__(self, tmp: Path, keys: Path, broker: str, db: str | None = None, extra: Sequence[str] = ()) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.db = tmp / "hub.db"
        self.args = [
            sys.executable,
            "-m",
            "hub",
            "serve",
            "--dev",
            "--port",
            str(self.port),
            "--db",
            db or f"sqlite:///{self.db}",
            "--broker",
            broker,
            "--keys",
            str(keys),
            "--store",
            str(tmp / "store"),
            "--tick",
            "0.3",
            *extra,
        ]
        self.log = open(tmp / "hub.log", "ab")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_port(self.port, timeout=60)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.log.close()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return _http_json(method, f"http://127.0.0.1:{self.port}{path}", body, "dev-token")

    def windows(self) -> dict[str, list[tuple[int, int]]]:
        """SQLite only: (seq, inferences) of every stored window, by device."""
        con = sqlite3.connect(self.db)
        try:
            out: dict[str, list[tuple[int, int]]] = {}
            for dev, seq, n in con.execute("select device, seq, inferences from telemetry_window"):
                out.setdefault(dev, []).append((seq, n))
            return out
        finally:
            con.close()
