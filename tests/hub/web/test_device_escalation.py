"""The device page and the device API show the agent's escalations to the cloud by confidence
(``escalation_*`` counts of its telemetry windows, summed over the recent ones)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from hub.server import Hub
from hub.transport import MemoryPublisher
from protocol.messages import Telemetry
from protocol.sketch import LatencySketch

from ..conftest import VIEWER
from ..helpers import status
from .test_dashboard import session_for


def window(seq: int, **escalation: int) -> bytes:
    sk = LatencySketch()
    for _ in range(10):
        sk.add(0.02)
    start = int(time.time()) - 100 + seq * 10
    return Telemetry(
        device="pi-1",
        seq=seq,
        window_start=start,
        window_end=start + 10,
        counts={"inferences": 10, "errors": 0, "tpu": 0, "cpu": 10, "cloud": 0, **escalation},
        latency=sk.to_dict(),
    ).to_bytes()


def test_escalations_over_recent_windows_show_on_the_device_page_and_in_the_api(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1"))])
    hub.ingest.handle(
        [
            ("ef/v1/dev/pi-1/telemetry", window(1, escalated=4, escalation_failed=2)),
            ("ef/v1/dev/pi-1/telemetry", window(2, escalation_breaker_open=7, escalation_budget=1)),
        ]
    )
    page = session_for(hub, VIEWER).get("/ui/devices/pi-1").text
    assert "data-escalation" in page
    assert "4 answered by the cloud · 2 failed or timed out · 7 kept local, breaker open" in page
    assert "1 kept local, over budget" in page
    doc = TestClient(hub.app, headers={"Authorization": f"Bearer {VIEWER}"}).get("/api/v1/devices/pi-1").json()
    assert doc["escalation"] == {
        "escalated": 4,
        "escalation_failed": 2,
        "escalation_breaker_open": 7,
        "escalation_budget": 1,
    }


def test_a_device_that_never_escalated_shows_no_escalation_row(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/pi-1/status", status("pi-1"))])
    hub.ingest.handle([("ef/v1/dev/pi-1/telemetry", window(1))])
    assert "data-escalation" not in session_for(hub, VIEWER).get("/ui/devices/pi-1").text
    doc = TestClient(hub.app, headers={"Authorization": f"Bearer {VIEWER}"}).get("/api/v1/devices/pi-1").json()
    assert doc["escalation"] is None
