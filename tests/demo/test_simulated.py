"""`make demo ARGS="--simulated N --once"`: the hub rolls a bundle out to N simulated devices
(one sim process, N MQTT connections) and the demo exits 0 with every process stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_demo_with_simulated_devices_rolls_out_to_all_and_exits_zero(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--simulated", "30", "--once", "--state", str(state)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "30 simulated devices on" in out, out[-2000:]
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout


def test_demo_refuses_a_simulated_fleet_it_cannot_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--simulated", "0", "--state", str(tmp_path / "s")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--simulated must be within 1..10000, got 0" in proc.stderr
