"""Start and stop the fleet's processes: broker, hub, agents, cloud. Used by the demo and by
the integration tests, so both exercise the exact same command lines an operator would type.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class LaunchError(RuntimeError):
    """A process did not start or a command failed; the message says which and shows its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None, what: str = "service"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LaunchError(f"{what} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise LaunchError(f"{what}: nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        if not self.alive:
            return
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


@dataclass
class Fleet:
    """Every process started for one demo or test run, in one state directory."""

    state: Path
    python: str = sys.executable
    procs: list[Proc] = field(default_factory=list)
    broker_url: str = ""
    broker_kind: str = "external"
    hub_url: str = ""
    token: str = "demo-admin-token"

    def __post_init__(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)

    # --- processes -------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.state / "logs" / f"{name}.log").start(env)
        self.procs.append(proc)
        return proc

    def run(self, name: str, argv: list[str], timeout: float = 900) -> str:
        """Run a command to completion; raise with its output when it fails."""
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        log = self.state / "logs" / f"{name}.log"
        log.write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            raise LaunchError(
                f"{name} failed with exit code {res.returncode}:\n{res.stdout[-2000:]}{res.stderr[-3000:]}"
            )
        return res.stdout

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def module(self, mod: str, *args: str) -> list[str]:
        return [self.python, "-m", mod, *args]

    # --- broker ----------------------------------------------------------------------------
    def start_broker(self, url: str | None = None) -> str:
        """Use ``url`` if given; else a private mosquitto if on PATH; else the embedded broker."""
        if url:
            self.broker_url = url
            return url
        port = free_port()
        if shutil.which("mosquitto"):
            bdir = self.state / "broker"
            bdir.mkdir(exist_ok=True)
            conf = bdir / "mosquitto.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {bdir}/\n"
            )
            proc = self.spawn("broker", ["mosquitto", "-c", str(conf)])
            what = "mosquitto (MQTT v5)"
        else:
            proc = self.spawn("broker", self.module("demo.embedded_broker", "--port", str(port)))
            what = "embedded amqtt broker (MQTT 3.1.1)"
        wait_port(port, proc=proc.popen, what=what)
        self.broker_kind = what
        self.broker_url = f"mqtt://127.0.0.1:{port}"
        return self.broker_url

    # --- hub -------------------------------------------------------------------------------
    @property
    def keys(self) -> Path:
        return self.state / "keys"

    def init_keys(self) -> Path:
        if not (self.keys / "root.json").exists():
            self.run("keys-init", self.module("hub", "keys", "init", "--dir", str(self.keys)))
        return self.keys / "root.json"

    def start_hub(self, db: str | None = None) -> str:
        port = free_port()
        db = db or f"sqlite:///{self.state / 'hub.db'}"
        proc = self.spawn(
            "hub",
            self.module(
                "hub",
                "serve",
                "--db",
                db,
                "--broker",
                self.broker_url,
                "--keys",
                str(self.keys),
                "--store",
                str(self.state / "store"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--token",
                self.token,
                "--dev",
            ),
        )
        wait_port(port, timeout=60, proc=proc.popen, what="hub")
        self.hub_url = f"http://127.0.0.1:{port}"
        return self.hub_url

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.hub_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise LaunchError(f"hub {method} {path} -> {exc.code}: {exc.read()[:500]!r}") from None

    def push(self, bundle_dir: Path) -> dict[str, Any]:
        out = self.run(
            "push", self.module("hub", "models", "push", str(bundle_dir), "--hub", self.hub_url, "--token", self.token)
        )
        return json.loads(out.strip().splitlines()[-1])

    # --- agents ----------------------------------------------------------------------------
    def agent_dir(self, device: str) -> Path:
        return self.state / "agents" / device

    def start_agent(
        self,
        device: str,
        board: str = "rpi4",
        root: Path | None = None,
        telemetry_interval: float = 2.0,
        extra: str = "",
    ) -> Proc:
        adir = self.agent_dir(device)
        adir.mkdir(parents=True, exist_ok=True)
        conf = adir / "agent.toml"
        conf.write_text(
            f'device_id = "{device}"\nbroker = "{self.broker_url}"\nstate_dir = "{adir / "state"}"\n'
            f'root = "{root or self.keys / "root.json"}"\nboard = "{board}"\nhttp_port = 0\n'
            f"telemetry_interval_s = {telemetry_interval}\n{extra}"
        )
        return self.spawn(f"agent-{device}", self.module("agent", "run", "--config", str(conf)))

    def agent_port(self, device: str, timeout: float = 30) -> int:
        path = self.agent_dir(device) / "state" / "http.port"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text())
            time.sleep(0.1)
        raise LaunchError(
            f"agent {device} wrote no {path} within {timeout}s:\n{tail(self.state / 'logs' / f'agent-{device}.log')}"
        )

    # --- cloud -----------------------------------------------------------------------------
    def start_cloud(self) -> str:
        port = free_port()
        archives = self.state / "store" / "archives"
        archives.mkdir(parents=True, exist_ok=True)
        proc = self.spawn(
            "cloud",
            self.module(
                "cloud",
                "serve",
                "--bundles",
                str(archives),
                "--root",
                str(self.keys / "root.json"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ),
        )
        wait_port(port, timeout=60, proc=proc.popen, what="cloud fallback")
        return f"http://127.0.0.1:{port}"
