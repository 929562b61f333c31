"""Fleet alerts: offline, latency regression and drift are raised once and resolved when clear."""

from __future__ import annotations

import pytest

from hub import alerting
from hub.alerts import AlertRules, DeviceFacts, Raise, evaluate
from hub.web import queries

from .helpers import status, telemetry
from .test_api import push

NOW = 10_000


@pytest.mark.parametrize(
    "facts,open_,want",
    [
        (DeviceFacts("d", True, NOW - 10), set(), []),
        (DeviceFacts("d", False, NOW - 10), set(), [("raise", "offline")]),
        (DeviceFacts("d", True, NOW - 400), set(), [("raise", "offline")]),
        (DeviceFacts("d", True, NOW - 400), {("offline", "d")}, []),
        (DeviceFacts("d", True, NOW - 1), {("offline", "d")}, [("resolve", "offline")]),
        (DeviceFacts("d", True, NOW, None, 30.0, 200, 10.0, 5000), set(), [("raise", "latency_regression")]),
        (DeviceFacts("d", True, NOW, None, 12.0, 200, 10.0, 5000), set(), []),
        (DeviceFacts("d", True, NOW, None, 90.0, 20, 10.0, 5000), set(), []),  # too few samples
        (
            DeviceFacts("d", True, NOW, None, 12.0, 200, 10.0, 5000),
            {("latency_regression", "d")},
            [("resolve", "latency_regression")],
        ),
        (DeviceFacts("d", True, NOW, drift_status="alert"), set(), [("raise", "drift")]),
        (DeviceFacts("d", True, NOW, drift_status="insufficient_data"), {("drift", "d")}, []),  # no data: keep open
        (DeviceFacts("d", True, NOW, drift_status="ok"), {("drift", "d")}, [("resolve", "drift")]),
    ],
)
def test_alert_rules(facts, open_, want):
    got = evaluate([facts], open_, NOW, AlertRules(offline_after=300))
    assert [("raise" if isinstance(x, Raise) else "resolve", x.kind) for x in got] == want


def test_scan_raises_drift_and_offline_alerts_from_real_rows_and_serves_them(client, memhub, bundle_dir):
    hub, _ = memhub
    b = push(client, bundle_dir())
    active = (b["digest"], b["name"], b["version"])
    hub.ingest.handle(
        [
            ("ef/v1/dev/ok/status", status("ok", active=active)),
            ("ef/v1/dev/drifty/status", status("drifty", active=active)),
            ("ef/v1/dev/gone/status", status("gone", online=False, active=active)),
        ]
    )
    shifted = {"inputs": {"brightness": [0, 0, 0, 300]}, "outputs": {"top1_class": [100, 100, 100]}}
    same = {"inputs": {"brightness": [75, 75, 75, 75]}, "outputs": {"top1_class": [100, 100, 100]}}
    hub.ingest.handle(
        [
            ("ef/v1/dev/drifty/telemetry", telemetry("drifty", 1, b["digest"], drift=shifted)),
            ("ef/v1/dev/ok/telemetry", telemetry("ok", 1, b["digest"], drift=same)),
        ]
    )
    alerting.scan(hub.fleet)
    alerting.scan(hub.fleet)  # idempotent: still one open alert each
    items = client.get("/api/v1/alerts?open=true").json()["items"]
    assert sorted((a["kind"], a["device"]) for a in items) == [("drift", "drifty"), ("offline", "gone")]
    assert "inputs.brightness" in [a for a in items if a["kind"] == "drift"][0]["detail"]
    hub.ingest.handle([("ef/v1/dev/gone/status", status("gone", active=active))])
    alerting.scan(hub.fleet)
    assert [a["device"] for a in client.get("/api/v1/alerts?open=true&kind=offline").json()["items"]] == []
    assert client.get("/api/v1/alerts?kind=offline").json()["items"][0]["resolved"] > 0
    assert client.get("/api/v1/alerts?kind=bogus").status_code == 422


def test_the_device_page_the_drift_alert_and_the_chart_judge_the_same_rows_alike(client, memhub, bundle_dir):
    hub, _ = memhub
    b = push(client, bundle_dir())
    hub.ingest.handle([("ef/v1/dev/d/status", status("d", active=(b["digest"], b["name"], b["version"])))])
    shifted = {"inputs": {"brightness": [0, 0, 0, 300]}, "outputs": {"top1_class": [100, 100, 100]}}
    hub.ingest.handle([("ef/v1/dev/d/telemetry", telemetry("d", 1, b["digest"], drift=shifted))])
    page = client.get("/api/v1/devices/d").json()["recent"]["drift"]
    alerting.scan(hub.fleet)
    (alert,) = client.get("/api/v1/alerts?open=true&kind=drift").json()["items"]
    with hub.fleet.session() as s:
        chart = queries.device_series(s, "d", hub.fleet.store.baseline_of)["drift_psi"]
    assert page["inputs.brightness"]["status"] == "alert" and page["outputs.top1_class"]["status"] == "ok"
    assert alert["device"] == "d" and alert["detail"] == {"inputs.brightness": page["inputs.brightness"]}
    assert chart == {key: [round(v["psi"], 4)] for key, v in page.items()}


def test_models_and_audit_are_listed(client, bundle_dir):
    push(client, bundle_dir(model_bytes=b"\x01" * 1500))
    push(client, bundle_dir(model_bytes=b"\x02" * 1500))
    models = client.get("/api/v1/models").json()
    assert models["items"][0]["name"] == "digits" and models["items"][0]["revisions"] == 2
    audit = client.get("/api/v1/audit?action=bundle.push").json()
    assert audit["total"] == 2 and audit["items"][0]["actor"].startswith("admin:")


def test_the_scan_reads_rolled_minutes_and_raw_windows_as_exactly_the_windows_they_hold(client, memhub, bundle_dir):
    """The last 15 minutes come as minute rollups where rolled and raw windows elsewhere (the
    first partial minute, what is not rolled yet): merged, the same as every raw window of the
    device's active bundle (a window of another bundle left out; a device with no bundle keeps
    the windows that name none)."""
    from sqlmodel import select

    from hub import rollups
    from hub.models import TelemetryWindow
    from hub.telemetry import merge

    hub, _ = memhub
    b, other = push(client, bundle_dir()), push(client, bundle_dir(version="9.9.9"))
    t0 = 1_000_017  # not on a minute: the range starts inside one
    clock = [t0]
    hub.fleet.clock = lambda: clock[0]
    hub.ingest.handle(
        [
            ("ef/v1/dev/d/status", status("d", active=(b["digest"], b["name"], b["version"]))),
            ("ef/v1/dev/bare/status", status("bare")),
        ]
    )
    drift = {"inputs": {"brightness": [1, 2, 3, 4]}}
    for i in range(70):  # 70 windows 20 s apart: 23 minutes, the first 8 older than the scan's range
        clock[0] = t0 + 20 * i
        lat = tuple(0.001 * (1 + i % 7) for _ in range(10))
        hub.ingest.handle(
            [
                ("ef/v1/dev/d/telemetry", telemetry("d", i, b["digest"], lat, drift=drift, start=clock[0])),
                ("ef/v1/dev/d/telemetry", telemetry("d", 1000 + i, other["digest"], lat, start=clock[0])),
                ("ef/v1/dev/bare/telemetry", telemetry("bare", i, None, lat, start=clock[0])),
            ]
        )
    now = clock[0] = t0 + 20 * 69 + 150
    while any(rollups.roll(hub.fleet).values()):
        pass
    with hub.fleet.session() as s:
        since = now - alerting.RECENT_S
        rolled = rollups.rolled_until(s)
        assert rolled is not None and rolled > since + 5 * 60  # most of the range is rolled up
        got = alerting._recent(s, now, "bare", "d")
        raw = s.exec(select(TelemetryWindow).where(TelemetryWindow.received >= since)).all()
    assert any(getattr(r, "windows", 1) > 1 for r in got["d"])  # read from rollups...
    for device, bundle in (("d", b["digest"]), ("bare", None)):
        want = merge(w for w in raw if w.device == device and w.bundle == bundle)
        have = merge(got[device])
        assert want.windows == have.windows > 30
        assert (have.counts, have.drift) == (want.counts, want.drift)
        hs, ws = have.sketch, want.sketch  # buckets bit for bit; the sum up to its adding order
        assert (hs.counts, hs.count, hs.min, hs.max) == (ws.counts, ws.count, ws.min, ws.max)
        assert hs.total == pytest.approx(ws.total, rel=1e-12)


def test_a_fleet_larger_than_a_scan_page_is_judged_a_page_a_scan_in_id_order(client, memhub, monkeypatch):
    """Five silent devices, pages of two: each scan raises the next page's offline alerts, the
    short last page sends the next scan back to the start, where nothing is raised twice."""
    hub, _ = memhub
    monkeypatch.setattr(alerting, "SCAN_PAGE", 2)
    ids = [f"d{i}" for i in range(5)]
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d, online=False)) for d in ids])

    def raised() -> list[str]:
        return sorted(x.device for x in alerting.scan(hub.fleet) if isinstance(x, Raise))

    assert [raised() for _ in range(4)] == [["d0", "d1"], ["d2", "d3"], ["d4"], []]
    open_ = client.get("/api/v1/alerts?open=true&kind=offline").json()["items"]
    assert sorted(a["device"] for a in open_) == ids
    hub.ingest.handle([("ef/v1/dev/d3/status", status("d3"))])  # back: resolved when its page comes round
    resolved = [[x.device for x in alerting.scan(hub.fleet) if not isinstance(x, Raise)] for _ in range(3)]
    assert resolved == [["d3"], [], []]
