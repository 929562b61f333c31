"""`make demo` as people run it: again and again in one checkout, after a run killed with
SIGKILL, and stopped with SIGTERM (a supervisor, `timeout`, a closing IDE) as with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir(demo_dir: Path) -> Path:
    """The session's parent of the demo's state directories (tests/demo/conftest.py): the demo
    keeps its model build beside its state (``build-cache``), so TensorFlow trains once."""
    return demo_dir


def demo_argv(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "demo", "--agents", "2", "--samples", "5", "--state", str(state), *extra]


def run_once(state: Path) -> str:
    proc = subprocess.run(demo_argv(state, "--once"), cwd=REPO, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 agents running" in out and "answered" in out, out[-4000:]
    return out


def start_running(state: Path, log: Path) -> subprocess.Popen[bytes]:
    """The demo without --once, until it says it is running (the live table)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(demo_argv(state), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while "Running; Ctrl-C stops everything." not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"demo exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)
    return proc


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").exists() or "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def leftovers(state: Path) -> str:
    """Processes whose command line names the state directory (every child the demo starts)."""
    return subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True).stdout.strip()


def gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def test_demo_runs_twice_in_a_row_in_one_state_directory(workdir: Path):
    """Was: the second run read the first run's http.port files and failed with `agent dev-1
    could not serve: Connection refused`."""
    state = workdir / "state-twice"
    for _ in range(2):
        run_once(state)
        assert leftovers(state) == ""


def test_sigterm_stops_every_process_the_demo_started(workdir: Path):
    """Was: SIGTERM killed the launcher on the spot and left broker, hub, agents and cloud running."""
    state = workdir / "state-sigterm"
    proc = start_running(state, workdir / "sigterm.log")
    started = children(proc.pid)
    assert len(started) == 5, started  # broker, hub, 2 agents, cloud fallback
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert "stopping (SIGTERM)" in (workdir / "sigterm.log").read_text()
    assert gone(started) == []
    assert leftovers(state) == ""


def test_demo_after_a_run_killed_with_sigkill_succeeds_and_leaves_nothing(workdir: Path):
    state = workdir / "state-sigkill"
    killed = start_running(state, workdir / "sigkill.log")
    started = children(killed.pid)
    killed.kill()
    killed.wait(10)
    run_once(state)
    # the killed run's children: gone by the kernel's parent-death signal or stopped by the next
    # run (a root mosquitto drops its privileges and with them the parent-death signal)
    assert gone(started) == []
    assert leftovers(state) == ""
