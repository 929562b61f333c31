"""sd_notify: READY/WATCHDOG/STOPPING reach a real datagram socket, as systemd's would."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import from_dict
from agent.errors import ConfigError
from agent.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    yield s, path
    s.close()


def _messages(s: socket.socket, until: str) -> list[str]:
    got: list[str] = []
    while not any(until in m for m in got):
        got.append(s.recv(4096).decode())
    return got


def test_ready_and_stopping_arrive_as_datagrams(listener):
    s, path = listener
    n = Notifier(path)
    assert n.ready("local API on port 8780") and n.stopping()
    assert s.recv(4096).decode() == "READY=1\nSTATUS=local API on port 8780"
    assert s.recv(4096).decode() == "STOPPING=1"


def test_watchdog_pings_at_most_every_half_interval(listener):
    s, path = listener
    n = Notifier(path, watchdog_s=10.0)
    sent = [n.watchdog(t) for t in (100.0, 101.0, 104.9, 105.0, 109.0, 110.0)]
    assert sent == [True, False, False, True, False, True]
    assert [s.recv(64).decode() for _ in range(3)] == ["WATCHDOG=1"] * 3


def test_abstract_socket_name_is_reached(tmp_path: Path):
    name = f"edgefleet-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(10)
    try:
        assert Notifier("@" + name).ready()
        assert s.recv(64) == b"READY=1"
    finally:
        s.close()


def test_without_notify_socket_nothing_is_sent():
    n = Notifier(None, 1.0)
    assert not n.enabled and not n.ready() and not n.watchdog(0.0) and not n.stopping()


def test_a_vanished_socket_is_logged_and_never_raises(tmp_path: Path, caplog):
    n = Notifier(str(tmp_path / "gone.sock"))
    assert not n.ready() and not n.ready()
    assert sum("sd_notify" in r.message for r in caplog.records) == 1


def _cfg(tmp_path: Path, env: dict[str, str]):
    (tmp_path / "root.json").write_text("{}")
    doc = {"device_id": "d1", "broker": "mqtt://127.0.0.1:1883", "state_dir": "st", "root": "root.json"}
    return from_dict(doc, tmp_path, env)


def test_config_takes_systemds_notify_socket_and_watchdog_interval(tmp_path: Path):
    cfg = _cfg(tmp_path, {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"})
    assert (cfg.notify_socket, cfg.watchdog_s) == ("/run/systemd/notify", 30.0)
    assert "notify_socket" not in cfg.extra
    other = _cfg(tmp_path, {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_s is None  # meant for another process
    assert _cfg(tmp_path, {}).notify_socket is None


def test_a_bad_watchdog_interval_is_refused_naming_it(tmp_path: Path):
    with pytest.raises(ConfigError, match="WATCHDOG_USEC: .* got 'soon'"):
        _cfg(tmp_path, {"WATCHDOG_USEC": "soon"})


@pytest.mark.integration
def test_running_agent_says_ready_pings_the_watchdog_and_says_stopping(make_agent, listener):
    s, path = listener
    agent = make_agent().start(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    port = agent.port
    got = _messages(s, "WATCHDOG=1")
    assert got[0] == f"READY=1\nSTATUS=local API on port {port}", got
    agent.stop()
    assert agent.wait_exit() == 0
    assert "STOPPING=1" in _messages(s, "STOPPING=1")
