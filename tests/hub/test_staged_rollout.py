"""The scenario that matters most, at the hub's boundary: a real broker, the hub's bridge and
ticker running, devices speaking protocol v1 over MQTT (paho + protocol, no agent code).

A slow model is halted at the canary and rolled back by a new signed document; the rest of
the fleet never hears of it. A good model then walks every cohort to 100 %, and a device that
was offline throughout converges to it when it returns."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hub.keys import HubKeys
from hub.server import build
from protocol.messages import Desired, verify_desired

from .conftest import TOKEN, FakeDevice, hub_config, wait_for
from .helpers import report, status, telemetry
from .test_api import archive_of

pytestmark = pytest.mark.integration
FAST, SLOW = 0.010, 0.045
POLICY = {"preset": "staged", "soak_s": 0, "require_samples": True, "gates": {"max_p95_ratio": 1.5, "min_samples": 100}}


class Device:
    def __init__(self, name: str, port: int, root, active: tuple[str, str, str]) -> None:
        self.name, self.root, self.active = name, root, active
        self.fake = FakeDevice(name, port).connect()
        self.seq = 0  # report/telemetry seq
        self.trusted = 0  # highest desired seq accepted
        self.online()

    def online(self, up: bool = True) -> None:
        self.fake.send("status", status(self.name, online=up, active=self.active), retain=True)

    def telemetry(self, latency: float) -> None:
        self.seq += 1
        self.fake.send("telemetry", telemetry(self.name, self.seq, self.active[0], (latency,) * 200))

    def latest_desired(self) -> Desired | None:
        docs = self.fake.got("desired")
        if not docs:
            return None
        d = verify_desired(docs[-1], self.root, self.name, 0, int(time.time()))
        return d if d.seq > self.trusted else None

    def obey(self, latency: float) -> Desired | None:
        """Install whatever the newest desired doc says, report it, serve some traffic."""
        d = self.latest_desired()
        if d is None:
            return None
        self.trusted = d.seq
        self.active = (d.bundle.digest, d.bundle.name, d.bundle.version)
        self.seq += 1
        self.fake.send("report", report(self.name, self.seq, d.seq, stage="commit", bundle=d.bundle.digest))
        self.online()
        self.telemetry(latency)
        return d


def test_slow_model_is_halted_at_the_canary_then_a_good_one_reaches_everyone(
    tmp_path: Path, keys_dir, mosquitto, bundle_dir
):
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url, tick=0.2))
    hub.start()
    devices: list[Device] = []
    try:
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        root = HubKeys.load(keys_dir).root
        v1, slow, good = (
            api.post("/api/v1/bundles", content=archive_of(bundle_dir(version=v))).json()
            for v in ("1.0.0", "2.0.0-slow", "2.0.1")
        )
        devices = [Device(f"cam-{i}", mosquitto.port, root, (v1["digest"], "digits", "1.0.0")) for i in range(6)]
        for d in devices:
            d.telemetry(FAST)
        wait_for(lambda: api.get("/api/v1/devices").json()["total"] == 6, what="six devices registered")

        # --- the slow model: canary only, then an automatic rollback --------------------------
        rid = api.post(
            "/api/v1/rollouts", json={"bundle": slow["digest"], "target": {"all": True}, "policy": POLICY}
        ).json()["id"]
        canary = wait_for(lambda: next((d for d in devices if d.latest_desired()), None), what="a canary")
        assert canary.obey(SLOW).bundle.digest == slow["digest"]
        st = wait_for(
            lambda: (s := api.get(f"/api/v1/rollouts/{rid}").json())["phase"] == "rolled_back" and s,
            what="automatic rollback",
        )
        assert "p95_latency_ratio" in st["reason"]
        back = wait_for(canary.latest_desired, what="the rollback document")
        assert back.action == "rollback" and back.bundle.digest == v1["digest"] and back.seq > canary.trusted
        canary.obey(FAST)
        assert all(not d.fake.got("desired") for d in devices if d is not canary)
        wait_for(
            lambda: api.get(f"/api/v1/rollouts/{rid}").json()["counts"].get("rolled_back") == 1,
            what="canary settled as rolled back",
        )

        # --- the good model: every cohort, with one device offline the whole time --------------
        away = next(d for d in devices if d is not canary)
        away.online(False)
        rid2 = api.post(
            "/api/v1/rollouts", json={"bundle": good["digest"], "target": {"all": True}, "policy": POLICY}
        ).json()["id"]

        def progress() -> bool:
            for d in devices:
                if d is not away:
                    d.obey(FAST)
            return api.get(f"/api/v1/rollouts/{rid2}").json()["phase"] == "completed"

        wait_for(progress, timeout=60, what="good model through every cohort")
        st = api.get(f"/api/v1/rollouts/{rid2}").json()
        assert st["counts"].get("installed") == 5 and st["cohort_sizes"][-1] == 6
        assert {g["name"]: g["status"] for g in st["gates"]}["p95_latency_ratio"] == "pass"
        # the offline device returns: its retained document is the good model, not the slow one
        away.online(True)
        got = wait_for(away.latest_desired, what="retained desired for the returning device")
        assert got.bundle.digest == good["digest"]
        away.obey(FAST)
        wait_for(
            lambda: api.get(f"/api/v1/rollouts/{rid2}").json()["counts"].get("installed") == 6,
            what="returning device installed",
        )
    finally:
        for d in devices:
            d.fake.close()
        hub.stop()
