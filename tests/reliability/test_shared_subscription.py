"""M11: two hub processes consume telemetry as one MQTT shared subscription (``--shared-group``)
on one PostgreSQL database; one is killed -9 in the middle of a flood. The survivor takes the
whole flow, and what the dead one had received but not stored (never acked) is sent again by
the devices, as agents do, and stored once: nothing lost, nothing stored twice.

Only the ingest side of replicas is proven here; a rollout driven through a replica failover is
issue 15's."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from protocol.messages import parse_ack

from ..conftest import start_mosquitto
from ..hub.conftest import FakeDevice, db_url  # noqa: F401  (db_url: the throwaway PostgreSQL schema)
from ..hub.helpers import status, telemetry
from .conftest import HubProcess

DEVICES = 20
RATE_PER_DEVICE = 40.0  # windows/s each device sends: 800/s in all (an agent sends one per 10-60 s)
RESEND_AFTER_S = 3.0  # agents: resend_after_s (15 s by default)
PHASE_S = 8.0  # seconds measured before the kill and after it
SETTLE_S = 3.0  # after the kill, before measuring again (the survivor drains the backlog)


class Flood:
    """20 devices publishing numbered telemetry windows at QoS 1, each resending the windows
    not acked within ``RESEND_AFTER_S`` (the same bytes, as an agent's backlog does)."""

    def __init__(self, port: int) -> None:
        self.devices = [FakeDevice(f"m11-{i:02d}", port).connect(subscribe=("ack",)) for i in range(DEVICES)]
        self.sent: dict[tuple[str, int], tuple[bytes, float]] = {}  # unacked: payload, last sent
        self.generated = 0
        self.resent = 0
        self.acked: set[tuple[str, int]] = set()
        self._read = {d.device: 0 for d in self.devices}
        self.producing = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="m11-devices", daemon=True)

    def _collect_acks(self) -> None:
        for d in self.devices:
            got = d.got("ack")
            for payload in got[self._read[d.device] :]:
                for seq in parse_ack(payload).seqs:
                    self.acked.add((d.device, seq))
                    self.sent.pop((d.device, seq), None)
            self._read[d.device] = len(got)

    def _publish(self, device: FakeDevice, payload: bytes) -> None:
        assert device.client is not None
        device.client.publish(f"ef/v1/dev/{device.device}/telemetry", payload, qos=1)

    def _run(self) -> None:
        seq = 0
        tick = 1.0 / RATE_PER_DEVICE
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if self.producing.is_set() and now >= next_at:
                seq += 1
                for d in self.devices:
                    payload = telemetry(d.device, seq)
                    self._publish(d, payload)
                    self.sent[(d.device, seq)] = (payload, now)
                    self.generated += 1
                next_at += tick
            self._collect_acks()
            for (dev, s), (payload, at) in list(self.sent.items()):
                if now - at >= RESEND_AFTER_S:
                    self._publish(next(d for d in self.devices if d.device == dev), payload)
                    self.sent[(dev, s)] = (payload, now)
                    self.resent += 1
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for d in self.devices:
            d.close()


def _psycopg_dsn(url: str) -> tuple[str, str]:
    schema = url.split("search_path%3D", 1)[1]
    return "host=127.0.0.1 port=5432 user=postgres dbname=test", schema


def _stored_messages(hub: HubProcess) -> float:
    """edgefleet_hub_messages_total{kind="telemetry",outcome="stored"} of one replica."""
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if (
                line.startswith("edgefleet_hub_messages_total{")
                and 'kind="telemetry"' in line
                and 'outcome="stored"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_m11_a_shared_subscription_consumer_killed_under_load_loses_and_duplicates_nothing(
    tmp_path: Path,
    keys_dir: Path,
    db_url: str,  # noqa: F811 - the fixture imported above
    figure,
):
    broker = start_mosquitto(tmp_path / "broker")
    dsn, schema = _psycopg_dsn(db_url)
    hubs = [
        HubProcess(tmp_path / name, keys_dir, broker.url, db=db_url, extra=["--shared-group", "m11"])
        for name in ("hub-a", "hub-b")
    ]
    flood: Flood | None = None
    counts: list[tuple[float, int, int]] = []  # when, windows stored, windows sent (new ones)
    sampling = threading.Event()

    def stored() -> int:
        with psycopg.connect(dsn, options=f"-csearch_path={schema}") as con:
            return con.execute("select count(*) from telemetry_window").fetchone()[0]

    def sample() -> None:
        while not sampling.is_set():
            sent = flood.generated if flood is not None else 0
            counts.append((time.monotonic(), stored(), sent))
            time.sleep(0.25)

    def rate(start: float, end: float, column: int = 1) -> float:
        inside = [row for row in counts if start <= row[0] <= end]
        first, last = inside[0], inside[-1]
        return (last[column] - first[column]) / (last[0] - first[0])

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        for h in hubs:  # one after the other: the first runs the migrations
            h.start()
        flood = Flood(broker.port)
        for d in flood.devices:
            d.send("status", status(d.device), retain=True)
        sampler.start()
        flood.thread.start()
        flood.producing.set()
        time.sleep(2.0)  # warm up
        before_from = time.monotonic()
        time.sleep(PHASE_S)
        before_to = time.monotonic()
        both = [_stored_messages(h) for h in hubs]
        hubs[0].kill()
        killed_at = time.monotonic()
        time.sleep(SETTLE_S)
        after_from = time.monotonic()
        time.sleep(PHASE_S)
        after_to = time.monotonic()
        flood.producing.clear()
        deadline = time.monotonic() + 4 * RESEND_AFTER_S + 10
        while flood.sent and time.monotonic() < deadline:  # every window acked, or give up
            time.sleep(0.2)
        time.sleep(0.5)
        sampling.set()
        sampler.join(10)

        with psycopg.connect(dsn, options=f"-csearch_path={schema}") as con:
            rows = con.execute("select device, seq from telemetry_window").fetchall()
            totals = dict(con.execute("select id, windows from device").fetchall())
        stored_pairs = {(dev, seq) for dev, seq in rows}
        generated = {(d.device, s) for d in flood.devices for s in range(1, flood.generated // DEVICES + 1)}
        lost = len(generated - stored_pairs)
        duplicates = len(rows) - len(stored_pairs)
        per_device = {}
        for dev, _ in rows:
            per_device[dev] = per_device.get(dev, 0) + 1
        wrong_totals = sorted(dev for dev, n in per_device.items() if totals.get(dev) != n)
        r_before, r_after = rate(before_from, before_to), rate(after_from, after_to)
        sent_before, sent_after = rate(before_from, before_to, 2), rate(after_from, after_to, 2)
        right_after = rate(killed_at, after_from)
    finally:
        if flood is not None:
            flood.close()
        sampling.set()
        for h in hubs:
            h.stop()
        broker.stop()

    what = (
        f"2 hubs, one --shared-group, one PostgreSQL; {DEVICES} devices x {RATE_PER_DEVICE:g} windows/s "
        f"at QoS 1, resent after {RESEND_AFTER_S:g} s unacked; kill -9 of one hub"
    )
    figure(
        "M11",
        what,
        f"windows stored/s (sent/s), {PHASE_S:g} s before the kill",
        f"{r_before:.0f} ({sent_before:.0f})",
        ">= 90 % of sent",
        r_before >= 0.9 * sent_before,
    )
    figure(
        "M11",
        "the same",
        f"windows stored/s (sent/s), {PHASE_S:g} s from {SETTLE_S:g} s after the kill",
        f"{r_after:.0f} ({sent_after:.0f})",
        ">= 90 % of before",
        r_after >= 0.9 * r_before,
    )
    figure(
        "M11",
        "the same",
        f"windows stored/s in the first {SETTLE_S:g} s after the kill",
        f"{right_after:.0f}",
        "informational",
        True,
    )
    figure(
        "M11",
        "the same",
        "both replicas consumed before the kill (telemetry stored by each)",
        " / ".join(f"{n:.0f}" for n in both),
        "> 0 each",
        all(n > 0 for n in both),
    )
    figure(
        "M11",
        "the same",
        "windows resent by devices (in flight at the dead hub, or acked late)",
        flood.resent,
        "informational",
        True,
    )
    figure("M11", "the same", f"windows lost (of {len(generated)} sent)", lost, "0", lost == 0)
    figure("M11", "the same", "windows stored twice", duplicates, "0", duplicates == 0)
    figure(
        "M11",
        "the same",
        "devices whose window total differs from their stored windows",
        len(wrong_totals),
        "0",
        not wrong_totals,
    )
    assert all(n > 0 for n in both), both
    assert lost == 0 and duplicates == 0, (lost, duplicates)
    assert r_before >= 0.9 * sent_before and r_after >= 0.9 * r_before, (r_before, sent_before, r_after)
    assert not wrong_totals, [(d, totals.get(d), per_device[d]) for d in wrong_totals]
