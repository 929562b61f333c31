"""Maintenance windows per group through the API, over a real SQLite registry and the rollout
shell: a closed window holds a group's devices back (waiting, with when it opens), opening it
issues them; an app's hold on a device shows on the rollout."""

from __future__ import annotations

import time

from hub import ticker
from protocol.messages import Hold, Report

from .helpers import report, status
from .test_api import push


def closed_now() -> dict[str, str]:
    """A daily one-hour window starting two hours from now (UTC): closed for the whole test."""
    start = time.gmtime(time.time() + 7200)
    return {"spec": f"start={start.tm_hour:02}:{start.tm_min:02} duration=1h", "tz": "UTC"}


ALWAYS = {"spec": "days=* start=00:00 duration=24h", "tz": "Europe/Berlin"}


def two_groups(hub, client, bundle_dir) -> dict:
    """d-night in group 'night', d-day in group 'day', both running v1; v2 pushed."""
    v1 = push(client, bundle_dir(version="1.0.0"))
    hub.ingest.handle(
        [(f"ef/v1/dev/{d}/status", status(d, active=(v1["digest"], "digits", "1.0.0"))) for d in ("d-night", "d-day")]
    )
    client.patch("/api/v1/devices/d-night", json={"group": "night"})
    client.patch("/api/v1/devices/d-day", json={"group": "day"})
    return push(client, bundle_dir(version="2.0.0"))


def test_a_closed_window_holds_its_group_back_until_it_is_opened(client, memhub, bundle_dir):
    hub, pub = memhub
    r = client.put("/api/v1/groups/night/window", json=closed_now())
    assert r.status_code == 200, r.text
    assert r.json()["window"]["open"] is False and r.json()["window"]["opens_at"] > time.time()
    v2 = two_groups(hub, client, bundle_dir)
    rid = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}}).json()["id"]
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    by = {d["device_id"]: d for d in st["devices"]}
    assert by["d-day"]["state"] == "issued" and by["d-night"]["state"] == "waiting"
    assert by["d-night"]["reason"].startswith("waiting for window (opens at ")
    assert "ef/v1/dev/d-night/desired" not in pub.retained  # told nothing
    [w] = st["waiting"]
    assert w["device_id"] == "d-night" and w["group"] == "night" and w["opens_at"] > time.time()

    hub.ingest.handle([("ef/v1/dev/d-day/report", report("d-day", 1, by["d-day"]["seq"], bundle=v2["digest"]))])
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["phase"] == "running" and st["counts"] == {"installed": 1, "waiting": 1}

    client.put("/api/v1/groups/night/window", json=ALWAYS)  # the operator opens it: issued at once
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    night = next(d for d in st["devices"] if d["device_id"] == "d-night")
    assert night["state"] == "issued" and st["waiting"] == []
    assert "ef/v1/dev/d-night/desired" in pub.retained
    hub.ingest.handle([("ef/v1/dev/d-night/report", report("d-night", 1, night["seq"], bundle=v2["digest"]))])
    ticker.tick(hub.fleet)
    assert client.get(f"/api/v1/rollouts/{rid}").json()["phase"] == "completed"


def test_a_rollout_created_to_ignore_windows_installs_everywhere(client, memhub, bundle_dir):
    hub, _ = memhub
    client.put("/api/v1/groups/night/window", json=closed_now())
    v2 = two_groups(hub, client, bundle_dir)
    st = client.post(
        "/api/v1/rollouts",
        json={"bundle": v2["digest"], "target": {"all": True}, "policy": {"ignore_windows": True}},
    ).json()
    assert st["counts"] == {"issued": 2} and st["waiting"] == []


def test_groups_list_their_windows_and_a_cleared_window_lets_installs_go(client, memhub, bundle_dir):
    hub, _ = memhub
    client.put("/api/v1/groups/night/window", json=closed_now())
    v2 = two_groups(hub, client, bundle_dir)
    rid = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"group": "night"}}).json()["id"]
    items = {g["group"]: g for g in client.get("/api/v1/groups").json()["items"]}
    assert items["night"]["devices"] == 1 and items["night"]["window"]["spec"].startswith("days=* start=")
    assert items["day"]["window"] is None
    r = client.delete("/api/v1/groups/night/window")
    assert r.status_code == 200 and r.json()["window"] is None
    assert client.get(f"/api/v1/rollouts/{rid}").json()["counts"] == {"issued": 1}
    assert client.delete("/api/v1/groups/night/window").status_code == 404


def test_a_bad_window_is_refused_naming_the_field(client):
    r = client.put("/api/v1/groups/night/window", json={"spec": "start=25:00 duration=1h", "tz": "UTC"})
    assert r.status_code == 400 and "start=25:00" in r.json()["error"]
    r = client.put("/api/v1/groups/night/window", json={"spec": "start=01:00 duration=1h", "tz": "Moon/Base"})
    assert r.status_code == 400 and "'Moon/Base'" in r.json()["error"]
    assert client.get("/api/v1/groups/night").status_code == 404  # nothing was stored


def test_a_viewer_may_read_windows_but_not_set_them(client, memhub):
    from .conftest import VIEWER

    h = {"Authorization": f"Bearer {VIEWER}"}
    assert client.put("/api/v1/groups/night/window", json=ALWAYS, headers=h).status_code == 403
    assert client.get("/api/v1/groups", headers=h).status_code == 200


def test_an_app_hold_on_a_device_shows_on_its_rollout(client, memhub, bundle_dir):
    hub, _ = memhub
    v2 = two_groups(hub, client, bundle_dir)
    rid = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"group": "day"}}).json()["id"]
    seq = client.get(f"/api/v1/rollouts/{rid}").json()["devices"][0]["seq"]
    until = int(time.time()) + 600
    held = Report(
        device="d-day",
        seq=1,
        ts=1001,
        stage="switch",
        status="progress",
        detail="held by app",
        desired_seq=seq,
        bundle=v2["digest"],
        hold=Hold(until, "surgery in progress"),
    ).to_bytes()
    hub.ingest.handle([("ef/v1/dev/d-day/report", held)])
    d = client.get(f"/api/v1/rollouts/{rid}").json()["devices"][0]
    assert d["state"] == "installing"
    assert d["reason"] == f"held by app until {time.strftime('%Y-%m-%d %H:%M', time.gmtime(until))} UTC: " + (
        "surgery in progress"
    )
