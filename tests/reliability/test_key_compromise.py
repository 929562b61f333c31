"""S11 of the checklist: the hub's online key is stolen and used to fast-forward a device's
desired seq, so every document the real hub issues afterwards looks like a downgrade. The
operator's one step is ``edgefleet-hub keys rotate``; the real hub, a real agent process and
real Mosquitto show the device back under the hub's control, the stolen key's documents
refused, and the model the device already served still verifying after a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import select

from hub import keys as hub_keys
from hub.keys import HubKeys
from hub.models import ReportRecord
from hub.server import build
from protocol.messages import Desired
from protocol.signing import SigningKey
from protocol.topics import Kind, Topic

from ..agent.bundles import MNV1, coral_bundle
from ..hub.conftest import TOKEN, hub_config, wait_for
from ..hub.test_api import archive_of

# Beyond the 32-bit seqs the hub issues and accepts in reports: below that, the hub follows the
# seq a device reports and its next document is above the forgery anyway.
FAST_FORWARD = 2**62


def _publish(url_port: int, topic: str, payload: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="thief", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def test_s11_a_seq_fast_forwarded_with_a_stolen_online_key_is_undone_by_one_key_rotation(
    tmp_path: Path, keys_dir: Path, coral_models: Path, figure, make_agent_at, mosquitto
):
    pinned = tmp_path / "pinned-root.json"
    pinned.write_bytes((keys_dir / "root.json").read_bytes())
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url))
    hub.start()
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    agent = make_agent_at(mosquitto.url, "victim", trusted=pinned).start()
    bystander = make_agent_at(mosquitto.url, "bystander", trusted=pinned).start()
    try:

        def active(device: str = "victim") -> str | None:
            r = api.get(f"/api/v1/devices/{device}")
            return (r.json().get("active_bundle") or {}).get("digest") if r.status_code == 200 else None

        def reasons() -> list[str]:
            with hub.fleet.session() as s:
                return [
                    r.reason
                    for r in s.exec(
                        select(ReportRecord).where(ReportRecord.device == "victim", ReportRecord.stage == "verify")
                    )
                ]

        first = api.post("/api/v1/bundles", content=archive_of(coral_bundle(tmp_path / "a", coral_models, MNV1))).json()
        api.post("/api/v1/rollouts", json={"bundle": first["digest"], "target": {"all": True}})
        wait_for(
            lambda: active() == active("bystander") == first["digest"],
            timeout=90,
            what="the first bundle on both devices",
        )

        # the attack: a document far ahead, signed by the stolen online key
        stolen = HubKeys.load(keys_dir).online
        now = int(time.time())
        forged = Desired("victim", FAST_FORWARD, now, now + 3600, "idle", None).seal([stolen])
        _publish(mosquitto.port, str(Topic.for_device(Kind.DESIRED, "victim")), forged)
        trust = agent.state_dir / "trust.json"
        wait_for(
            lambda: trust.exists() and json.loads(trust.read_text())["desired_seq"] == FAST_FORWARD,
            what="the device to accept the fast-forwarded seq",
        )
        second = api.post(
            "/api/v1/bundles", content=archive_of(coral_bundle(tmp_path / "b", coral_models, MNV1, version="2"))
        ).json()
        rollout = api.post(
            "/api/v1/rollouts", json={"bundle": second["digest"], "target": {"devices": ["victim"]}}
        ).json()
        wait_for(lambda: "downgrade" in reasons(), what="the hub's real document refused as a downgrade")
        locked_out = active() == first["digest"]

        # recovery: the operator rotates the keys (as `edgefleet-hub keys rotate` does); the
        # running hub picks them up on its next tick
        old_root_keys = [SigningKey.from_pem(p.read_bytes()) for p in sorted(keys_dir.glob("root-[0-9].pem"))]
        hub_keys.rotate(keys_dir, old_root_keys)
        wait_for(lambda: active() == second["digest"], timeout=120, what="the second bundle after the rotation")
        wait_for(
            lambda: api.get(f"/api/v1/rollouts/{rollout['id']}").json()["phase"] == "completed",
            timeout=60,
            what="the rollout to complete",
        )
        recovered = json.loads(trust.read_text())["desired_seq"] < FAST_FORWARD

        # the stolen key is worth nothing now
        refused_before = reasons().count("unknown_key")
        _publish(mosquitto.port, str(Topic.for_device(Kind.DESIRED, "victim")), forged)
        wait_for(lambda: reasons().count("unknown_key") > refused_before, what="the replayed forgery refused")

        # the bystander's model was installed under the old key: the hub signed its manifest
        # again and the agent took it, so the model still verifies and serves after a restart
        slot = bystander.state_dir / "slots" / first["digest"] / "manifest.json"
        wait_for(
            lambda: HubKeys.load(keys_dir).online.keyid in slot.read_text(),
            timeout=30,
            what="the bystander's slot manifest signed by the new key",
        )
        bystander.stop()
        bystander.start()
        code, _ = bystander.http(
            "POST",
            "/v1/predict",
            np.zeros((1, 128, 128, 3), np.uint8).tobytes(),
            {"Content-Type": "application/octet-stream", "X-Tensor-Shape": "1,128,128,3", "X-Tensor-Dtype": "uint8"},
        )
        after_restart = code == 200 and active("bystander") == first["digest"]
    finally:
        hub.stop()
    figure(
        "S11",
        "seq fast-forwarded to 2^62 by a stolen online key; the hub's next rollout",
        "device locked out before the rotation",
        "yes" if locked_out else "no",
        "yes",
        locked_out,
    )
    figure(
        "S11",
        "the same, then one `edgefleet-hub keys rotate`",
        "operator steps to recover",
        1 if recovered else "not recovered",
        "1",
        recovered,
    )
    figure(
        "S11",
        "the same",
        "model installed under the old key serving after a restart",
        "yes" if after_restart else "no",
        "yes",
        after_restart,
    )
    assert locked_out and recovered and after_restart
