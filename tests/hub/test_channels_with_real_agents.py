"""Model channels end to end (issue 18 part 1): the hub, one real ``edgefleet-agent`` process and
Mosquitto. Two rollouts on two channels (Coral's co-compiled MobileNet pair, each served by its
CPU twin here: this machine has no Edge TPU), both models serve on their local routes, the
device page and the API show the channels, and rolling one channel back leaves the other alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.server import build

from ..agent import bundles as agent_bundles
from .conftest import TOKEN, AgentProcess, hub_config, wait_for
from .test_api import archive_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CO_025 = "mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite"
CO_05 = "mobilenet_v1_0.5_160_quant_cocompiled_with_mobilenet_v1_0.25_128_quant_edgetpu.tflite"
POLICY = {"cohorts": ["100%"], "soak_s": 0}


def pair_member(coral: Path, out: Path, model: str, twin: str, name: str, version: str = "1") -> Path:
    return agent_bundles.coral_bundle(
        out, coral, model, name=name, version=version, role="tflite_edgetpu", edgetpu="optional", cpu_twin=twin
    )


def test_two_rollouts_on_two_channels_serve_side_by_side_and_roll_back_alone(
    tmp_path: Path, keys_dir: Path, mosquitto, coral_models: Path
):
    from demo.client import post_image

    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url, tick=0.3))
    hub.start()
    agent = AgentProcess.start(tmp_path / "agent", "pi-1", mosquitto.url, keys_dir)
    try:
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})

        def upload(model: str, twin: str, name: str, version: str = "1") -> str:
            src = pair_member(coral_models, tmp_path / f"{name}-{version}", model, twin, name, version)
            r = api.post("/api/v1/bundles", content=archive_of(src))
            assert r.status_code == 200, r.text
            return str(r.json()["digest"])

        small = upload(CO_025, agent_bundles.MNV1, "mnv1-025")
        large = upload(CO_05, "mobilenet_v1_0.5_160_quant.tflite", "mnv1-05")
        large2 = upload(CO_05, "mobilenet_v1_0.5_160_quant.tflite", "mnv1-05", "2")

        def device() -> dict[str, Any]:
            r = api.get("/api/v1/devices/pi-1")
            return r.json() if r.status_code == 200 else {}

        def on(channel: str) -> str | None:
            dev = device()
            if channel == "default":
                return (dev.get("active_bundle") or {}).get("digest")
            return ((dev.get("channels") or {}).get(channel, {}).get("active") or {}).get("digest")

        def rollout(digest: str, channel: str | None = None) -> str:
            body: dict[str, Any] = {"bundle": digest, "target": {"all": True}, "policy": POLICY}
            if channel:
                body["channel"] = channel
            r = api.post("/api/v1/rollouts", json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        def phase(rid: str) -> str:
            return str(api.get(f"/api/v1/rollouts/{rid}").json()["phase"])

        wait_for(lambda: device().get("online"), timeout=60, what="the agent online")
        r1 = rollout(small)
        wait_for(lambda: on("default") == small and phase(r1) == "completed", timeout=90, what="default installed")
        r2 = rollout(large, "second")
        wait_for(lambda: on("second") == large and phase(r2) == "completed", timeout=90, what="second installed")
        assert phase(r1) == "completed" and on("default") == small  # a rollout on another channel supersedes nothing
        rows1 = api.get(f"/api/v1/rollouts/{r1}").json()["devices"]
        assert [x["state"] for x in rows1] == ["installed"]
        assert api.get(f"/api/v1/rollouts/{r2}").json()["channel"] == "second"

        port = agent.port()
        cat = (coral_models / "cat_720p.jpg").read_bytes()

        def served(path: str) -> str:
            out = post_image(f"http://127.0.0.1:{port}{path}", cat, timeout=30)
            assert "cat" in out["top"][0]["label"], out
            return str(out["bundle"]["digest"])

        assert served("/v1/predict") == small
        assert served("/v1/models/second/predict") == large

        # the dashboard's device page and rollout page name the channel
        page = api.get("/ui/devices/pi-1").text
        assert 'data-channel="second"' in page and "mnv1-05@1" in page
        assert 'data-channel="second"' in api.get(f"/ui/rollouts/{r2}").text

        # the second channel moves to v2, then that rollout is rolled back: the default stays
        r3 = rollout(large2, "second")
        wait_for(lambda: on("second") == large2 and phase(r3) == "completed", timeout=90, what="second on v2")
        assert served("/v1/models/second/predict") == large2
        assert api.post(f"/api/v1/rollouts/{r3}/rollback").status_code == 200
        wait_for(lambda: on("second") == large, timeout=90, what="second rolled back")
        assert served("/v1/models/second/predict") == large
        assert served("/v1/predict") == small and on("default") == small
        assert phase(r1) == "completed"
        assert agent.proc.alive, "the agent died"
    finally:
        agent.stop()
        hub.stop()
