"""The fleet simulator against a real hub (bridge, ingest, rollout engine, in this process) and a
private Mosquitto: simulated devices install a rollout through the agent's real verification and
planning, their telemetry reaches the hub, an injected regression shows in it, and devices that
lose their link mid-transfer still finish."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func
from sqlmodel import select

from hub import keys as hub_keys
from hub.models import ReportRecord
from hub.server import Hub, build
from sim.bundle import synthetic_archive
from sim.config import Faults, Inference, SimConfig
from sim.fleet import SimFleet

from ..conftest import start_mosquitto
from ..hub.conftest import TOKEN, hub_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def hub_and_broker(tmp_path: Path) -> Iterator[tuple[Hub, TestClient, int, Path]]:
    broker = start_mosquitto(tmp_path / "broker", "max_connections -1\nmax_queued_messages 10000\n")
    keys = tmp_path / "keys"
    hub_keys.init(keys)
    hub = build(hub_config(tmp_path, keys, broker=broker.url, tick=0.3))
    hub.start()
    assert hub.bridge is not None and hub.bridge.connected.wait(20)
    try:
        yield hub, TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"}), broker.port, keys / "root.json"
    finally:
        hub.stop()
        hub.fleet.engine.dispose()
        broker.stop()


def push(api: TestClient, size: int, version: str) -> dict[str, Any]:
    r = api.post(
        "/api/v1/bundles",
        content=synthetic_archive(size, version=version),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def online(api: TestClient, ids: list[str]) -> bool:
    items = api.get("/api/v1/devices?limit=500").json()["items"]
    up = {d["device_id"] for d in items if d["online"]}
    return all(i in up for i in ids)


def test_simulated_fleet_installs_a_rollout_and_its_telemetry_shows_an_injected_slowdown(hub_and_broker):
    hub, api, port, root = hub_and_broker
    slow = {"sim-0003", "sim-0017", "sim-0042"}  # 10x slower inference after the install
    cfg = SimConfig("127.0.0.1", port, root, devices=50, telemetry_interval_s=1.0, resend_after_s=3.0)
    fleet = SimFleet(
        cfg, inference=lambda i, dev: Inference(rate=20.0, latency_ms=8.0, slowdown=10.0 if dev in slow else 1.0)
    )
    ids = [d.id for d in fleet.devices]
    try:
        assert fleet.run_until(lambda: online(api, ids), timeout=60), "50 simulated devices online at the hub"
        bundle = push(api, 300_000, "1.0.0")
        rid = api.post("/api/v1/rollouts", json={"bundle": bundle["digest"], "target": {"all": True}}).json()["id"]

        def completed() -> bool:
            return fleet.installed(bundle["digest"]) == 50 and api.get(f"/api/v1/rollouts/{rid}").json()["phase"] == (
                "completed"
            )

        assert fleet.run_until(completed, timeout=120), api.get(f"/api/v1/rollouts/{rid}").json()["counts"]
        t = fleet.totals()
        # each device's timeline (bench rollout prints it): desired accepted, first chunk, committed
        c = [d.counters for d in fleet.devices]
        assert all(x.desired_at and x.first_chunk_at and x.committed_at for x in c)
        assert all(x.desired_at <= x.first_chunk_at <= x.committed_at for x in c)  # type: ignore[operator]
        # every device received the bundle through the broker's fan-out; the hub sent it once
        assert t.chunk_bytes >= 50 * bundle["size"]
        chunks = -(-bundle["size"] // hub.config.chunk_size)
        chunk_msgs = hub.fleet.metrics.published.labels("chunk")._value.get()
        assert chunk_msgs == chunks, f"hub published {chunk_msgs} chunk messages for a {chunks}-chunk bundle"
        # download progress: the start and at most a tenth every progress_interval_s (5 s), not
        # every tenth (each device sent 5 for this 5-chunk bundle before, 250 in all)
        with hub.fleet.session() as s:
            progress = s.exec(
                select(func.count())
                .select_from(ReportRecord)
                .where(ReportRecord.stage == "download", ReportRecord.status == "progress")
            ).one()
        assert 50 <= progress <= 100, progress
        # simulated devices read the chunk plan by reference, as agents do: one plan message for all
        assert hub.fleet.metrics.published.labels("plan")._value.get() == 1
        assert all(d.job is None or d.job.stage != "plan" for d in fleet.devices)

        def device(i: str) -> dict[str, Any]:
            return dict(api.get(f"/api/v1/devices/{i}").json())

        def telemetry_in() -> bool:
            return all((device(i)["telemetry"]["inferences"] or 0) >= 100 for i in ids)

        assert fleet.run_until(telemetry_in, timeout=60, check_every=2.0), "telemetry of 100 inferences per device"
        p95 = {i: device(i)["telemetry"]["p95_ms"] for i in ids}
        fast = sorted(v for k, v in p95.items() if k not in slow)
        assert all(device(i)["active_bundle"]["digest"] == bundle["digest"] for i in ids)
        # the regression is visible: each slow device's p95 is above every fast device's
        assert min(p95[i] for i in slow) > 4 * fast[-1], (p95, fast[-1])
        lags = [x for d in fleet.devices for x in d.counters.ack_lags]
        assert lags, "the hub acknowledged telemetry"
        # each acked window's first send time beside its lag (bench rollout splits the lag phase on it)
        assert all(len(d.counters.ack_sent) == len(d.counters.ack_lags) for d in fleet.devices)
        assert all(0 < t <= time.monotonic() for d in fleet.devices for t in d.counters.ack_sent)
    finally:
        fleet.stop()


def test_devices_that_lose_their_link_mid_transfer_resume_and_finish(hub_and_broker):
    hub, api, port, root = hub_and_broker
    # a slow link (1 MB/s each) so that the transfer is still running when the links go
    cfg = SimConfig(
        "127.0.0.1",
        port,
        root,
        devices=20,
        telemetry_interval_s=2.0,
        fetch_repair_s=2.0,
        inference=Inference(rate=0.0),
        faults=Faults(slow_link_bps=1_000_000),
    )
    fleet = SimFleet(cfg)
    ids = [d.id for d in fleet.devices]
    try:
        assert fleet.run_until(lambda: online(api, ids), timeout=60)
        bundle = push(api, 3_000_000, "2.0.0")
        api.post("/api/v1/rollouts", json={"bundle": bundle["digest"], "target": {"all": True}})
        cut: set[str] = set()

        def cut_some() -> bool:
            for d in fleet.devices[:8]:
                job = d.job
                if d.id not in cut and job is not None and 0 < sum(job.bits) < len(job.bits) // 2:
                    fleet.take_offline(d.id, 2.0)
                    cut.add(d.id)
            return len(cut) == 8 or fleet.installed(bundle["digest"]) == 20

        fleet.run_until(cut_some, timeout=60, check_every=0.05)
        assert len(cut) >= 4, f"only {len(cut)} devices were cut mid-transfer"
        assert fleet.run_until(lambda: fleet.installed(bundle["digest"]) == 20, timeout=120), [
            (d.id, d.job.stage if d.job else None, len(d.job.missing) if d.job else 0) for d in fleet.devices
        ]
        t = fleet.totals()
        # each cut device resumed its broker session: the chunks queued meanwhile arrived, and what
        # it held already was not sent again; only what was in flight when the link went may come
        # twice (Mosquitto's default window: 20 QoS 1 messages of one 64 KiB chunk each)
        assert t.duplicate_bytes <= len(cut) * 20 * 65536, t
        assert fleet.reconnects >= len(cut)
    finally:
        fleet.stop()


def _three_devices_install(hub_and_broker, faults: Faults):
    """Three devices with ``faults`` (repair wait 0.5 s) take a 300 kB bundle (64 KiB chunks);
    their totals once all installed, and each device's trace of that install (events only)."""
    hub, api, port, root = hub_and_broker
    cfg = SimConfig(
        "127.0.0.1",
        port,
        root,
        devices=3,
        telemetry_interval_s=5.0,
        fetch_repair_s=0.5,
        inference=Inference(rate=0.0),
        faults=faults,
    )
    fleet = SimFleet(cfg)
    ids = [d.id for d in fleet.devices]
    try:
        assert fleet.run_until(lambda: online(api, ids), timeout=60)
        bundle = push(api, 300_000, "2.0.0")
        api.post("/api/v1/rollouts", json={"bundle": bundle["digest"], "target": {"all": True}})
        assert fleet.run_until(lambda: fleet.installed(bundle["digest"]) == 3, timeout=120), [
            (d.id, d.job.stage if d.job else None, d.job.missing if d.job else None) for d in fleet.devices
        ]
        return fleet.totals(), [[e for _, e in d.counters.trace] for d in fleet.devices]
    finally:
        fleet.stop()


def test_devices_whose_chunks_come_slower_than_the_repair_wait_probe_the_broker_and_never_ask_the_hub(
    hub_and_broker,
):
    """ADR 0020: a chunk takes three times ``fetch_repair_s`` to arrive (a 40 kB/s link, 64 KiB
    chunks), as one did at 10,000 devices on one Mosquitto (~11 s a chunk). Each device probes
    the broker when the wait runs out; the next chunk arrives before any answer (the broker
    queues the answer behind the chunks it holds for the device: here the whole bundle), so the
    probe is never heard quiet, and the device finishes without narrowing its subscription or
    one repair request (before ADR 0020: a request each time the wait ran out).
    """
    t, traces = _three_devices_install(hub_and_broker, Faults(slow_link_bps=40_000))
    assert t.probes >= 3, t  # every device's download went quiet for longer than the wait
    assert t.fetch_requests == 0, t
    for events in traces:
        assert any(e.startswith("probe after") for e in events), events
        assert not any(e.startswith(("probe answered quiet", "narrowed", "asked the hub")) for e in events), events
        assert events[-1] == "committed", events


def test_a_chunk_a_device_lost_after_acknowledging_it_comes_back_from_the_brokers_retained_copy_not_the_hub(
    hub_and_broker,
):
    """Each device loses its first delivery of chunk 2 (acknowledged, never written). Its
    download goes quiet, the probe finds nothing queued, and the device narrows its subscription
    to the missing index: the broker's retained copy comes back at once, and the hub is never
    asked (before: a repair request each, and the hub's re-published chunk reached every device
    still holding the wildcard, 0.74 extra bundle copies at 10,000 devices: docs/scale.md)."""
    t, traces = _three_devices_install(hub_and_broker, Faults(lost_chunks=(2,)))
    assert t.probes >= 3, t  # every device's download went quiet with chunk 2 missing
    assert t.fetch_requests == 0, t
    for events in traces:  # in this order: quiet, the probe heard nothing, narrowed, done
        steps = [e.split(" in ")[0] for e in events if e.startswith(("probe answered quiet", "narrowed", "committed"))]
        assert steps[-3:] == ["probe answered quiet", "narrowed to 1 per-index filters", "committed"], events


def test_a_report_no_hub_acknowledges_is_sent_again_after_doubling_waits_as_the_agent_does(tmp_path: Path):
    """With no hub to ack it, a simulated device sends an install report again after 1, 2 and 4 s
    (``resend_after_s`` 1: agent.backlog.resend_wait), not every second: a hub that fell behind is
    not sent every device's backlog again on each interval. Counted where the hub would read them,
    at a subscriber on the real broker."""
    broker = start_mosquitto(tmp_path / "broker")
    hub_keys.init(tmp_path / "keys")
    cfg = SimConfig("127.0.0.1", broker.port, tmp_path / "keys" / "root.json", devices=1, telemetry_interval_s=1000)
    cfg = replace(cfg, resend_after_s=1.0)
    seen: list[float] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hub-stand-in", protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, m: seen.append(time.monotonic())
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("ef/v1/dev/+/report", qos=1)
    sub.loop_start()
    fleet = SimFleet(cfg)
    try:
        assert fleet.run_until(lambda: fleet.connected() == 1, timeout=20)
        (d,) = fleet.devices
        d.report("idle", "ok", detail="nothing to install", desired_seq=0)
        fleet.run_for(8.0)
    finally:
        fleet.stop()
        sub.loop_stop()
        sub.disconnect()
        broker.stop()
    gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert len(seen) == 4, gaps  # at 0, ~1, ~3, ~7 s; a fixed 1 s interval sent 8
    for gap, want in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert want - 0.3 <= gap <= want + 0.8, gaps
    assert d.counters.resent == 3
