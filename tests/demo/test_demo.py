"""`make demo ARGS=--once`: the README's main command runs the whole fleet and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_demo_once_rolls_out_serves_and_exits_zero(demo_dir: Path):
    state = demo_dir / "state-once"  # the model build beside it is the session's (conftest.py)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            "--once",
            "--agents",
            "2",
            "--samples",
            "15",
            "--state",
            str(state),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 agents running" in out
    assert "cloud fallback" in out and "answered" in out
    # every process the demo started is gone
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout


def test_demo_without_mosquitto_uses_the_embedded_broker(demo_dir: Path):
    """A machine with no mosquitto: the demo starts amqtt (MQTT 3.1.1); hub and agents fall back."""
    state = demo_dir / "state-embedded"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "mosquitto").exists())
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--once", "--agents", "1", "--samples", "5", "--state", str(state)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PATH": path},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "embedded amqtt broker" in out
    hub_log = (state / "logs" / "hub.log").read_text()
    assert "switching to 3.1.1" in hub_log


def test_demo_rejects_bad_arguments_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--agents", "0", "--state", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--agents must be within 1..50, got 0" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--broker", "localhost:1883"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--broker must look like mqtt://host:port" in proc.stderr
