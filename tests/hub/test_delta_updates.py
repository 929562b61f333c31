"""Delta updates end to end (issue 18 part 5): a real hub, real Mosquitto, a real
``edgefleet-agent`` process, the digits model in three real builds (bench/_delta_models.py).

v1 (base) is installed in full; v2 (head retrained) is rolled out and arrives as a delta from v1:
the agent fetches a small fraction of the archive, patches its active slot, verifies the result
against v2's signed hashes and switches. v3 (fine-tuned) is then rolled out with a delta the hub
got wrong (made from bytes that are not v3's archive: the cached delta file replaced): every
patched chunk that does not match v3's signed chunk hashes is refused, the agent falls back to
full chunks for those, reports why, and v3 still installs verified. The agent does not announce
device views here (``device_view = false``): the hub sends it full archives and deltas between
them, as to an agent from before views (tests/hub/test_delta_views.py has the device-view path)."""

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
from hub.deltas import make
from hub.server import build
from protocol.delta import reference

from ..conftest import REPO
from .conftest import TOKEN, hub_config, wait_for
from .test_api import archive_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_retrained_head_installs_as_a_delta_and_a_wrong_delta_falls_back_to_full_chunks(
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
            f'device_id = "dev-delta"\nbroker = "{mosquitto.url}"\nstate_dir = "{d / "state"}"\n'
            f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\nfetch_repair_s = 2.0\n'
            "device_view = false\n"  # full archives, as an agent from before device views (test_delta_views.py: views)
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(d / "agent.toml")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def device() -> dict[str, Any]:
            r = api.get("/api/v1/devices/dev-delta")
            return r.json() if r.status_code == 200 else {}

        def active() -> str | None:
            return ((device().get("active_bundle")) or {}).get("digest")

        def text() -> str:
            return log_path.read_text(errors="replace")

        wait_for(lambda: device().get("online"), timeout=60, what="agent online")
        api.post("/api/v1/rollouts", json={"bundle": pushed["base"]["digest"], "target": {"all": True}})
        wait_for(lambda: active() == pushed["base"]["digest"], timeout=90, what="v1 installed in full")
        assert "delta" not in text().lower() or "applied" not in text()

        # v2: the retrained head, as a delta from v1
        api.post("/api/v1/rollouts", json={"bundle": pushed["head"]["digest"], "target": {"all": True}})
        wait_for(lambda: active() == pushed["head"]["digest"], timeout=90, what="v2 installed")
        m = re.search(r"delta [0-9a-f]{12} applied: (\d+) bytes fetched for a (\d+)-byte archive", text())
        assert m, text()[-3000:]
        fetched, full = int(m[1]), int(m[2])
        assert full == pushed["head"]["size"] and fetched < full // 10, (fetched, full)
        assert "fetching full chunks" not in text()
        print(f"\nv2 as a delta: {fetched} bytes fetched for a {full}-byte archive ({100 * fetched / full:.1f} %)")

        # v3: the hub's cached delta is of other bytes than v3's archive (one byte in each 4 kB)
        store = hub.fleet.store
        head, fine = pushed["head"]["digest"], pushed["finetune"]["digest"]
        target = bytearray(store.archive(pushed["finetune"]["archive_sha256"]))
        for i in range(100, len(target), 4096):
            target[i] ^= 0x01
        base_manifest = store.manifest(head)
        wrong = make(reference(base_manifest, lambda a: store.artifact(head, a.name) or b""), bytes(target))
        (store.root / "deltas").mkdir(exist_ok=True)
        for suffix in ("", ".m2"):  # the hub's cache for agents without and with zstd-members-2
            (store.root / "deltas" / f"{pushed['finetune']['archive_sha256']}-{head}{suffix}.zst").write_bytes(wrong)
        api.post("/api/v1/rollouts", json={"bundle": fine, "target": {"all": True}})
        wait_for(lambda: active() == fine, timeout=120, what="v3 installed after the fallback")
        assert "delta not usable (mismatch)" in text(), text()[-3000:]
        assert re.search(r"installed|committed", text())
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
