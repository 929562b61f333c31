"""M7, M6-style broker crashes and hub crashes: the broker or the hub dies (kill -9) while a
rollout is out and devices are working; nothing a device said is lost and every device ends
on what the hub told it. Real Mosquitto, the real hub, and (slow check) real agent processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from hub import devices
from hub.keys import HubKeys
from hub.models import Device
from hub.server import build
from protocol.messages import verify_desired

from ..agent.bundles import MNV1, coral_bundle
from ..conftest import start_mosquitto
from ..hub.conftest import TOKEN, FakeDevice, hub_config, wait_for, write_bundle
from ..hub.helpers import status, telemetry
from ..hub.test_api import archive_of
from .conftest import HubProcess, windows_stored


def test_m7_devices_offline_through_a_broker_kill_9_all_converge(tmp_path: Path, keys_dir: Path, figure):
    """10 devices go offline, a rollout is issued, the broker is killed before it saved its
    retained messages; when the devices return each gets its document with the issued seq."""
    broker = start_mosquitto(tmp_path / "broker", "persistence false\n")
    hub = build(hub_config(tmp_path, keys_dir, broker=broker.url))
    hub.start()
    names = [f"away-{i}" for i in range(10)]
    try:
        assert hub.bridge is not None and hub.bridge.connected.wait(10)
        for n in names:
            d = FakeDevice(n, broker.port).connect()
            d.send("status", status(n), retain=True)
            d.close()
        wait_for(lambda: len(devices.listing(hub.fleet, limit=50)["items"]) == 10, what="ten devices")
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        pushed = api.post("/api/v1/bundles", content=archive_of(write_bundle(tmp_path / "b"))).json()
        api.post("/api/v1/rollouts", json={"bundle": pushed["digest"], "target": {"all": True}})

        def issued() -> dict[str, int]:
            with hub.fleet.session() as s:
                return {d.id: d.desired_seq for d in s.exec(select(Device)).all() if d.desired_seq}

        seqs = wait_for(lambda: len(issued()) == 10 and issued(), what="documents issued")
        time.sleep(0.5)
        broker.stop(kill=True)
        wait_for(lambda: not hub.bridge.connected.is_set(), what="the hub to notice")
        broker.start()
        assert hub.bridge.connected.wait(40)
        # the outage is noted, so rollout gates leave out the windows it disturbed
        down, up = wait_for(lambda: hub.fleet.recovery_periods(), what="the outage noted")[-1]
        assert down < up
        root = HubKeys.load(keys_dir).root
        converged = 0
        for n in names:
            back = FakeDevice(n, broker.port).connect()
            try:
                doc = wait_for(lambda back=back: back.got("desired"), timeout=10, what=f"{n}'s document")[-1]
                d = verify_desired(doc, root, n, 0, int(time.time()))
                converged += d.seq == seqs[n] and d.bundle is not None and d.bundle.digest == pushed["digest"]
            except AssertionError:
                pass
            finally:
                back.close()
        figure(
            "M7",
            "10 devices offline during a rollout; broker kill -9 without persistence",
            "devices that get their issued document on return",
            f"{10 * converged} %",
            "100 %",
            converged == 10,
        )
        assert converged == 10
    finally:
        hub.stop()
        broker.stop()


def test_telemetry_sent_while_the_hub_is_away_arrives_through_its_persistent_session(
    tmp_path: Path, keys_dir: Path, figure, mosquitto
):
    """The hub stops; 5 devices send 20 windows each at QoS 1 (no resend); the hub starts
    again under the same client id and the broker hands it what it queued."""
    cfg = hub_config(tmp_path, keys_dir, broker=mosquitto.url)
    hub = build(cfg)
    hub.start()
    assert hub.bridge is not None and hub.bridge.connected.wait(10)
    hub.stop()
    hub.fleet.engine.dispose()
    devs = [FakeDevice(f"s-{i}", mosquitto.port).connect(subscribe=()) for i in range(5)]
    for seq in range(1, 21):
        for d in devs:
            d.send("telemetry", telemetry(d.device, seq))
    for d in devs:
        d.close()
    hub = build(cfg)
    hub.start()
    try:
        lost = 100 - windows_stored(hub, 100, 20)
        figure(
            "hub-restart",
            "hub stopped while 5 devices send 100 windows at QoS 1 (no resends)",
            "windows lost",
            lost,
            "0",
            lost == 0,
        )
        assert lost == 0
    finally:
        hub.stop()


# ---- kill -9 of the broker and of the hub, with real agents serving traffic -------------------


@pytest.mark.slow
@pytest.mark.integration
def test_broker_and_hub_kill_9_under_traffic_lose_no_window_and_no_request(
    tmp_path: Path, keys_dir: Path, coral_models: Path, figure, make_agent_at
):
    broker = start_mosquitto(tmp_path / "broker")  # default persistence: autosave every 1 s here
    hub = HubProcess(tmp_path, keys_dir, broker.url)
    hub.start()
    names = [f"agent-{i}" for i in range(3)]
    answered: dict[str, int] = {n: 0 for n in names}
    failed: list[str] = []
    stop = threading.Event()
    try:
        pushed = hub.api("POST", "/api/v1/bundles", archive_of(coral_bundle(tmp_path / "b", coral_models, MNV1)))
        agents = [
            make_agent_at(broker.url, n, trusted=keys_dir / "root.json", telemetry_interval_s=0.5).start()
            for n in names
        ]  # pinned to this hub's root: it signs the bundles

        def device(n: str) -> dict[str, Any]:
            try:
                return hub.api("GET", f"/api/v1/devices/{n}")
            except Exception:  # noqa: BLE001 - not there yet
                return {}

        wait_for(lambda: all(device(n).get("online") for n in names), timeout=60, what="agents online")
        hub.api("POST", "/api/v1/rollouts", {"bundle": pushed["digest"], "target": {"all": True}})
        wait_for(
            lambda: all((device(n).get("active_bundle") or {}).get("digest") == pushed["digest"] for n in names),
            timeout=90,
            what="the bundle on every agent",
        )
        ports = {a.device: a.port for a in agents}
        tensor = np.zeros((1, 128, 128, 3), np.uint8).tobytes()

        def traffic(n: str) -> None:
            import http.client

            while not stop.is_set():
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", ports[n], timeout=30)
                    conn.request(
                        "POST",
                        "/v1/predict",
                        tensor,
                        {
                            "Content-Type": "application/octet-stream",
                            "X-Tensor-Shape": "1,128,128,3",
                            "X-Tensor-Dtype": "uint8",
                        },
                    )
                    resp = conn.getresponse()
                    resp.read()
                    conn.close()
                    if resp.status == 200:
                        answered[n] += 1
                    else:
                        failed.append(f"{n}: {resp.status}")
                except OSError as exc:
                    failed.append(f"{n}: {exc}")
                time.sleep(0.02)

        threads = [threading.Thread(target=traffic, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        time.sleep(3)
        broker.stop(kill=True)
        time.sleep(3)
        broker.start()
        time.sleep(3)
        hub.kill()
        time.sleep(3)
        hub.start()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(30)
        time.sleep(1)  # the last windows close

        def counted() -> dict[str, int]:
            return {n: sum(x for _, x in hub.windows().get(n, [])) for n in names}

        try:  # agents resend unacked windows after 15 s, then 30 s (agent.backlog.resend_wait)
            wait_for(lambda: counted() == answered, timeout=60, what="every request counted at the hub")
        except AssertionError:
            pass
        got, sent = sum(counted().values()), sum(answered.values())
        gaps = 0
        for n in names:
            seqs = sorted(s for s, _ in hub.windows().get(n, []))
            gaps += (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
        figure(
            "kill-9",
            "broker kill -9 then hub kill -9 (3 s each) while 3 agents serve traffic",
            "requests failed",
            len(failed),
            "0",
            not failed,
        )
        figure("kill-9", "the same", "inferences counted at the hub / answered", f"{got}/{sent}", "all", got == sent)
        figure("kill-9", "the same", "telemetry windows lost (seq gaps)", gaps, "0", gaps == 0)
        assert not failed and got == sent and gaps == 0, (failed[:5], counted(), answered)
    finally:
        stop.set()
        if hub.proc is not None and hub.proc.poll() is None:
            hub.proc.terminate()
            hub.proc.wait(15)
        hub.log.close()
        broker.stop()
