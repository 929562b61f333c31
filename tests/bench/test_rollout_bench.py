"""``python -m bench rollout`` on a small fleet: with ``--lag-only --housekeeping apart`` the
bench's hub leaves its housekeeping to an ``edgefleet-hub housekeep`` process, the lag is measured
over real acks, and the housekeeper is gone when the bench is; with ``--first-only`` the cases not
run are said to be not run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / "bench" / "results" / "rollout_lag.json"


def _housekeepers() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "hub housekeep" in line and "bench-rollout-" in line]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "rollout", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_the_lag_bench_with_housekeeping_apart_measures_acks_and_leaves_no_housekeeper_behind() -> None:
    run = _bench("--lag-only", "--devices", "20", "--lag-seconds", "12", "--housekeeping", "apart")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "20 devices reporting every 10 s for 12 s, no rollout" in run.stdout
    doc = json.loads(RESULT.read_text())
    assert doc["params"]["housekeeping"] == "apart" and doc["params"]["devices"] == 20
    (lag,) = doc["cases"]
    assert lag["acks"] >= 20 and lag["unacked_over_2s"] == 0
    assert _housekeepers() == []


def test_cpu_seconds_read_from_proc_match_what_the_process_says_it_used_and_a_gone_process_counts_zero() -> None:
    import os

    from bench.rollout import _cpu, _cpu_since

    x = 0
    for i in range(2_000_000):  # some CPU to count
        x += i * i
    own = os.times()
    got = _cpu({"me": os.getpid(), "gone": 2**22 + 1})
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert abs(got["me"] - (own.user + own.system)) <= 2 * tick, (got, own)
    assert got["gone"] == 0.0
    spent = _cpu_since({"me": got["me"] - 1.0}, {"me": os.getpid()})
    assert spent["me"] >= 1.0


@pytest.mark.slow
def test_a_first_only_run_installs_once_judges_what_it_ran_and_says_the_flapping_goals_were_not_run() -> None:
    """``--first-only`` (the 10,000-device runs: the later cases need more memory than the
    machine has): the first install and the lag after it are measured and judged; the upgrade
    and flapping cases are not run, and their goals say so instead of passing or failing."""
    run = _bench("--devices", "20", "--first-only", "--baseline-max", "0", "--lag-seconds", "5", "--bundle-mb", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads((REPO / "bench" / "results" / "rollout.json").read_text())
    assert doc["params"]["first_only"] is True
    cases = [c["case"] for c in doc["cases"]]
    assert cases == [
        "plain subscribers, retained fan-out (limit)",
        "hub rollout to simulated agents (ours)",
        "telemetry ingest lag (publish -> hub ack)",
    ], cases
    ours = doc["cases"][1]
    assert ours["installed"] == 20 and ours["repair_requests"] == 0
    goals = doc["params"]["goals"]
    assert goals["flapping: 100% complete"] is None and goals["egress <= 1.1 copies"] is True
    assert "not run flapping: 100% complete" in run.stdout
    assert "links cut mid-transfer" not in run.stdout
    # which devices were late and what they went through: every one accounted for, each trace
    # from its desired document to its commit
    late = ours["late"]
    assert late["rest"]["devices"] + late["last_tenth"]["devices"] == 20, late
    assert late["last_tenth"]["devices"] == 2 and late["asked_hub"] == [], late
    for d in late["slowest"]:
        assert "desired seq" in d["events"][0] and d["events"][-1].endswith("committed"), d
    assert "last tenth      2 devices: first chunk" in run.stdout
    # the kernel's TCP counters beside each case (system-wide: only their presence is checked)
    assert set(ours["kernel_tcp"]) >= {"TCPMemoryPressuresChrono", "TCPRcvQDrop", "TCPTimeouts"}, ours["kernel_tcp"]
    assert "loopback TCP through each case" in run.stdout
    # what the operator sees: the hub counted every device installed, and not before the last
    # device committed (its count is made of the devices' reports; whole seconds, so up to 1 s early)
    hub = ours["hub_counted_s"]
    assert hub is not None and hub >= ours["timeline_s"]["committed"][2] - 1.0, (hub, ours["timeline_s"])
    assert "the hub counted all installed" in run.stdout
