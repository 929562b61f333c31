"""Enrollment and broker credentials over a real Mosquitto running the hub-written passwd/ACL:
a device can publish only on its own topics (MQTT v5 PUBACK 135 elsewhere)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from hub import credentials
from hub.server import build
from hub.transport import MemoryPublisher
from protocol.signing import load_root_unverified

from ..conftest import free_port, start_mosquitto
from .conftest import TOKEN, hub_config


def test_password_hash_is_the_mosquitto_passwd_format():
    h = credentials.password_hash("secret", b"\x97Y^\x02:\x94\xae\xb8\xbcM\xeb\x12")
    assert h == (
        "$7$101$l1leAjqUrri8TesS$AhkPJ7MYAnNZvTZ96SLMKbMdubrKyUKDjP+OrKPABkFF7G9pGzgiVxuh85zytVGj2XON6kP1aRXH9"
        "IvJQC/O5Q=="
    )  # what `mosquitto_passwd -b` wrote for this salt
    assert credentials.check_password("secret", h) and not credentials.check_password("Secret", h)


class Client:
    """paho v5 client that records PUBACK reason codes."""

    def __init__(self, port: int, user: str, password: str, client_id: str | None = None) -> None:
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.disconnects = 0
        self.rc: int | None = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"c-{user}", protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_a: setattr(self, "disconnects", self.disconnects + 1)
        c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.c = c

    def _on_connect(self, _c, _u, _f, rc, _p) -> None:
        self.rc = rc.value
        self.connected.set()

    def publish_rc(self, topic: str) -> int:
        info = self.c.publish(topic, b"{}", qos=1)
        info.wait_for_publish(10)
        return self.acks[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.integration
def test_enrolled_device_may_publish_only_on_its_own_topics(tmp_path: Path, keys_dir: Path):
    auth = tmp_path / "auth"
    pid_file = tmp_path / "broker.pid"
    port = free_port()
    cfg = hub_config(
        tmp_path,
        keys_dir,
        broker=f"mqtt://hub:hub-secret@127.0.0.1:{port}",
        mqtt_auth_dir=auth,
        broker_pid_file=pid_file,
    )
    hub = build(cfg, publisher=MemoryPublisher(), with_broker=False)
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    creds = {}
    for dev in ("dev-a", "dev-b"):
        tok = api.post("/api/v1/devices/enroll", json={"device": dev, "group": "lab"}).json()["token"]
        got = TestClient(hub.app).post("/api/v1/enroll", json={"token": tok})
        assert got.status_code == 200, got.text
        body = got.json()
        assert "hub-secret" not in got.text and body["broker"] == f"mqtt://127.0.0.1:{port}"  # never the hub's user
        assert load_root_unverified(body["root"].encode()).version == 1 and body["mqtt"]["username"] == dev
        creds[dev] = body["mqtt"]["password"]
        again = TestClient(hub.app).post("/api/v1/enroll", json={"token": tok})
        assert again.status_code == 403 and "already used" in again.json()["error"]
    assert "pattern write ef/v1/dev/%u/telemetry" in (auth / "acl").read_text()
    # `user root`: the test's files live under pytest's root-only tmp dir (mosquitto drops to
    # its own user otherwise and could not read them)
    broker = start_mosquitto(
        tmp_path / "broker", f"include_dir {auth}\nuser root\n", port=port
    )  # the hub's edgefleet.conf
    clients = []
    try:
        pid_file.write_text(str(broker.proc.pid))
        a = Client(broker.port, "dev-a", creds["dev-a"])
        clients.append(a)
        assert a.connected.wait(10) and a.rc == 0
        assert a.publish_rc("ef/v1/dev/dev-b/telemetry") == 135  # someone else's topic: not authorized
        assert a.publish_rc("ef/v1/dev/dev-a/desired") == 135  # its own desired is hub-only
        assert a.publish_rc("ef/v1/bundle/" + "0" * 64 + "/chunk/0") == 135
        assert a.publish_rc("ef/v1/dev/dev-a/telemetry") in (0, 16)  # ok / no subscribers
        # reading: dev-a subscribed to everything sees none of dev-b's traffic
        seen: list[str] = []
        a.c.on_message = lambda _c, _u, m: seen.append(m.topic)
        a.c.subscribe([("ef/v1/#", 1), ("ef/v1/dev/dev-b/desired", 1), ("#", 1)])
        b = Client(broker.port, "dev-b", creds["dev-b"])
        clients.append(b)
        assert b.connected.wait(10) and b.rc == 0
        assert b.publish_rc("ef/v1/dev/dev-b/telemetry") in (0, 16)
        hubw = Client(broker.port, "hub", "hub-secret")
        clients.append(hubw)
        assert hubw.connected.wait(10) and hubw.publish_rc("ef/v1/dev/dev-b/desired") in (0, 16)
        assert hubw.publish_rc("ef/v1/dev/dev-a/desired") in (0, 16)
        deadline = time.monotonic() + 10
        while "ef/v1/dev/dev-a/desired" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen and set(seen) == {"ef/v1/dev/dev-a/desired"}, seen  # its own, nothing of dev-b's
        wrong = Client(broker.port, "dev-b", "not-the-password")
        clients.append(wrong)
        assert wrong.connected.wait(10) and wrong.rc in (134, 135)
        hubc = Client(broker.port, "hub", "hub-secret")
        clients.append(hubc)
        assert hubc.connected.wait(10) and hubc.rc == 0 and hubc.publish_rc("ef/v1/dev/dev-a/desired") in (0, 16)
        # a device enrolled while the broker runs gets in after the hub's SIGHUP
        tok = api.post("/api/v1/devices/enroll", json={"device": "dev-c"}).json()["token"]
        pw = TestClient(hub.app).post("/api/v1/enroll", json={"token": tok}).json()["mqtt"]["password"]
        deadline = time.monotonic() + 10
        while True:
            c = Client(broker.port, "dev-c", pw)
            clients.append(c)
            assert c.connected.wait(10)
            if c.rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert c.rc == 0 and c.publish_rc("ef/v1/dev/dev-c/status") in (0, 16)
        # client-id takeover: dev-b connecting under dev-a's client id does not knock dev-a off
        before = a.disconnects
        for _ in range(3):
            thief = Client(broker.port, "dev-b", creds["dev-b"], client_id="c-dev-a")
            clients.append(thief)
            assert thief.connected.wait(10) and thief.rc == 0
        time.sleep(1.0)
        assert a.disconnects == before and a.publish_rc("ef/v1/dev/dev-a/telemetry") in (0, 16)
    finally:
        for c in clients:
            c.close()
        broker.stop()
        hub.fleet.engine.dispose()
    devs = api.get("/api/v1/devices?group=lab").json()
    assert sorted(d["device_id"] for d in devs["items"]) == ["dev-a", "dev-b"]


def test_a_new_secret_never_starts_with_a_dash_so_it_survives_the_command_line(monkeypatch):
    """`edgefleet-agent enroll --token -x...` would be read as an option; such draws are redrawn."""
    draws = iter(["-dashfirst", "--double", "ok-token"])
    monkeypatch.setattr(credentials.secrets, "token_urlsafe", lambda n: next(draws))
    assert credentials.new_secret() == "ok-token"


def test_enrollment_never_hands_out_the_hubs_broker_password(tmp_path: Path, keys_dir: Path):
    """The hub's broker user has readwrite on ef/v1/#; a device (or its SD card) that learnt it
    could read and forge the whole fleet's traffic. Devices get their own user, and the URL
    they are told carries no credentials, from --broker or --broker-public alike."""
    for public, told in (("", "mqtt://127.0.0.1:1"), ("mqtt://broker.example:8883", "mqtt://broker.example:8883")):
        cfg = hub_config(
            tmp_path / (public[-4:] or "none"),
            keys_dir,
            broker="mqtt://hub:hub-secret@127.0.0.1:1",
            broker_public=public,
        )
        hub = build(cfg, publisher=MemoryPublisher(), with_broker=False)
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        tok = api.post("/api/v1/devices/enroll", json={"device": "dev-a"}).json()["token"]
        got = TestClient(hub.app).post("/api/v1/enroll", json={"token": tok})
        assert got.status_code == 200 and got.json()["broker"] == told and "hub-secret" not in got.text
        hub.fleet.engine.dispose()


def test_a_public_broker_url_with_a_password_is_refused_at_start():
    from hub.config import HubConfig
    from hub.errors import ConfigError

    with pytest.raises(ConfigError, match="broker_public.*carries a password"):
        HubConfig.load({"dev": True, "broker_public": "mqtt://hub:s3cret@broker:1883"}, environ={})


@pytest.mark.integration
def test_a_device_can_neither_read_another_devices_commands_nor_forge_its_results(tmp_path: Path, keys_dir: Path):
    auth = tmp_path / "auth"
    port = free_port()
    cfg = hub_config(tmp_path, keys_dir, broker=f"mqtt://hub:hub-secret@127.0.0.1:{port}", mqtt_auth_dir=auth)
    hub = build(cfg, publisher=MemoryPublisher(), with_broker=False)
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    creds = {}
    for dev in ("dev-a", "dev-b"):
        tok = api.post("/api/v1/devices/enroll", json={"device": dev}).json()["token"]
        creds[dev] = TestClient(hub.app).post("/api/v1/enroll", json={"token": tok}).json()["mqtt"]["password"]
    broker = start_mosquitto(tmp_path / "broker", f"include_dir {auth}\nuser root\n", port=port)
    clients = []
    try:
        a = Client(broker.port, "dev-a", creds["dev-a"])
        hubc = Client(broker.port, "hub", "hub-secret")
        clients += [a, hubc]
        assert a.connected.wait(10) and a.rc == 0 and hubc.connected.wait(10) and hubc.rc == 0
        assert a.publish_rc("ef/v1/dev/dev-b/result") == 135  # a forged answer in dev-b's name
        assert a.publish_rc("ef/v1/dev/dev-a/command") == 135  # commands come from the hub only
        assert a.publish_rc("ef/v1/dev/dev-a/result") in (0, 16)
        seen: list[str] = []
        a.c.on_message = lambda _c, _u, m: seen.append(m.topic)
        a.c.subscribe([("ef/v1/dev/+/command", 1), ("ef/v1/dev/dev-b/command", 1), ("ef/v1/dev/dev-a/command", 1)])
        results: list[str] = []
        hubc.c.on_message = lambda _c, _u, m: results.append(m.topic)
        hubc.c.subscribe("ef/v1/dev/+/result", 1)
        time.sleep(0.5)  # both SUBACKs
        assert hubc.publish_rc("ef/v1/dev/dev-b/command") in (0, 16)
        assert hubc.publish_rc("ef/v1/dev/dev-a/command") in (0, 16)
        assert a.publish_rc("ef/v1/dev/dev-a/result") in (0, 16)
        deadline = time.monotonic() + 10
        while not (seen and results) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert seen and set(seen) == {"ef/v1/dev/dev-a/command"}, seen  # never dev-b's
        assert set(results) == {"ef/v1/dev/dev-a/result"}, results  # the forged one never arrived
    finally:
        for c in clients:
            c.close()
        broker.stop()
        hub.fleet.engine.dispose()


def _replayed(port: int, user: str | None, password: str | None, filter_: str, expect: int) -> int:
    """Messages a fresh session of ``user`` receives from subscribing ``filter_`` (a retained
    replay), once nothing more arrives for a second."""
    got: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user or "anon", protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    c.on_message = lambda _c, _u, m: got.append(m.topic)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.subscribe(filter_, qos=1)
        last, seen = time.monotonic(), 0
        while time.monotonic() - last < 1.0 and len(got) < expect:
            time.sleep(0.05)
            if len(got) != seen:
                last, seen = time.monotonic(), len(got)
        return len(got)
    finally:
        c.disconnect()
        c.loop_stop()


def _retain_chunks(port: int, user: str | None, password: str | None, digest: str, n: int) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retainer", protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(f"ef/v1/bundle/{digest}/chunk/{i}", b"x" * 64, qos=1, retain=True) for i in range(n)]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.integration
def test_a_bundle_of_more_chunks_than_the_brokers_default_queue_reaches_a_device_whole_through_edgefleet_conf(
    tmp_path: Path, keys_dir: Path
):
    """Mosquitto queues at most max_queued_messages (default 1,000) per session beyond those in
    flight, and drops the rest of a retained replay: a device subscribing to a bundle of 1,200
    chunks got ~1,020 of them and the tail only through repair requests. The hub's edgefleet.conf
    sets the queue for the largest archive it cuts (hub.store.MAX_ARCHIVE_CHUNKS)."""
    n, digest = 1200, "ab" * 32
    assert credentials.max_queued_messages() >= n
    plain = start_mosquitto(tmp_path / "plain")  # the broker's defaults: what the conf line changes
    try:
        _retain_chunks(plain.port, None, None, digest, n)
        dropped = _replayed(plain.port, None, None, f"ef/v1/bundle/{digest}/chunk/+", n)
        assert dropped < n, f"the default queue kept all {n}: this test no longer shows the limit"
    finally:
        plain.stop()

    auth, port = tmp_path / "auth", free_port()
    cfg = hub_config(tmp_path, keys_dir, broker=f"mqtt://hub:hub-secret@127.0.0.1:{port}", mqtt_auth_dir=auth)
    hub = build(cfg, publisher=MemoryPublisher(), with_broker=False)
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    tok = api.post("/api/v1/devices/enroll", json={"device": "dev-a", "group": "lab"}).json()["token"]
    password = TestClient(hub.app).post("/api/v1/enroll", json={"token": tok}).json()["mqtt"]["password"]
    assert f"max_queued_messages {credentials.max_queued_messages()}" in (auth / "edgefleet.conf").read_text()
    broker = start_mosquitto(tmp_path / "broker", f"include_dir {auth}\nuser root\n", port=port)
    try:
        _retain_chunks(port, "hub", "hub-secret", digest, n)
        got = _replayed(port, "dev-a", password, f"ef/v1/bundle/{digest}/chunk/+", n)
        assert got == n, f"{got} of {n} chunks (the broker's default queue gave {dropped})"
    finally:
        broker.stop()
