"""Maintenance windows and an app's hold, end to end: Mosquitto, the hub (bridge + ticker, in
this process) and two ``edgefleet-agent`` processes serving the digits CNN, in two groups.

One rollout of v2: the 'night' group's window is closed, so its agent waits (told nothing,
not failed) while the app on the 'day' agent holds the update through the local API (the hub
shows "held by app until ..."); the app lets go and the day agent switches; the operator opens
the night window through the API and the rollout completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.server import build

from ..conftest import REPO
from .conftest import TOKEN, hub_config, wait_for
from .test_api import archive_of
from .test_real_agents import new_version

pytestmark = pytest.mark.integration
NAMES = {"agent-day": "day", "agent-night": "night"}


def local(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_a_closed_window_waits_an_app_hold_delays_and_both_end_in_a_completed_rollout(
    tmp_path: Path, keys_dir: Path, mosquitto, digits_bundle: Path
):
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url, tick=0.3))
    hub.start()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    try:
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        v1 = api.post("/api/v1/bundles", content=archive_of(digits_bundle)).json()
        v2 = api.post(
            "/api/v1/bundles", content=archive_of(new_version(digits_bundle, tmp_path / "v2", "2.0.0"))
        ).json()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for n in NAMES:
            d = tmp_path / n
            d.mkdir()
            (d / "agent.toml").write_text(
                f'device_id = "{n}"\nbroker = "{mosquitto.url}"\nstate_dir = "{d / "state"}"\n'
                f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\ntelemetry_interval_s = 1\n'
            )
            logs.append(open(d / "log", "wb"))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "agent", "run", "--config", str(d / "agent.toml")],
                    cwd=REPO,
                    env=env,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                )
            )

        def device(n: str) -> dict[str, Any]:
            r = api.get(f"/api/v1/devices/{n}")
            return r.json() if r.status_code == 200 else {}

        def active(n: str) -> str | None:
            return (device(n).get("active_bundle") or {}).get("digest")

        wait_for(lambda: all(device(n).get("online") for n in NAMES), timeout=60, what="both agents online")
        for n, g in NAMES.items():
            assert api.patch(f"/api/v1/devices/{n}", json={"group": g}).status_code == 200
        api.post("/api/v1/rollouts", json={"bundle": v1["digest"], "target": {"all": True}})
        wait_for(lambda: all(active(n) == v1["digest"] for n in NAMES), timeout=90, what="v1 on both agents")
        port = int((tmp_path / "agent-day" / "state" / "http.port").read_text())

        start = time.gmtime(time.time() + 7200)  # a daily hour that is two hours away: closed throughout
        closed = {"spec": f"start={start.tm_hour:02}:{start.tm_min:02} duration=1h", "tz": "UTC"}
        assert api.put("/api/v1/groups/night/window", json=closed).json()["window"]["open"] is False
        held = local(port, "POST", "/v1/update/hold", {"minutes": 10, "reason": "calibrating the camera"})
        assert held["held"] is True
        night_seq = device("agent-night")["desired"]["seq"]

        rid = api.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}}).json()["id"]

        def rows() -> dict[str, dict[str, Any]]:
            return {d["device_id"]: d for d in api.get(f"/api/v1/rollouts/{rid}").json()["devices"]}

        day = wait_for(
            lambda: rows()["agent-day"]["reason"].startswith("held by app until") and rows()["agent-day"],
            timeout=90,
            what="the hub showing the app's hold",
        )
        assert day["state"] == "installing" and day["reason"].endswith(": calibrating the camera")
        assert active("agent-day") == v1["digest"]  # downloaded and tested, not switched to
        st = api.get(f"/api/v1/rollouts/{rid}").json()
        assert rows()["agent-night"]["state"] == "waiting" and st["phase"] == "running"
        [w] = st["waiting"]
        assert w["device_id"] == "agent-night" and w["group"] == "night" and w["opens_at"] > time.time() + 3000
        assert device("agent-night")["desired"]["seq"] == night_seq  # told nothing

        assert local(port, "DELETE", "/v1/update/hold")["held"] is False
        wait_for(lambda: active("agent-day") == v2["digest"], timeout=60, what="the day agent on v2 once released")
        wait_for(lambda: rows()["agent-day"]["state"] == "installed", timeout=30, what="the day agent installed")
        st = api.get(f"/api/v1/rollouts/{rid}").json()
        assert st["phase"] == "running" and st["counts"] == {"installed": 1, "waiting": 1}
        assert active("agent-night") == v1["digest"]

        always = {"spec": "days=* start=00:00 duration=24h", "tz": "Europe/Berlin"}
        assert api.put("/api/v1/groups/night/window", json=always).json()["window"]["open"] is True
        st = wait_for(
            lambda: (s := api.get(f"/api/v1/rollouts/{rid}").json())["phase"] == "completed" and s,
            timeout=90,
            what="the rollout completing once the night window opened",
        )
        assert st["counts"] == {"installed": 2} and st["waiting"] == []
        assert all(active(n) == v2["digest"] for n in NAMES)
        assert all(p.poll() is None for p in procs), "an agent died"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in logs:
            f.close()
        hub.stop()
