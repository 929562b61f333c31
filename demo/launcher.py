"""Start and stop the fleet's processes: broker, hub, agents, cloud. Used by the demo and by
the integration tests, so both exercise the exact same command lines an operator would type.

Each child runs in its own process group (a new session), so a Ctrl-C in the terminal reaches
the launcher alone and :meth:`Fleet.stop_all` stops the children in order, each with whatever
it started (``killpg``), and integration tests can kill one process without the others.

A :class:`Fleet` owns its state directory, and a launcher can die without stopping anything
(``kill -9``), so its children are also recorded in ``STATE/fleet.pids``: the next Fleet on that
directory stops the ones still running before it starts its own (they would share the agents'
slots, the SQLite database and each agent's ``http.port``). With ``die_with_launcher`` (the
demo) a child on Linux also gets SIGTERM from the kernel when the launcher dies; not every
child keeps that request (a mosquitto started as root drops its privileges, and the kernel
forgets it), so the record stays the rule and the signal a shortcut.
"""

from __future__ import annotations

import ctypes
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PIDS_FILE = "fleet.pids"


class LaunchError(RuntimeError):
    """A process did not start or a command failed; the message says which and shows its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: each socket stays bound until all are chosen (n calls
    of :func:`free_port` may return one port twice; a 3-node NATS cluster once got the same
    client port for two nodes, and one exited with "address already in use")."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


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


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` asking the kernel to SIGTERM the child when its parent dies (even
    by SIGKILL, which runs no cleanup); None elsewhere. Only for launchers that spawn from one
    long-lived thread with no other threads running (the signal follows the spawning thread)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm, parent = 1, int(signal.SIGTERM), os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the launcher died between fork and prctl
            os.kill(os.getpid(), sigterm)

    return preexec


def _cmdline(pid: int) -> list[str] | None:
    """The argv of a running process, or None if there is none with that pid (or a zombie)."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        deadline = time.monotonic() + 2
        while True:
            try:
                raw = (proc / "cmdline").read_bytes()
                if raw or (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] or None
            except OSError:
                return None
            # empty and not a zombie: inside execve, before the kernel set up the new argv
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
    # no /proc (macOS): ps joins argv with spaces, so compare it as one string
    res = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)
    return [res.stdout.strip()] if res.returncode == 0 and res.stdout.strip() else None


def _same_command(running: list[str], argv: list[str]) -> bool:
    return running == argv or running == [" ".join(argv)]


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM process group ``pid`` (a child we started as a session leader), SIGKILL it after
    ``timeout`` seconds; for a process that is not our child (no wait status to collect)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _cmdline(pid) is None:  # exited (a zombie has no command line)
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=preexec,
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
    """Every process started for one demo or test run, in one state directory.

    Creating one stops what an earlier Fleet on the same directory left running (see the
    module docstring); ``die_with_launcher`` makes the children exit with this process on Linux.
    """

    state: Path
    python: str = sys.executable
    procs: list[Proc] = field(default_factory=list)
    broker_url: str = ""
    broker_kind: str = "external"
    hub_url: str = ""
    token: str = "demo-admin-token"
    die_with_launcher: bool = False
    leftovers: list[str] = field(default_factory=list, init=False)
    _preexec: Callable[[], None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)
        self.leftovers = self.stop_leftovers()
        if self.die_with_launcher:
            self._preexec = _parent_death_signal()

    # --- processes -------------------------------------------------------------------------
    @property
    def pids_file(self) -> Path:
        return self.state / PIDS_FILE

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.state / "logs" / f"{name}.log")
        self.procs.append(proc)
        proc.start(env, self._preexec)
        assert proc.popen is not None
        with open(self.pids_file, "a") as f:
            f.write(json.dumps({"name": name, "pid": proc.popen.pid, "argv": argv}) + "\n")
        return proc

    def stop_leftovers(self, timeout: float = 10.0) -> list[str]:
        """Stop the processes of an earlier Fleet on this directory that are still running (the
        pid is alive and still runs the recorded command); return their names."""
        try:
            lines = self.pids_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        stopped = []
        for line in lines:
            try:
                rec = json.loads(line)
                pid, argv, name = int(rec["pid"]), list(rec["argv"]), str(rec["name"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill -9 mid-write
            running = _cmdline(pid)
            if running is not None and _same_command(running, argv):
                _stop_group(pid, timeout)
                stopped.append(f"{name} (pid {pid})")
        self.pids_file.unlink(missing_ok=True)
        return stopped

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

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop every process, newest first (agents, then the hub, then the broker: each says
        goodbye over a live connection), SIGKILLing what is still running after ``timeout``
        seconds in all."""
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            proc.stop(timeout=max(0.5, deadline - time.monotonic()))
        if not any(p.alive for p in self.procs):
            self.pids_file.unlink(missing_ok=True)

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
        doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return doc

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
        # the port an earlier run's agent wrote: agent_port must wait for this agent's
        (adir / "state" / "http.port").unlink(missing_ok=True)
        conf = adir / "agent.toml"
        conf.write_text(
            f'device_id = "{device}"\nbroker = "{self.broker_url}"\nstate_dir = "{adir / "state"}"\n'
            f'root = "{root or self.keys / "root.json"}"\nboard = "{board}"\nhttp_port = 0\n'
            f"telemetry_interval_s = {telemetry_interval}\n{extra}"
        )
        return self.spawn(f"agent-{device}", self.module("agent", "run", "--config", str(conf)))

    def agent_port(self, device: str, timeout: float = 30) -> int:
        """The local API port the agent started by :meth:`start_agent` wrote (it writes the
        file once it listens; start_agent removed any earlier one)."""
        path = self.agent_dir(device) / "state" / "http.port"
        proc = next((p for p in reversed(self.procs) if p.name == f"agent-{device}"), None)
        log = self.state / "logs" / f"agent-{device}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = path.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text:
                return int(text)
            if proc is not None and proc.popen is not None and proc.popen.poll() is not None:
                raise LaunchError(f"agent {device} exited with code {proc.popen.returncode}:\n{tail(log)}")
            time.sleep(0.1)
        raise LaunchError(f"agent {device} wrote no {path} within {timeout}s:\n{tail(log)}")

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
