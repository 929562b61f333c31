"""The MQTT bridge over a real Mosquitto: real protocol messages from paho clients land in the
database, acks and desired documents come back, bad payloads are counted and survived."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlmodel import select

from hub.keys import HubKeys
from hub.models import Device, TelemetryWindow
from hub.server import build
from protocol.bundle import ChunkPlan
from protocol.messages import FetchRequest, parse_ack, verify_desired

from .conftest import FakeDevice, hub_config, wait_for
from .helpers import report, status, telemetry
from .test_api import archive_of

pytestmark = pytest.mark.integration


@pytest.fixture
def live(tmp_path: Path, keys_dir: Path, mosquitto):
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url))
    hub.start()
    assert hub.bridge is not None and hub.bridge.connected.wait(10)
    yield hub
    hub.stop()


@pytest.fixture
def device(mosquitto):
    made: list[FakeDevice] = []

    def make(name: str) -> FakeDevice:
        d = FakeDevice(name, mosquitto.port).connect()
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def rows(hub, table, **where):
    with hub.fleet.session() as s:
        q = select(table)
        for k, v in where.items():
            q = q.where(getattr(table, k) == v)
        return s.exec(q).all()


def test_retained_status_and_telemetry_reach_the_database_and_are_acked(live, device):
    cam = device("cam-1")
    cam.send("status", status("cam-1"), retain=True)
    for seq in (1, 2, 3):
        cam.send("telemetry", telemetry("cam-1", seq))
    wait_for(lambda: len(rows(live, TelemetryWindow, device="cam-1")) == 3, what="3 telemetry rows")
    dev = rows(live, Device, id="cam-1")[0]
    assert dev.online and dev.inventory["board"] == "rpi4" and dev.inferences == 30
    acked = wait_for(
        lambda: sorted(s for p in cam.got("ack") for s in parse_ack(p).seqs) == [1, 2, 3] or None, what="acks for 1..3"
    )
    assert acked
    # last will / offline status flips the row
    cam.send("status", status("cam-1", online=False), retain=True)
    wait_for(lambda: not rows(live, Device, id="cam-1")[0].online, what="device offline")


def test_malformed_payloads_are_counted_and_the_hub_keeps_serving(live, device):
    bad = device("bad-1")
    bad.send("telemetry", b"\xff\xfe garbage")
    bad.send("report", b'{"v": 1}')
    bad.send("status", status("someone-else"))
    bad.send("telemetry", telemetry("bad-1", 7))
    wait_for(lambda: rows(live, TelemetryWindow, device="bad-1"), what="the good message after the bad ones")
    m = live.fleet.metrics.messages
    assert m.labels("telemetry", "malformed")._value.get() == 1
    assert m.labels("report", "malformed")._value.get() == 1
    assert m.labels("status", "malformed")._value.get() == 1
    assert live.bridge.connected.is_set()


def test_replayed_telemetry_is_stored_once(live, device):
    d = device("rep-1")
    msg = telemetry("rep-1", 5)
    for _ in range(3):
        d.send("telemetry", msg)
    wait_for(
        lambda: live.fleet.metrics.messages.labels("telemetry", "duplicate")._value.get() == 2,
        what="two duplicates counted",
    )
    assert len(rows(live, TelemetryWindow, device="rep-1")) == 1


def test_rollout_over_mqtt_delivers_desired_and_chunks_and_tracks_reports(
    live, device, bundle_dir, keys_dir, mosquitto
):
    from fastapi.testclient import TestClient

    from .conftest import TOKEN

    a, b = device("rpi-a"), device("rpi-b")
    a.send("status", status("rpi-a"), retain=True)
    b.send("status", status("rpi-b"), retain=True)
    wait_for(lambda: len(rows(live, Device)) == 2, what="two devices")
    client = TestClient(live.app, headers={"Authorization": f"Bearer {TOKEN}"})
    pushed = client.post("/api/v1/bundles", content=archive_of(bundle_dir(model_bytes=b"\x07" * 150_000))).json()
    rid = client.post("/api/v1/rollouts", json={"bundle": pushed["digest"], "target": {"all": True}}).json()["id"]
    root = HubKeys.load(keys_dir).root
    doc = wait_for(lambda: a.got("desired"), what="desired for rpi-a")[-1]
    desired = verify_desired(doc, root, "rpi-a", 0, int(time.time()))
    plan: ChunkPlan = desired.bundle.archive
    # a late subscriber still gets every chunk: they are retained
    late = FakeDevice("late", mosquitto.port).connect(subscribe=())
    late.client.subscribe(f"ef/v1/bundle/{plan.sha256}/chunk/+", qos=1)
    wait_for(lambda: len(late.received) == len(plan.chunks), what="all retained chunks")
    for topic, payloads in late.received.items():
        plan.check_chunk(int(topic.rsplit("/", 1)[1]), payloads[-1])
    # repair: a FetchRequest re-publishes the named chunk
    before = live.fleet.metrics.published.labels("chunk")._value.get()
    a.send("fetch", FetchRequest("rpi-a", plan.sha256, (1,)).to_bytes())
    wait_for(lambda: live.fleet.metrics.published.labels("chunk")._value.get() == before + 1, what="repair")
    late.close()
    a.send("report", report("rpi-a", 1, desired.seq, bundle=pushed["digest"]))
    b.send("report", report("rpi-b", 1, 1, stage="verify", status="failed", reason="bad_signature"))
    wait_for(
        lambda: client.get(f"/api/v1/rollouts/{rid}").json()["counts"] == {"installed": 1, "failed": 1},
        what="rollout counts",
    )


def test_a_device_offline_through_a_broker_crash_still_gets_its_desired_document(
    tmp_path: Path, keys_dir: Path, bundle_dir
):
    """kill -9 of a broker that had not saved its retained messages: the hub republishes every
    device's last desired document, byte for byte, when it reconnects, so a device that was
    offline during the rollout and the crash converges when it returns."""
    from fastapi.testclient import TestClient

    from tests.conftest import start_mosquitto

    from .conftest import TOKEN

    broker = start_mosquitto(tmp_path / "broker", "persistence false\n")
    hub = build(hub_config(tmp_path, keys_dir, broker=broker.url))
    hub.start()
    try:
        assert hub.bridge is not None and hub.bridge.connected.wait(10)
        pi = FakeDevice("pi-away", broker.port).connect()
        pi.send("status", status("pi-away"), retain=True)
        wait_for(lambda: len(rows(hub, Device)) == 1, what="the device")
        pi.close()  # goes away before the rollout
        client = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        pushed = client.post("/api/v1/bundles", content=archive_of(bundle_dir(model_bytes=b"\x07" * 5000))).json()
        client.post("/api/v1/rollouts", json={"bundle": pushed["digest"], "target": {"all": True}})
        issued = wait_for(lambda: rows(hub, Device)[0].desired_seq, what="a desired document issued")
        time.sleep(0.5)  # published to the broker
        broker.stop(kill=True)
        wait_for(lambda: not hub.bridge.connected.is_set(), what="the hub to notice")
        broker.start()  # same port, no retained messages
        assert hub.bridge.connected.wait(40)
        back = FakeDevice("pi-away", broker.port).connect()
        try:
            doc = wait_for(lambda: back.got("desired"), what="the retained desired document")[-1]
            desired = verify_desired(doc, HubKeys.load(keys_dir).root, "pi-away", 0, int(time.time()))
            assert desired.seq == issued and desired.bundle is not None and desired.bundle.digest == pushed["digest"]
        finally:
            back.close()
    finally:
        hub.stop()
        broker.stop()


def test_a_hub_reconnecting_to_a_broker_that_kept_its_session_does_not_send_every_document_again(
    tmp_path: Path, keys_dir: Path, bundle_dir
):
    """The broker restarted from its saved state (session and retained messages kept): the hub
    sees ``session_present`` and leaves the retained documents be (at 10,000 devices, sending
    every one again on each reconnect of a loaded hub was a storm); the away device still gets
    its document, from the broker."""
    from fastapi.testclient import TestClient

    from tests.conftest import start_mosquitto

    from .conftest import TOKEN

    # persistence, saved every second; started as root, mosquitto would drop to its own user,
    # which cannot write under pytest's private tmp directory, and save nothing
    broker = start_mosquitto(tmp_path / "broker", "user root\n")
    hub = build(hub_config(tmp_path, keys_dir, broker=broker.url))
    hub.start()
    sent = hub.fleet.metrics.published.labels("desired")
    try:
        assert hub.bridge is not None and hub.bridge.connected.wait(10)
        pi = FakeDevice("pi-away", broker.port).connect()
        pi.send("status", status("pi-away"), retain=True)
        wait_for(lambda: len(rows(hub, Device)) == 1, what="the device")
        pi.close()
        client = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        pushed = client.post("/api/v1/bundles", content=archive_of(bundle_dir(model_bytes=b"\x08" * 5000))).json()
        client.post("/api/v1/rollouts", json={"bundle": pushed["digest"], "target": {"all": True}})
        issued = wait_for(lambda: rows(hub, Device)[0].desired_seq, what="a desired document issued")
        time.sleep(2.5)  # published, and saved by the broker's autosave
        before = sent._value.get()
        broker.stop()  # a clean restart: mosquitto writes its state on the way out
        wait_for(lambda: not hub.bridge.connected.is_set(), what="the hub to notice")
        broker.start()
        assert hub.bridge.connected.wait(40) and hub.bridge.session_present
        time.sleep(1.0)
        assert sent._value.get() == before  # nothing sent again
        back = FakeDevice("pi-away", broker.port).connect()
        try:
            doc = wait_for(lambda: back.got("desired"), what="the retained desired document")[-1]
            desired = verify_desired(doc, HubKeys.load(keys_dir).root, "pi-away", 0, int(time.time()))
            assert desired.seq == issued
        finally:
            back.close()
    finally:
        hub.stop()
        broker.stop()


def test_replicas_get_distinct_client_ids_and_a_single_hub_keeps_its_own(tmp_path: Path, keys_dir: Path, monkeypatch):
    """Two connections under one client id throw each other off the broker in turn. A single
    hub's id is stable across restarts (its session persists); replicas on one database differ
    by listen address, port and process."""
    import hub.server as server
    from hub.server import hub_client_id

    single = hub_config(tmp_path, keys_dir, db="postgresql+psycopg://db/hub", port=8000)
    assert hub_client_id(single) == hub_client_id(single) and not hub_client_id(single).endswith(f"-{os.getpid()}")
    a = hub_config(tmp_path, keys_dir, db="postgresql+psycopg://db/hub", port=8000, shared_group="hubs")
    ids = {hub_client_id(a), hub_client_id(replace(a, port=8001)), hub_client_id(replace(a, host="10.0.0.2"))}
    monkeypatch.setattr(server.os, "getpid", lambda: 4242)  # the same flags in another process
    ids.add(hub_client_id(a))
    assert len(ids) == 4 and hub_client_id(single) not in ids


def test_two_replicas_share_the_traffic_and_the_survivor_gets_all_of_it_once_the_other_is_gone(mosquitto, device):
    """Each message of a ``$share`` group goes to one member. A replica's session ends with its
    connection: Mosquitto keeps handing a persistent session of a gone member its share."""
    from hub.config import BrokerUrl
    from hub.metrics import HubMetrics
    from hub.mqtt import Bridge

    got: dict[str, list[str]] = {"a": [], "b": []}
    bridges = {
        name: Bridge(
            BrokerUrl.parse(mosquitto.url),
            HubMetrics(),
            batch_wait=0.01,
            client_id=f"replica-{name}",
            shared_group="hubs",
        )
        for name in got
    }
    for name, b in bridges.items():
        b.start(lambda batch, name=name: got[name].extend(t for t, _ in batch))
    try:
        assert all(b.connected.wait(10) for b in bridges.values())
        cam = device("cam-s")
        for seq in range(1, 21):
            cam.send("telemetry", telemetry("cam-s", seq))
        wait_for(lambda: len(got["a"]) + len(got["b"]) == 20, what="20 messages between the replicas")
        assert got["a"] and got["b"], {k: len(v) for k, v in got.items()}
        bridges["a"].stop()
        before = len(got["b"])
        for seq in range(21, 41):
            cam.send("telemetry", telemetry("cam-s", seq))
        wait_for(lambda: len(got["b"]) - before == 20, timeout=10, what="all 20 at the survivor")
        assert len(got["a"]) + len(got["b"]) == 40
    finally:
        for b in bridges.values():
            b.stop()


def test_a_broker_that_stops_acknowledging_loses_none_of_what_the_hub_publishes_and_keeps_its_order(mosquitto):
    """paho refuses a QoS 1 message once its queue of unacknowledged ones is full (past 65,535
    its message ids collide: 2,585 desired documents were refused so in a 10,000-device run).
    The bridge holds the rest itself and hands them over as the broker acknowledges."""
    import signal

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from hub.config import BrokerUrl
    from hub.metrics import HubMetrics
    from hub.mqtt import Bridge
    from hub.transport import Outgoing

    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.loop_start()
    sub.subscribe("ef/v1/dev/+/desired", qos=1)
    bridge = Bridge(BrokerUrl.parse(mosquitto.url), HubMetrics(), max_queued=50)
    bridge.start(lambda batch: None)
    try:
        assert bridge.connected.wait(10)
        time.sleep(0.5)
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)  # alive, reading nothing, acknowledging nothing
        try:
            for i in range(500):
                bridge.publish([Outgoing(f"ef/v1/dev/d{i % 7}/desired", str(i).encode(), kind="desired")])
            held = bridge.waiting
            assert held >= 400, held
            assert bridge.metrics.publish_waiting._value.get() >= 400
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        wait_for(lambda: len(got) == 500, timeout=30, what="all 500 messages at the subscriber")
        assert got == [str(i).encode() for i in range(500)]  # in the order they were published
        assert bridge.waiting == 0 and bridge.metrics.publish_dropped._value.get() == 0
    finally:
        bridge.stop()
        sub.loop_stop()
        sub.disconnect()


def test_the_bridge_counts_unread_and_unsent_messages_as_its_backlog():
    # what desired.republish_pending holds its resends on (never started: no broker needed)
    from hub.config import BrokerUrl
    from hub.metrics import HubMetrics
    from hub.mqtt import Bridge
    from hub.transport import Outgoing

    bridge = Bridge(BrokerUrl.parse("mqtt://127.0.0.1:1"), HubMetrics())
    assert bridge.backlog() == 0
    bridge.inbox.put(("ef/v1/dev/d0/telemetry", b"{}"))
    bridge._overflow.append(Outgoing("ef/v1/dev/d0/desired", b"{}"))
    assert bridge.backlog() == 2


def test_a_message_arriving_at_a_full_inbox_is_counted_as_dropped_and_the_inbox_kept():
    # the agent resends an unacknowledged window; the hub must not grow without bound meanwhile
    import paho.mqtt.client as mqtt

    from hub.config import BrokerUrl
    from hub.metrics import HubMetrics
    from hub.mqtt import Bridge

    bridge = Bridge(BrokerUrl.parse("mqtt://127.0.0.1:1"), HubMetrics(), queue_max=2)
    for i in range(3):
        msg = mqtt.MQTTMessage(topic=b"ef/v1/dev/d0/telemetry")
        msg.payload = f'{{"n": {i}}}'.encode()
        bridge._on_message(bridge.client, None, msg)
    assert bridge.metrics.queue_dropped._value.get() == 1
    assert bridge.inbox.take(0.0) == [("ef/v1/dev/d0/telemetry", b'{"n": 0}'), ("ef/v1/dev/d0/telemetry", b'{"n": 1}')]
