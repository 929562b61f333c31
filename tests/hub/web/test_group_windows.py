"""The dashboard shows each group's maintenance window (fleet page) and, on a rollout's page,
the devices waiting for their window and when it opens."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from hub.server import Hub
from hub.transport import MemoryPublisher

from ..conftest import TOKEN
from ..helpers import status
from ..test_api import push
from .test_dashboard import session_for


def test_the_fleet_page_shows_group_windows_and_the_rollout_page_who_waits_for_one(
    memhub: tuple[Hub, MemoryPublisher], bundle_dir: Any
) -> None:
    hub, _ = memhub
    api = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d)) for d in ("cam-n", "cam-d")])
    api.patch("/api/v1/devices/cam-n", json={"group": "night"})
    api.patch("/api/v1/devices/cam-d", json={"group": "day"})
    start = time.gmtime(time.time() + 7200)
    spec = f"days=* start={start.tm_hour:02}:{start.tm_min:02} duration=1h"
    opens = api.put("/api/v1/groups/night/window", json={"spec": spec, "tz": "Asia/Tokyo"}).json()["window"]["opens_at"]
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(opens))

    ui = session_for(hub, TOKEN)
    fleet = ui.get("/ui").text
    assert '<tr data-group="night">' in fleet and f"<code>{spec}</code>" in fleet and "Asia/Tokyo" in fleet
    assert "closed</span> opens" in fleet and when in fleet
    assert '<tr data-group="day">' in fleet and "none: installs at any time" in fleet

    rid = api.post("/api/v1/rollouts", json={"bundle": push(api, bundle_dir())["digest"], "target": {"all": True}})
    page = ui.get(f"/ui/rollouts/{rid.json()['id']}").text
    waiting = page[page.index('id="rollout-waiting"') : page.index('id="h-rdev"')]
    assert '<tr data-device="cam-n">' in waiting and "<td>night</td>" in waiting and when in waiting
    assert "cam-d" not in waiting
    assert 'class="pill state-waiting">waiting</span>' in page
