"""Issue 5's headline scenario with real agent processes: the hub's gates stop a much slower
model at the canary and roll it back; a good model then reaches every device.

Real parts: Mosquitto, the hub (bridge + ticker, in this process), three ``edgefleet-agent``
subprocesses serving the compiler's digits CNN, the Coral MobileNetV2-224 as the "slow model"
(~100x the digits latency on a CPU), inference requests through each agent's local API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hub.server import build
from protocol.bundle import MANIFEST_FILE, Artifact, parse_manifest
from protocol.signing import Envelope, seal

from ..agent import bundles as agent_bundles
from ..conftest import REPO
from .conftest import TOKEN, hub_config, wait_for
from .test_api import archive_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]
POLICY = {
    "cohorts": ["1", "100%"],
    "soak_s": 0,
    "on_breach": "rollback",
    "require_samples": True,
    # 3x, not 1.5x: the digits CNN answers in ~1.5 ms, where a busy moment on a 2-core machine
    # doubled a good build's p95 once (3.60 vs 1.51 ms) and rolled it back; MobileNetV2, the slow
    # model, is tens of times slower, so the gate still has to stop it
    "gates": {"max_p95_ratio": 3.0, "min_samples": 30},
}


def coral_bundle(coral: Path, out: Path) -> Path:
    """MobileNetV2-224 (uint8) as a bundle directory with its own self-test vector, no drift
    baseline: this model must be stopped by latency alone."""
    return agent_bundles.coral_bundle(
        out, coral, agent_bundles.MNV2, name="slow-mobilenet", version="9.0.0", baseline=False
    )


def new_version(src: Path, out: Path, version: str, skew_outputs: bool = False) -> Path:
    """The same build under another version: same bytes, a new content address. With
    ``skew_outputs`` its validation baseline says the model answers "0" nine times in ten, so
    what it really answers on live traffic (every digit) is output drift against its own
    baseline: a model whose outputs do not match what it was validated to produce."""
    shutil.copytree(src, out)
    env = Envelope.parse((src / MANIFEST_FILE).read_bytes())
    doc = json.loads(env.payload)
    doc["version"] = version
    if skew_outputs:
        base = json.loads((out / "baseline.json").read_text())
        ref = base["outputs"]["top1_class"]["ref"]
        total = sum(ref)
        base["outputs"]["top1_class"]["ref"] = [int(total * 0.9)] + [max(1, total // 90)] * (len(ref) - 1)
        (out / "baseline.json").write_text(json.dumps(base))
        doc["artifacts"] = [
            Artifact.of(a["name"], a["role"], (out / a["name"]).read_bytes()).to_dict() for a in doc["artifacts"]
        ]
    parse_manifest(json.dumps(doc).encode())
    (out / MANIFEST_FILE).write_bytes(seal("manifest", doc, []).to_bytes())
    return out


def test_slow_model_is_stopped_at_the_canary_by_real_latency_and_a_good_one_goes_everywhere(
    tmp_path: Path, keys_dir: Path, mosquitto, digits_bundle: Path, coral_models: Path
):
    from sklearn.datasets import load_digits

    from demo.client import png_bytes, post_image

    # live traffic drawn like the data the baseline was built from: every digit, shuffled
    data = load_digits().images
    order = np.random.default_rng(0).permutation(len(data))[:400]
    images = [png_bytes(np.round(data[i] * 255 / 16).astype(np.uint8)) for i in order]
    sent = [0]
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url, tick=0.3))
    hub.start()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    names = ["agent-a", "agent-b", "agent-c"]
    try:
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        v1 = api.post("/api/v1/bundles", content=archive_of(digits_bundle)).json()
        slow = api.post("/api/v1/bundles", content=archive_of(coral_bundle(coral_models, tmp_path / "slow"))).json()
        good = api.post(
            "/api/v1/bundles", content=archive_of(new_version(digits_bundle, tmp_path / "good", "1.0.1-good"))
        ).json()
        drifty = api.post(
            "/api/v1/bundles",
            content=archive_of(new_version(digits_bundle, tmp_path / "drifty", "1.0.2-drifty", skew_outputs=True)),
        ).json()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for n in names:
            d = tmp_path / n
            d.mkdir()
            (d / "agent.toml").write_text(
                f'device_id = "{n}"\nbroker = "{mosquitto.url}"\nstate_dir = "{d / "state"}"\n'
                f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\ntelemetry_interval_s = 0.5\n'
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
            return api.get(f"/api/v1/devices/{n}").json() if api.get(f"/api/v1/devices/{n}").status_code == 200 else {}

        def active(n: str) -> str | None:
            return ((device(n).get("active_bundle")) or {}).get("digest")

        wait_for(lambda: all(device(n).get("online") for n in names), timeout=60, what="three agents online")
        api.post("/api/v1/rollouts", json={"bundle": v1["digest"], "target": {"all": True}})
        wait_for(lambda: all(active(n) == v1["digest"] for n in names), timeout=90, what="v1 on every agent")
        ports = {
            n: int(
                wait_for(
                    lambda n=n: (
                        (tmp_path / n / "state" / "http.port").exists()
                        and (tmp_path / n / "state" / "http.port").read_text().strip()
                    ),
                    what=f"{n} port",
                )
            )
            for n in names
        }

        def traffic(k: int = 5) -> None:
            for n in names:
                for _ in range(k):
                    sent[0] += 1
                    post_image(f"http://127.0.0.1:{ports[n]}/v1/predict", images[sent[0] % len(images)], timeout=30)

        for _ in range(10):
            traffic()
        wait_for(
            lambda: all(device(n)["telemetry"]["inferences"] >= 50 for n in names),
            timeout=30,
            what="v1 latency history",
        )

        # the slow model: halted at the canary, rolled back by the gates
        rid = api.post(
            "/api/v1/rollouts", json={"bundle": slow["digest"], "target": {"all": True}, "policy": POLICY}
        ).json()["id"]

        def rolled_back() -> dict[str, Any] | None:
            traffic(3)
            st = api.get(f"/api/v1/rollouts/{rid}").json()
            return st if st["phase"] == "rolled_back" else None

        st = wait_for(rolled_back, timeout=120, what="the gates rolling the slow model back")
        assert "p95_latency_ratio" in st["reason"], st["reason"]
        canary = [d["device_id"] for d in st["devices"] if d["cohort"] == 0][0]
        others = [n for n in names if n != canary]
        assert st["counts"].get("cancelled") == 2
        wait_for(lambda: active(canary) == v1["digest"], timeout=60, what="canary back on v1")
        assert all(active(n) == v1["digest"] for n in others)
        gate = next(g for g in st["gates"] if g["name"] == "p95_latency_ratio")
        print(f"\nslow canary: {gate['detail']} (ratio {gate['value']:.0f}x > {gate['limit']})")

        # the drifting model: latency is fine, its outputs are not what it was validated on
        rid_d = api.post(
            "/api/v1/rollouts", json={"bundle": drifty["digest"], "target": {"all": True}, "policy": POLICY}
        ).json()["id"]

        def drift_rolled_back() -> dict[str, Any] | None:
            traffic(5)
            st = api.get(f"/api/v1/rollouts/{rid_d}").json()
            return st if st["phase"] == "rolled_back" else None

        st = wait_for(drift_rolled_back, timeout=180, what="the drift gate rolling the drifting model back")
        assert "drift" in st["reason"] and "outputs.top1_class" in st["reason"], st["reason"]
        print(f"drifting canary: {st['reason']}")
        canary = [d["device_id"] for d in st["devices"] if d["cohort"] == 0][0]
        wait_for(lambda: active(canary) == v1["digest"], timeout=60, what="drift canary back on v1")
        assert all(active(n) == v1["digest"] for n in names)

        # the good model: every cohort, every device
        rid2 = api.post(
            "/api/v1/rollouts", json={"bundle": good["digest"], "target": {"all": True}, "policy": POLICY}
        ).json()["id"]

        def completed() -> dict[str, Any] | None:
            traffic(3)
            st = api.get(f"/api/v1/rollouts/{rid2}").json()
            assert st["phase"] in ("running", "completed"), (st["phase"], st["reason"], st["gates"], st["devices"])
            return st if st["phase"] == "completed" else None

        st = wait_for(completed, timeout=180, what="the good model through both cohorts")
        assert st["counts"] == {"installed": 3}
        assert all(active(n) == good["digest"] for n in names)
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
