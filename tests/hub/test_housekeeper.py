"""Housekeeping apart: a hub started with ``--housekeeping apart`` leaves the alert scan, the
rollups and pruning to ``edgefleet-hub housekeep`` (a process of its own, on the same database),
which does them and publishes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from demo.launcher import free_port
from hub import gauges, housekeeper, ticker
from hub.config import HubConfig
from hub.errors import ConfigError, HubError
from hub.models import Alert, TelemetryRollup
from hub.rollups import MINUTE
from hub.server import Hub, build
from hub.transport import MemoryPublisher, Outgoing
from protocol.messages import Telemetry
from protocol.sketch import LatencySketch

from .conftest import hub_config, wait_for

A = "a" * 64


def _feed_an_hour_ago(hub: Hub, devices: int = 3) -> int:
    """A window a minute from each device, received an hour ago and before: closed minutes to roll
    up, devices silent since (offline alerts to raise)."""
    start = int(time.time()) - 3600 - 600
    n = 0
    for i, at in enumerate(range(start, start + 600, 60)):
        for d in range(devices):
            sk = LatencySketch()
            sk.add(0.004, 10)
            t = Telemetry(f"hk-{d}", i + 1, at - 10, at, A, {"inferences": 10, "cpu": 10}, sk.to_dict(), {})
            hub.fleet.clock = lambda at=at: at
            hub.ingest.handle([(f"ef/v1/dev/hk-{d}/telemetry", t.to_bytes())])
            n += 1
    hub.fleet.clock = lambda: int(time.time())
    return n


def _minutes(hub: Hub) -> int:
    with hub.fleet.session() as s:
        return int(s.query(TelemetryRollup).filter(TelemetryRollup.resolution == MINUTE).count())


def _count(hub: Hub, table: type) -> int:
    with hub.fleet.session() as s:
        return int(s.query(table).count())


def _behind(hub: Hub) -> float:
    gauges.refresh(hub.fleet)
    value = hub.fleet.metrics.registry.get_sample_value("edgefleet_hub_rollups_behind_seconds")
    assert value is not None
    return value


def test_a_hub_with_housekeeping_apart_neither_scans_nor_rolls_up_and_its_metrics_say_so(
    tmp_path: Path, keys_dir: Path
) -> None:
    hub = build(hub_config(tmp_path, keys_dir, housekeeping="apart"), publisher=MemoryPublisher(), with_broker=False)
    try:
        assert _behind(hub) == 0  # no window waits
        _feed_an_hour_ago(hub)
        ticker.tick(hub.fleet)
        assert hub.fleet.last_scan == 0
        assert _count(hub, TelemetryRollup) == 0 and _count(hub, Alert) == 0
        assert _behind(hub) >= 3600 + 600  # the oldest window's age: EdgefleetHousekeepingBehind fires on it
    finally:
        hub.fleet.engine.dispose()


def test_a_hub_with_housekeeping_here_does_it_on_its_tick(tmp_path: Path, keys_dir: Path) -> None:
    hub = build(hub_config(tmp_path, keys_dir), publisher=MemoryPublisher(), with_broker=False)
    try:
        _feed_an_hour_ago(hub)
        ticker.tick(hub.fleet)
        assert hub.fleet.last_scan > 0
        assert _count(hub, TelemetryRollup) > 0 and _count(hub, Alert) == 3  # three silent devices
    finally:
        hub.fleet.engine.dispose()


def test_the_housekeep_command_rolls_up_raises_alerts_and_counts_them_on_its_metrics(
    tmp_path: Path, keys_dir: Path
) -> None:
    cfg = hub_config(tmp_path, keys_dir, housekeeping="apart")
    hub = build(cfg, publisher=MemoryPublisher(), with_broker=False)
    port = free_port()
    proc = None
    try:
        _feed_an_hour_ago(hub)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_HUB_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "housekeep", "--db", cfg.db, "--keys", str(keys_dir),
             "--store", str(cfg.store), "--port", str(port), "--every", "0.2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        # ten minutes of three devices, at most five minutes a round (hub.rollups.MAX_BUCKETS); an
        # hour rollup too once those minutes close an hour (when depends on the time of day)
        wait_for(lambda: _minutes(hub) == 30, timeout=60, what="the housekeeper's 30 minute rollups")
        wait_for(lambda: _count(hub, Alert) == 3, timeout=30, what="its offline alerts")

        def scraped() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        metrics = scraped()
        assert 'edgefleet_hub_alerts_total{kind="offline"} 3.0' in metrics
        assert "edgefleet_hub_mqtt_connected" not in metrics  # no hub's zeros: it is no hub
        assert _behind(hub) == 0  # every window rolled up
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert b"housekeeping (alerts, rollups, pruning) every 0.2 s on sqlite" in out
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        hub.fleet.engine.dispose()


def test_a_failing_alert_scan_does_not_stop_the_rollups(
    tmp_path: Path, keys_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hub = build(hub_config(tmp_path, keys_dir), publisher=MemoryPublisher(), with_broker=False)
    try:
        _feed_an_hour_ago(hub)

        def broken(fleet: object) -> None:
            raise RuntimeError("database went away mid-scan")

        monkeypatch.setattr(ticker.alerting, "scan", broken)
        ticker.housekeep(hub.fleet)
        assert _count(hub, TelemetryRollup) > 0
        assert "alert scan failed" in caplog.text and "database went away mid-scan" in caplog.text
    finally:
        hub.fleet.engine.dispose()


def test_the_housekeeper_refuses_to_publish_rather_than_drop_a_message(tmp_path: Path, keys_dir: Path) -> None:
    fleet = housekeeper.build(hub_config(tmp_path, keys_dir))
    try:
        with pytest.raises(HubError, match=r"publishes nothing.*1 \(ef/v1/dev/x/desired\)"):
            fleet.publish([Outgoing("ef/v1/dev/x/desired", b"{}")])
    finally:
        fleet.engine.dispose()


def test_a_housekeeper_asked_to_spin_is_refused() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "hub", "housekeep", "--every", "0"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "config every: 0.0 must be within 0.1..3600 seconds" in run.stderr


def test_an_unknown_housekeeping_mode_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"housekeeping: 'elsewhere' must be one of here, apart"):
        HubConfig.load({"dev": True, "housekeeping": "elsewhere"}, environ={})
    assert HubConfig.load({"dev": True}, environ={}).housekeeping == "here"
