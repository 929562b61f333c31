"""Device views end to end (protocol.view, hub.views): a real hub, real Mosquitto and a real
``edgefleet-agent`` process that announces device views, the digits model in three real builds
(bench/_delta_models.py). v1 is installed from its device view (no float reference, no ONNX twin,
no report or model card: a fraction of the full archive's bytes), v2 (head retrained) arrives as
a delta between the two views, v3 (fine-tuned) too; every install is the same bundle (digest) as
the full archive, verified against the same signed manifest. The bytes fetched are printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench._delta_models import bundles as delta_bundles
from hub import views
from hub.models import Bundle
from hub.server import build

from ..conftest import REPO
from .conftest import TOKEN, hub_config, wait_for
from .test_api import archive_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_view_agent_installs_views_and_takes_updates_as_deltas_between_views(
    tmp_path: Path, keys_dir: Path, mosquitto
):
    variants = delta_bundles()  # TensorFlow training and three builds the first time (cached)
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url, tick=0.3))
    hub.start()
    proc = None
    log_path = tmp_path / "agent.log"
    log = open(log_path, "wb")
    try:
        api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
        pushed = {v: api.post("/api/v1/bundles", content=archive_of(p)).json() for v, p in variants.items()}
        d = tmp_path / "dev"
        d.mkdir()
        (d / "agent.toml").write_text(
            f'device_id = "dev-view"\nbroker = "{mosquitto.url}"\nstate_dir = "{d / "state"}"\n'
            f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\nfetch_repair_s = 2.0\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(d / "agent.toml")],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def device() -> dict[str, Any]:
            r = api.get("/api/v1/devices/dev-view")
            return r.json() if r.status_code == 200 else {}

        def active() -> str | None:
            return ((device().get("active_bundle")) or {}).get("digest")

        def text() -> str:
            return log_path.read_text(errors="replace")

        def view_size(version: str) -> int:
            with hub.fleet.session() as s:
                b = s.get(Bundle, pushed[version]["digest"])
                v = views.of(hub.fleet, b) if b is not None else None
            assert v is not None
            return v.plan.size

        wait_for(lambda: "device_view" in (device().get("inventory") or {}).get("features", []), 60, "features")
        api.post("/api/v1/rollouts", json={"bundle": pushed["base"]["digest"], "target": {"all": True}})
        wait_for(lambda: active() == pushed["base"]["digest"], timeout=90, what="v1 installed from its view")
        m = re.search(r"download of [0-9a-f]{12} complete: (\d+) chunks, (\d+) bytes received", text())
        assert m, text()[-3000:]
        full1, view1, got1 = pushed["base"]["size"], view_size("base"), int(m[2])
        assert view1 <= got1 < full1 // 3, (got1, view1, full1)  # chunks repaired twice count twice
        slot = d / "state" / "slots" / pushed["base"]["digest"]
        assert not [p for p in slot.iterdir() if p.suffix in (".onnx", ".md")], sorted(p.name for p in slot.iterdir())
        print(f"\nv1 from its device view: {got1} bytes fetched, full archive {full1} ({100 * got1 / full1:.1f} %)")

        for version, what in (("head", "v2 (head retrained)"), ("finetune", "v3 (fine-tune)")):
            before = len(re.findall(r"delta [0-9a-f]{12} applied", text()))
            api.post("/api/v1/rollouts", json={"bundle": pushed[version]["digest"], "target": {"all": True}})
            want = pushed[version]["digest"]
            wait_for(lambda w=want: active() == w, timeout=120, what=f"{what} installed")
            applied = re.findall(r"delta [0-9a-f]{12} applied: (\d+) bytes fetched for a (\d+)-byte archive", text())
            assert len(applied) == before + 1, text()[-3000:]
            fetched, size = int(applied[-1][0]), int(applied[-1][1])
            full = pushed[version]["size"]
            assert size == view_size(version) < full // 3, (size, full)
            assert fetched < size // 2, (fetched, size)
            print(
                f"{what} as a delta between views: {fetched} bytes fetched, "
                f"{100 * fetched / size:.2f} % of its {size}-byte view, {100 * fetched / full:.2f} % of the "
                f"{full}-byte full archive"
            )
        assert "fetching full chunks" not in text()
        assert proc.poll() is None, "the agent died"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        hub.stop()
