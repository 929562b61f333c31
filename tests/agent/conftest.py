"""Fixtures for agent tests: agent processes, the fake hub, Coral bundles signed by ``trust``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

from .fakehub import FakeHub


@dataclass
class AgentProc:
    device: str
    config: Path
    state_dir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> AgentProc:
        full = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
        full.update(self.env)
        full.update(env)
        (self.state_dir / "http.port").unlink(missing_ok=True)
        with open(self.log, "ab") as logf:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                cwd=REPO,
                env=full,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def port(self) -> int:
        deadline = time.monotonic() + 30
        p = self.state_dir / "http.port"
        while time.monotonic() < deadline:
            if p.exists() and p.read_text().strip():
                return int(p.read_text())
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"agent never wrote http.port:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def http(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def predict_image(
        self, data: bytes, path: str = "/v1/predict", headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        b = uuid.uuid4().hex
        body = (
            (
                f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{b}--\r\n".encode()
        )
        return self.http("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={b}", **(headers or {})})


@pytest.fixture
def hub(mosquitto, trust) -> Iterator[FakeHub]:
    h = FakeHub(mosquitto.url, trust.targets_key)
    yield h
    h.close()


def new_agent(
    tmp_path: Path, root: Path, broker: str, device: str = "dev1", board: str = "rpi4", **extra: Any
) -> AgentProc:
    """An agent process (not started) for ``broker``, with the tests' quick timings; ``extra``
    overrides any agent.toml key."""
    state = tmp_path / f"state-{device}"
    state.mkdir(exist_ok=True)
    conf = {
        "device_id": device,
        "broker": broker,
        "state_dir": str(state),
        "root": str(root),
        "board": board,
        "http_port": 0,
        "telemetry_interval_s": 1,
        "fetch_repair_s": 1.0,
        "resend_after_s": 2.0,
        "reconnect_max_s": 1.0,
        "keepalive_s": 5,
        "edgetpu": "auto",
    }
    conf.update(extra)
    path = tmp_path / f"{device}.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in conf.items() if v is not None))
    return AgentProc(device, path, state, tmp_path / f"{device}.log")


@pytest.fixture
def make_agent(tmp_path: Path, mosquitto, trust) -> Iterator[Any]:
    made: list[AgentProc] = []
    root = tmp_path / "root.json"
    root.write_bytes(trust.root_bytes)

    def make(device: str = "dev1", board: str = "rpi4", **extra: Any) -> AgentProc:
        broker = extra.pop("broker", mosquitto.url)
        made.append(new_agent(tmp_path, root, broker, device, board, **extra))
        return made[-1]

    yield make
    for a in made:
        a.stop()
