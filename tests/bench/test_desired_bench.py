"""``python -m bench desired`` end to end on a small fleet: every device the rollout names gets
its document, each verifies as an agent checks it, and the limit publishes the same bytes; a
document checked against another device's name is refused, so the verification counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RESULT = Path(__file__).resolve().parents[2] / "bench" / "results" / "desired.json"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
def test_every_named_device_gets_a_verified_document_and_the_limit_the_same_bytes():
    out = subprocess.run(
        [sys.executable, "-m", "bench", "desired", "--devices", "40", "--bundle-mb", "0.5"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads(RESULT.read_text())
    ours, limit = doc["cases"]
    assert ours["devices"] == 40 and ours["received"] == 40 and ours["verified"] == 40
    assert ours["hub_desired_bytes_published"] >= 40 * ours["document_bytes_median"] // 2
    assert limit["received"] == 40
    assert doc["ours"] == ours["seconds"] and doc["limit"] == limit["seconds"] and doc["baseline"] is None
    assert "desired documents published <= 10 s" in out.stdout


def test_a_document_verified_for_another_device_is_refused(tmp_path):
    from bench.desired import _verify
    from hub import keys
    from hub.config import HubConfig
    from hub.server import build
    from protocol.messages import Desired

    keys.init(tmp_path / "keys")
    hub = build(
        HubConfig(db=f"sqlite:///{tmp_path / 'h.db'}", keys=tmp_path / "keys", store=tmp_path / "store"),
        with_broker=False,
    )
    sealed = Desired(device="dev-a", seq=1, issued=0, expires=2**40, action="idle", bundle=None).seal(
        [hub.fleet.keys.online]
    )
    assert _verify({"dev-a": sealed}, tmp_path / "keys" / "root.json") == []
    bad = _verify({"dev-b": sealed}, tmp_path / "keys" / "root.json")
    assert len(bad) == 1 and bad[0].startswith("dev-b: ")
