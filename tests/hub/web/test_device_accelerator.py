"""The device page and the device API show the agent's Edge TPU state (``Telemetry.accelerator``)
and its data usage today (``Telemetry.usage``) from the newest telemetry window."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from hub.server import Hub
from hub.transport import MemoryPublisher
from protocol.messages import Accelerator, Telemetry
from protocol.sketch import LatencySketch

from ..conftest import VIEWER
from ..helpers import status
from .test_dashboard import session_for

USAGE = {"day": 20425, "bundle": 3_145_728, "telemetry": 40_960, "report": 2048, "budget": 10_485_760}


def window(seq: int, accelerator: Accelerator | None, usage: dict[str, object] | None = None) -> bytes:
    """A 10 s window of 4 inferences, 3 of them on the CPU after a failover."""
    sk = LatencySketch()
    for _ in range(4):
        sk.add(0.02)
    start = int(time.time()) - 100 + seq * 10
    return Telemetry(
        device="pi-1",
        seq=seq,
        window_start=start,
        window_end=start + 10,
        counts={"inferences": 4, "errors": 0, "tpu": 1, "cpu": 3, "cloud": 0},
        latency=sk.to_dict(),
        accelerator=accelerator,
        usage=usage or {},
    ).to_bytes()


def test_a_tpu_failover_shows_on_the_device_page_and_in_the_api(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1"))])
    usage = {**USAGE, "left": 10_485_760 - 3_188_736, "rate_bytes_s": 65536}
    hub.ingest.handle(
        [
            ("ef/v1/dev/pi-1/telemetry", window(1, Accelerator("tpu", None, 0, 41.5))),
            ("ef/v1/dev/pi-1/telemetry", window(2, Accelerator("cpu", "timeout", 2, "invalid"), usage)),
        ]
    )
    page = session_for(hub, VIEWER).get("/ui/devices/pi-1").text
    assert 'data-accelerator="cpu"' in page
    assert "failed over from the Edge TPU: timeout" in page and "2 failovers since the model loaded" in page
    assert "invalid reading" in page and "41.5" not in page  # the newest window's, not an older one's
    assert "3.0 MiB of 10.0 MiB budget (7.0 MiB left)" in page and "capped at 64.0 KiB/s" in page
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {VIEWER}"}).get("/api/v1/devices/pi-1")
    assert api.status_code == 200, api.text
    doc = api.json()
    assert doc["accelerator"] == {"runtime": "cpu", "reason": "timeout", "failovers": 2, "temp_c": "invalid"}
    assert doc["usage"]["budget"] == 10_485_760 and doc["usage"]["left"] == 7_297_024


def test_a_healthy_tpu_shows_its_temperature_and_no_failover(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1"))])
    hub.ingest.handle([("ef/v1/dev/pi-1/telemetry", window(1, Accelerator("tpu", None, 0, 41.5), USAGE))])
    page = session_for(hub, VIEWER).get("/ui/devices/pi-1").text
    assert 'data-accelerator="tpu"' in page and "41.5 °C" in page
    assert "failed over" not in page and "failovers" not in page
    assert "(no daily budget)" not in page and "3.0 MiB of 10.0 MiB budget" in page


def test_a_device_without_an_edge_tpu_shows_no_accelerator_row(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1"))])
    hub.ingest.handle([("ef/v1/dev/pi-1/telemetry", window(1, None, {"day": 1, "bundle": 0, "telemetry": 900}))])
    page = session_for(hub, VIEWER).get("/ui/devices/pi-1").text
    assert "data-accelerator" not in page and "Edge TPU temperature" not in page
    assert "(no daily budget)" in page
    doc = TestClient(hub.app, headers={"Authorization": f"Bearer {VIEWER}"}).get("/api/v1/devices/pi-1").json()
    assert doc["accelerator"] is None and doc["usage"]["telemetry"] == 900
