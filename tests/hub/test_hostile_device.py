"""One enrolled device turned hostile: whatever it sends over its own topics, the rest of the
fleet's messages in the same batch are stored and acked, and the fleet's figures and the
operators' pages are not its to set. Each test is named after the attack it proves harmless."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from hub.models import Device, ReportRecord, TelemetryWindow
from protocol.device import Inventory
from protocol.messages import Status
from protocol.sketch import LatencySketch

from .conftest import TOKEN
from .helpers import report, status, telemetry


def _good_batch(n: int = 3) -> list[tuple[str, bytes]]:
    return [(f"ef/v1/dev/good-{i}/telemetry", telemetry(f"good-{i}", 1)) for i in range(n)]


def _stored(hub, table=TelemetryWindow) -> set[tuple[str, int]]:
    with hub.fleet.session() as s:
        return {(r.device, r.seq) for r in s.exec(select(table)).all()}


def _acked(pub, device: str) -> bool:
    return any(m.topic == f"ef/v1/dev/{device}/ack" for m in pub.sent)


def _outcome(hub, kind: str, outcome: str) -> float:
    return hub.fleet.metrics.messages.labels(kind, outcome)._value.get()


def _evil_status(**fields) -> bytes:
    doc = json.loads(status("evil"))
    doc.update(fields)
    return json.dumps(doc).encode()


def test_an_integer_past_64_bits_in_a_status_or_report_costs_only_that_message(memhub):
    hub, pub = memhub
    evil = [
        ("ef/v1/dev/evil/status", _evil_status(desired_seq=2**63)),
        ("ef/v1/dev/evil/status", _evil_status(ts=2**31)),  # past the registry's 32-bit column
        ("ef/v1/dev/evil/report", report("evil", 1, 2**64)),
        ("ef/v1/dev/evil/report", json.dumps({**json.loads(report("evil", 2, 1)), "ts": 10**30}).encode()),
    ]
    hub.ingest.handle(evil[:2] + _good_batch() + evil[2:])
    assert _stored(hub) == {(f"good-{i}", 1) for i in range(3)}
    assert all(_acked(pub, f"good-{i}") for i in range(3))
    assert _stored(hub, ReportRecord) == set()
    assert _outcome(hub, "status", "malformed") == 2 and _outcome(hub, "report", "malformed") == 2
    assert {q.outcome for q in hub.ingest.quarantine} == {"malformed"}
    assert any("exceeds" in q.reason or "64 bits" in q.reason for q in hub.ingest.quarantine)


def test_deeply_nested_json_costs_only_that_message(memhub):
    hub, pub = memhub
    deep = b'{"v":1,"device":"evil","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    hub.ingest.handle([("ef/v1/dev/evil/report", deep), ("ef/v1/dev/evil/telemetry", deep)] + _good_batch())
    assert _stored(hub) == {(f"good-{i}", 1) for i in range(3)}
    assert any("nested deeper" in q.reason for q in hub.ingest.quarantine)


def test_infinity_in_an_inventory_is_refused_and_every_operator_page_keeps_serving(memhub):
    hub, _ = memhub
    inf = (
        Status("evil", True, 1000, "0.1.0", Inventory(board="rpi4"))
        .to_bytes()
        .replace(b'"board":"rpi4"', b'"board":"rpi4","mem":1e999,"nan":NaN')
    )
    hub.ingest.handle([("ef/v1/dev/evil/status", inf), ("ef/v1/dev/good/status", status("good"))])
    with hub.fleet.session() as s:
        assert s.get(Device, "evil") is None and s.get(Device, "good") is not None
    c = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    for page in ("/ui", "/ui/devices", "/api/v1/devices", "/api/v1/telemetry/summary"):
        assert c.get(page).status_code == 200, page
    assert any("1e999" in q.reason or "NaN" in q.reason for q in hub.ingest.quarantine)


def test_a_window_claiming_more_latency_samples_than_inferences_moves_no_fleet_figure(memhub):
    hub, _ = memhub
    hub.ingest.handle(_good_batch())
    c = TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"})
    before = c.get("/api/v1/telemetry/summary").json()
    sk = LatencySketch()
    sk.add(30.0, 10**15)  # 30 s each, claimed 10**15 times
    doc = json.loads(telemetry("evil", 1))
    doc["latency"] = sk.to_dict()
    drift = json.loads(telemetry("evil", 2))  # 10 inferences...
    drift["drift"] = {"inputs": {"brightness": [0, 0, 0, 10**12]}}  # ...and 10**12 drift samples
    hub.ingest.handle(
        [
            ("ef/v1/dev/evil/telemetry", json.dumps(doc).encode()),
            ("ef/v1/dev/evil/telemetry", json.dumps(drift).encode()),
        ]
    )
    assert _stored(hub) == {(f"good-{i}", 1) for i in range(3)}
    after = c.get("/api/v1/telemetry/summary").json()
    assert after == before
    assert _outcome(hub, "telemetry", "implausible") == 2
    reasons = " ".join(q.reason for q in hub.ingest.quarantine)
    assert "latency sketch holds 1000000000000000 samples" in reasons and "bins hold" in reasons


def test_a_device_flooding_its_topics_cannot_crowd_out_the_others(memhub):
    hub, pub = memhub
    flood = [("ef/v1/dev/evil/telemetry", telemetry("evil", seq)) for seq in range(1, 2201)]
    hub.ingest.handle(flood[:1100] + _good_batch(5) + flood[1100:])
    stored = _stored(hub)
    assert {(f"good-{i}", 1) for i in range(5)} <= stored
    evil = sum(1 for d, _ in stored if d == "evil")
    assert evil <= 2000 and _outcome(hub, "telemetry", "throttled") == 2200 - evil


# ---- the HTTP edge: one body guard for every route, whatever the Content-Type says --------


@pytest.mark.parametrize(
    "ctype",
    [
        "Application/JSON",
        "application/x+json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
    ],
)
def test_a_nul_in_a_body_is_refused_whatever_the_content_type_claims(client, memhub, ctype):
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/d1/status", status("d1"))])
    body = b'{"group": "a\\u0000b"}' if "form" not in ctype else b"group=a%00b"
    r = client.patch("/api/v1/devices/d1", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and "control characters" in r.json()["error"]
    assert client.get("/api/v1/devices/d1").json()["group"] == ""


def test_a_huge_unauthenticated_enroll_body_is_refused_before_it_is_read(memhub):
    hub, _ = memhub
    anon = TestClient(hub.app)
    r = anon.post("/api/v1/enroll", content=b"x" * (50 << 20), headers={"Content-Type": "text/plain"})
    assert r.status_code == 413 and "4096" in r.json()["error"]

    def chunks():  # no Content-Length: refused once the bytes read pass the limit
        for _ in range(1000):
            yield b" " * 65536

    r = anon.post("/api/v1/enroll", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize(
    "body,problem",
    [
        (b'{"group": NaN}', "NaN"),
        (b'{"group": 1e999}', "1e999"),
        (b'{"group": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested deeper"),
    ],
)
def test_non_finite_numbers_and_deep_json_get_a_400_naming_them(client, memhub, body, problem):
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/d1/status", status("d1"))])
    r = client.patch("/api/v1/devices/d1", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and problem in r.json()["error"]
    assert client.get("/api/v1/devices/d1").status_code == 200


def test_only_an_admin_mints_enrollment_tokens(client, memhub):
    """A token becomes a broker identity: an operator's token (on a CI runner, say) must not mint them."""
    from .conftest import OPERATOR, VIEWER

    hub, _ = memhub
    for token, code in ((VIEWER, 403), (OPERATOR, 403), (TOKEN, 201)):
        r = TestClient(hub.app).post(
            "/api/v1/devices/enroll", json={"device": "d9"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == code, (token, r.text)
