"""The launcher owns its state directory: what a killed launcher left running there is stopped
by the next one, and nothing else is."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.launcher import Fleet, LaunchError, free_ports

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_new_fleet_stops_what_a_killed_launcher_left_in_its_state_directory(tmp_path: Path):
    old = Fleet(tmp_path / "state")
    proc = old.spawn("agent-dev-1", SLEEPER)
    assert proc.popen is not None
    # the old launcher is gone without stop_all (kill -9): its child runs on, recorded
    new = Fleet(tmp_path / "state")
    proc.popen.wait(15)  # reap it: it is this test's child
    assert new.leftovers == [f"agent-dev-1 (pid {proc.popen.pid})"]
    assert not (tmp_path / "state" / "fleet.pids").exists()


def test_a_recorded_pid_now_running_another_command_is_left_alone(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    other = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        record = {"name": "hub", "pid": other.pid, "argv": [sys.executable, "-m", "hub", "serve"]}
        (state / "fleet.pids").write_text(json.dumps(record) + "\n" + '{"name": "cut sh')
        assert Fleet(state).leftovers == []
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait(10)


def test_stop_all_stops_every_child_and_forgets_them(tmp_path: Path):
    fleet = Fleet(tmp_path / "state")
    procs = [fleet.spawn(f"p{i}", SLEEPER) for i in range(3)]
    fleet.stop_all()
    assert not any(p.alive for p in procs)
    assert not (tmp_path / "state" / "fleet.pids").exists()


def test_an_agent_that_dies_is_reported_not_the_port_an_earlier_run_wrote(tmp_path: Path):
    """Was: agent_port returned the earlier run's http.port at once, and the demo failed later
    with `Connection refused`."""
    fleet = Fleet(tmp_path / "state")
    stale = fleet.agent_dir("dev-1") / "state" / "http.port"
    stale.parent.mkdir(parents=True)
    stale.write_text("45541\n")
    fleet.broker_url = "mqtt://127.0.0.1:1"
    fleet.start_agent("dev-1")  # no trust root in this state directory: the agent exits
    try:
        with pytest.raises(LaunchError, match="agent dev-1 exited with code"):
            fleet.agent_port("dev-1")
    finally:
        fleet.stop_all()


def test_ports_chosen_together_are_distinct_and_free():
    # one free_port() after another may hand out a port twice: a NATS node then died on "address in use"
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
