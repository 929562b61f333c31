"""M1–M5 and S14 of the checklist: one enrolled device turned hostile, against real Mosquitto
running the hub's generated passwd, ACL and listener (edgefleet.conf), and the real hub."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import select

from hub.models import ReportRecord, TelemetryWindow
from hub.server import build
from hub.transport import MemoryPublisher

from ..conftest import free_port, start_mosquitto
from ..hub.conftest import TOKEN, hub_config, wait_for
from ..hub.helpers import report, status, telemetry
from ..hub.test_credentials import Client

DEVICES = [f"pi-{i}" for i in range(5)]
KINDS = ("status", "report", "telemetry", "fetch", "desired", "ack", "command", "result")


def _fleet(tmp_path: Path, keys_dir: Path):
    """A hub that enrolled DEVICES and a broker started from the hub's own edgefleet.conf."""
    port = free_port()
    auth = tmp_path / "auth"
    cfg = hub_config(tmp_path, keys_dir, broker=f"mqtt://hub:hub-secret@127.0.0.1:{port}", mqtt_auth_dir=auth)
    hub = build(cfg, publisher=MemoryPublisher(), with_broker=False)
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    creds = {}
    for dev in DEVICES:
        tok = api.post("/api/v1/devices/enroll", json={"device": dev}).json()["token"]
        creds[dev] = TestClient(hub.app).post("/api/v1/enroll", json={"token": tok}).json()["mqtt"]["password"]
    broker = start_mosquitto(tmp_path / "broker", f"include_dir {auth}\nuser root\n", port=port)
    return hub, broker, creds


def _v311(port: int, user: str, password: str) -> mqtt.Client:
    """A 3.1.1 client: the broker names it after its user, so it replaces that device's v5 one."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"v3-{user}", protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    up = threading.Event()
    c.on_connect = lambda *_a: up.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert up.wait(10)
    return c


def test_m1_m2_m3_m4_a_device_credential_reaches_no_other_device(tmp_path: Path, keys_dir: Path, figure):
    hub, broker, creds = _fleet(tmp_path, keys_dir)
    clients: list[Client] = []
    try:
        hubc = Client(broker.port, "hub", "hub-secret")
        clients.append(hubc)
        assert hubc.connected.wait(10) and hubc.rc == 0
        got: list[tuple[str, bytes]] = []
        hubc.c.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload)))
        hubc.c.subscribe("ef/v1/#", qos=1)
        devs = {d: Client(broker.port, d, creds[d]) for d in DEVICES}
        clients += devs.values()
        assert all(c.connected.wait(10) and c.rc == 0 for c in devs.values())
        seen: dict[str, list[str]] = {d: [] for d in DEVICES}
        for d, c in devs.items():
            c.c.on_message = (lambda dev: lambda _c, _u, m: seen[dev].append(m.topic))(d)
            c.c.subscribe([("#", 1), ("ef/v1/#", 1)] + [(f"ef/v1/dev/{o}/+", 1) for o in DEVICES if o != d])
        time.sleep(0.5)
        # M1: every device publishes on every other device's topics, v5 then v3.1.1
        v5_attempts, refused = 0, 0
        for d, c in devs.items():
            for other in DEVICES:
                if other == d:
                    continue
                for kind in KINDS:
                    v5_attempts += 1
                    refused += c.publish_rc(f"ef/v1/dev/{other}/{kind}") == 135
            v5_attempts += 1
            refused += c.publish_rc("ef/v1/root") == 135
        v3_attempts = 0
        for d in DEVICES[:2]:
            v3 = _v311(broker.port, d, creds[d])
            for other in DEVICES:
                if other != d:
                    for kind in KINDS:
                        v3.publish(f"ef/v1/dev/{other}/{kind}", b"forged-v3", qos=1).wait_for_publish(10)
                        v3_attempts += 1
            v3.disconnect()
            v3.loop_stop()
        for d in DEVICES[:2]:  # their v5 connections were replaced by the 3.1.1 ones: back again
            devs[d].close()
            devs[d] = Client(broker.port, d, creds[d])
            clients.append(devs[d])
            assert devs[d].connected.wait(10)
            devs[d].c.on_message = (lambda dev: lambda _c, _u, m: seen[dev].append(m.topic))(d)
            devs[d].c.subscribe([("#", 1), ("ef/v1/#", 1)] + [(f"ef/v1/dev/{o}/+", 1) for o in DEVICES if o != d])
        time.sleep(0.5)
        # the hub publishes each device its own desired document
        for d in DEVICES:
            assert hubc.publish_rc(f"ef/v1/dev/{d}/desired") in (0, 16)
        deadline = time.monotonic() + 5
        while any(f"ef/v1/dev/{d}/desired" not in seen[d] for d in DEVICES) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        forged = [t for t, p in got if p in (b"{}", b"forged-v3") and not t.endswith("/desired")]
        leaked = sum(1 for d in DEVICES for t in seen[d] if not t.startswith(f"ef/v1/dev/{d}/"))
        figure(
            "M1",
            f"{v5_attempts + v3_attempts} publishes by devices on other devices' topics and the root "
            "(MQTT v5 and 3.1.1)",
            "forged messages delivered",
            len(forged),
            "0",
            not forged,
        )
        figure(
            "M1",
            f"the {v5_attempts} MQTT v5 publishes",
            "refused with PUBACK 135",
            f"{refused}/{v5_attempts}",
            "all",
            refused == v5_attempts,
        )
        figure(
            "M2",
            "each device subscribed to #, ef/v1/# and every other device's topics",
            "other devices' messages received",
            leaked,
            "0",
            leaked == 0,
        )
        assert not forged and leaked == 0 and refused == v5_attempts
        # M3: a device connects 10 times under another device's client id
        victim, thief = devs[DEVICES[0]], DEVICES[1]
        before = victim.disconnects
        for _ in range(10):
            t = Client(broker.port, thief, creds[thief], client_id=f"c-{DEVICES[0]}")
            clients.append(t)
            assert t.connected.wait(10)
        time.sleep(1.0)
        kicked = victim.disconnects - before
        figure("M3", "10 connects with another device's client id", "victim disconnects", kicked, "0", kicked == 0)
        assert kicked == 0
        # M4: a 2 MiB publish (over max_packet_size) from a device
        big = devs[DEVICES[2]]
        big.c.publish(f"ef/v1/dev/{DEVICES[2]}/telemetry", b"x" * (2 << 20), qos=1)
        time.sleep(1.0)
        oversize = sum(1 for _, p in got if len(p) >= (2 << 20))
        figure(
            "M4",
            "one 2 MiB telemetry publish (limit 1 MiB)",
            "oversize messages delivered to the hub",
            oversize,
            "0",
            oversize == 0,
        )
        assert oversize == 0
    finally:
        for c in clients:
            c.close()
        broker.stop()
        hub.fleet.engine.dispose()


def test_m5_s14_one_device_floods_poison_and_replays_and_the_others_are_all_stored(
    tmp_path: Path, keys_dir: Path, figure, mosquitto
):
    """Over the real broker into the live hub: 400 poison messages of 8 kinds and 200 replays
    from one device, interleaved with 20 devices' windows and reports."""
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url))
    hub.start()
    try:
        assert hub.bridge is not None and hub.bridge.connected.wait(10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="m5-pub", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        poison = [
            json.dumps({**json.loads(status("evil")), "desired_seq": 2**63}).encode(),
            json.dumps({**json.loads(report("evil", 1, 1)), "ts": 10**30}).encode(),
            b'{"v":1,"device":"evil","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
            status("evil").replace(b'"board":"rpi4"', b'"board":"rpi4","mem":1e999'),
            b"\xff\xfe not json",
            json.dumps(
                {
                    **json.loads(telemetry("evil", 3)),
                    "latency": {"b": {"10": 10**15}, "n": 10**15, "sum": 1.0, "min": 0.1, "max": 0.1},
                }
            ).encode(),
            json.dumps({**json.loads(telemetry("evil", 4)), "counts": {"inferences": 1, "cpu": 99}}).encode(),
            json.dumps({**json.loads(telemetry("evil", 5)), "device": "someone-else"}).encode(),
        ]
        good: set[tuple[str, int]] = set()
        infos = []
        for r in range(10):
            for i in range(20):
                d = f"good-{i:02}"
                infos.append(pub.publish(f"ef/v1/dev/{d}/telemetry", telemetry(d, r + 1), qos=1))
                good.add((d, r + 1))
                if r == 0:
                    infos.append(pub.publish(f"ef/v1/dev/{d}/report", report(d, 1, 0), qos=1))
            for p in poison * 5:
                kind = "status" if b'"online"' in p else "report" if b'"stage"' in p else "telemetry"
                infos.append(pub.publish(f"ef/v1/dev/evil/{kind}", p, qos=1))
            for _ in range(20):  # replays of one stored window and one report
                infos.append(pub.publish("ef/v1/dev/good-00/telemetry", telemetry("good-00", 1), qos=1))
                infos.append(pub.publish("ef/v1/dev/good-00/report", report("good-00", 1, 0), qos=1))
        for info in infos:
            info.wait_for_publish(30)

        def stored() -> set[tuple[str, int]]:
            with hub.fleet.session() as s:
                return {(w.device, w.seq) for w in s.exec(select(TelemetryWindow)).all()}

        wait_for(lambda: good <= stored(), timeout=60, what="every good window")
        time.sleep(1.0)
        with hub.fleet.session() as s:
            reports = s.exec(select(ReportRecord)).all()
        share = len(good & stored()) / len(good)
        evil_rows = sum(1 for d, _ in stored() if d == "evil") + sum(1 for r in reports if r.device == "evil")
        dup = len(reports) - len({(r.device, r.seq) for r in reports})
        figure(
            "M5",
            "400 poison messages of 8 kinds from one device amid 20 devices' 200 windows",
            "other devices' windows stored",
            f"{100 * share:.0f} %",
            "100 %",
            share == 1.0,
        )
        figure("M5", "the same", "poison messages stored", evil_rows, "0", evil_rows == 0)
        figure("S14", "200 replays of a stored window and report", "duplicates stored", dup, "0", dup == 0)
        assert share == 1.0 and evil_rows == 0 and dup == 0
        assert len([w for w in stored() if w[0] == "good-00"]) == 10
        pub.disconnect()
        pub.loop_stop()
    finally:
        hub.stop()
