"""Rollout stages on a model channel other than ``default`` (issue 18 parts 1 and 2), end to end:
Mosquitto, the hub (bridge + ticker, in this process) and one ``edgefleet-agent`` process.

The device serves the digits CNN on its ``second`` channel only. A rollout of a new digits
version on ``second`` with ``benchmark`` then ``shadow`` stages: the hub sends the stage
documents in the channel's entry, the agent benchmarks the candidate beside what the channel
serves and runs it as a shadow on the requests sent to ``/v1/models/second/predict``; the hub
gates on those figures, then installs it on ``second``. The default channel never gets an entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hub.server import build

from .conftest import TOKEN, AgentProcess, hub_config, wait_for
from .test_api import archive_of
from .test_real_agents import new_version
from .test_stages_with_real_agents import POLICY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_benchmark_and_shadow_stages_on_a_second_channel_gate_and_install_only_there(
    tmp_path: Path, keys_dir: Path, mosquitto, digits_bundle: Path
):
    from sklearn.datasets import load_digits

    from demo.client import png_bytes, post_image

    data = load_digits().images
    images = [png_bytes(np.round(data[i] * 255 / 16).astype(np.uint8)) for i in range(100)]
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url, tick=0.3))
    hub.start()
    agent = AgentProcess.start(tmp_path / "agent", "dev-ch", mosquitto.url, keys_dir)
    try:
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        v1 = api.post("/api/v1/bundles", content=archive_of(digits_bundle)).json()
        good = api.post(
            "/api/v1/bundles", content=archive_of(new_version(digits_bundle, tmp_path / "good", "1.0.1-good"))
        ).json()

        def device() -> dict[str, Any]:
            r = api.get("/api/v1/devices/dev-ch")
            return r.json() if r.status_code == 200 else {}

        def on_second() -> str | None:
            return (((device().get("channels") or {}).get("second") or {}).get("active") or {}).get("digest")

        wait_for(lambda: device().get("online"), timeout=60, what="the agent online")
        first = {"bundle": v1["digest"], "target": {"devices": ["dev-ch"]}, "channel": "second"}
        assert api.post("/api/v1/rollouts", json=first).status_code == 201
        wait_for(lambda: on_second() == v1["digest"], timeout=90, what="v1 on the second channel")
        port = agent.port()
        sent = [0]

        staged = {**first, "bundle": good["digest"], "policy": POLICY}
        r = api.post("/api/v1/rollouts", json=staged)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

        def completed() -> dict[str, Any] | None:
            for _ in range(4):  # requests on the channel's route: the shadow stage's samples
                sent[0] += 1
                out = post_image(
                    f"http://127.0.0.1:{port}/v1/models/second/predict", images[sent[0] % len(images)], timeout=30
                )
                assert out["bundle"]["digest"] in (v1["digest"], good["digest"]), out
            st: dict[str, Any] = api.get(f"/api/v1/rollouts/{rid}").json()
            assert st["phase"] in ("running", "completed"), (st["phase"], st["reason"], st["devices"])
            return st if st["phase"] == "completed" else None

        st = wait_for(completed, timeout=240, what="the candidate through both stages on the second channel")
        assert st["channel"] == "second" and st["counts"] == {"installed": 1}, st["counts"]
        (dev,) = st["devices"]
        bench, shadow = dev["stages"]["benchmark"], dev["stages"]["shadow"]
        assert bench["state"] == "pass" and bench["figures"]["candidate"]["n"] == 50, bench
        assert shadow["state"] == "pass" and shadow["figures"]["samples"] >= 20, shadow
        assert on_second() == good["digest"]
        assert device().get("active_bundle") is None  # the default channel was never touched
        assert agent.proc.alive, "the agent died"
    finally:
        agent.stop()
        hub.stop()
