"""REST API over a real SQLite file, with the MQTT side replaced by an in-memory publisher.

Device traffic is fed through the same ingest entry point the MQTT bridge uses."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
from sqlmodel import select

from hub import store as hub_store, tallies, telemetry as hub_telemetry, ticker
from hub.keys import HubKeys
from hub.models import Rollout, RolloutDevice
from hub.store import read_bundle_dir
from protocol.bundle import MANIFEST_FILE, ChunkPlan, pack_archive, read_archive, verify_manifest
from protocol.messages import FetchRequest, parse_ack, verify_desired
from protocol.signing import Envelope

from .conftest import OPERATOR, TOKEN, VIEWER
from .helpers import report, status, telemetry


def archive_of(directory: Path) -> bytes:
    env, arts = read_bundle_dir(directory)
    return pack_archive(env, arts)


def push(client, directory: Path) -> dict:
    r = client.post(
        "/api/v1/bundles", content=archive_of(directory), headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_pushed_bundle_is_signed_by_online_key_and_stored_content_addressed(client, memhub, bundle_dir, keys_dir):
    hub, _ = memhub
    out = push(client, bundle_dir())
    assert set(out) >= {"digest", "name", "version", "archive_sha256", "size"}
    root = HubKeys.load(keys_dir).root
    folder = hub.config.store / "bundles" / out["digest"]
    manifest, digest = verify_manifest((folder / MANIFEST_FILE).read_bytes(), root)
    assert digest == out["digest"] and manifest.name == "digits"
    archive = (hub.config.store / "archives" / f"{out['archive_sha256']}.efb").read_bytes()
    assert len(archive) == out["size"]
    got: dict[str, bytes] = {}
    read_archive(
        io.BytesIO(archive), root, len(archive), lambda a, b: got.__setitem__(a.name, got.get(a.name, b"") + b)
    )
    assert got["labels.txt"] == b"zero\none\ntwo\n"
    assert client.get(f"/api/v1/bundles/{out['digest']}/archive").content == archive
    detail = client.get(f"/api/v1/bundles/{out['digest']}").json()
    assert detail["report"] == {"accuracy": {"int8": 0.97}} and detail["model_card"].startswith("# digits")


def test_repushing_same_bytes_is_a_no_op_and_new_bytes_are_a_new_revision(client, bundle_dir):
    d = bundle_dir(model_bytes=b"\x01" * 2000)
    a, b = push(client, d), push(client, d)
    assert a == b
    c = push(client, bundle_dir(model_bytes=b"\x02" * 2000))
    assert c["digest"] != a["digest"] and (a["revision"], c["revision"]) == (1, 2)
    page = client.get("/api/v1/bundles?limit=1").json()
    assert page["total"] == 2 and len(page["items"]) == 1


def test_tampered_artifact_is_rejected_with_hash_mismatch(client, bundle_dir):
    d = bundle_dir()
    env, arts = read_bundle_dir(d)
    good = pack_archive(env, arts)
    bad = bytearray(good)
    bad[-100] ^= 0xFF  # inside the last artifact
    r = client.post("/api/v1/bundles", content=bytes(bad), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "hash_mismatch" in r.json()["error"]
    r = client.post("/api/v1/bundles", content=b"not an archive")
    assert r.status_code == 400 and "EFB1" in r.json()["error"]
    assert client.get("/api/v1/bundles").json()["total"] == 0


def test_tokens_are_required_and_roles_limit_what_callers_do(client, bundle_dir):
    assert client.get("/api/v1/devices", headers={"Authorization": ""}).status_code == 401
    assert client.get("/api/v1/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/v1/devices", headers={"Authorization": f"Bearer {VIEWER}"}).status_code == 200
    r = client.post("/api/v1/bundles", content=archive_of(bundle_dir()), headers={"Authorization": f"Bearer {VIEWER}"})
    assert r.status_code == 403 and "viewer" in r.json()["error"]
    r = client.post(
        "/api/v1/bundles", content=archive_of(bundle_dir()), headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert r.status_code == 200


def test_device_list_paginates_and_filters(client, memhub):
    hub, _ = memhub
    hub.ingest.handle(
        [(f"ef/v1/dev/cam-{i}/status", status(f"cam-{i}", online=i % 2 == 0)) for i in range(5)]
        + [("ef/v1/dev/door-1/status", status("door-1"))]
    )
    page = client.get("/api/v1/devices?limit=2&offset=1").json()
    assert page["total"] == 6 and [d["device_id"] for d in page["items"]] == ["cam-1", "cam-2"]
    assert client.get("/api/v1/devices?online=false").json()["total"] == 2
    assert [d["device_id"] for d in client.get("/api/v1/devices?q=door").json()["items"]] == ["door-1"]
    assert client.get("/api/v1/devices?limit=0").status_code == 422
    assert client.get("/api/v1/devices/nope").status_code == 404
    assert client.get("/api/v1/devices/bad%20id").status_code == 400


def test_device_list_and_rollout_status_page_by_key_through_next_after(client, memhub, monkeypatch):
    hub, _ = memhub
    ids = [f"cam-{i}" for i in range(7)]
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d, online=i % 2 == 0)) for i, d in enumerate(ids)])
    seen, after = [], None
    while True:
        page = client.get("/api/v1/devices?limit=3" + (f"&after={after}" if after else "")).json()
        seen += [d["device_id"] for d in page["items"]]
        assert page["total"] == 7 and page["counted_at"] > 0
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
    assert seen == ids
    online = client.get("/api/v1/devices?online=true&limit=2&after=cam-0").json()
    assert [d["device_id"] for d in online["items"]] == ["cam-2", "cam-4"] and online["next_after"] == "cam-4"
    assert client.get("/api/v1/devices?online=true&limit=2&after=cam-4").json()["has_more"] is False

    rid = "ro-keyset"
    with hub.fleet.session() as s:
        s.add(Rollout(id=rid, serial=1, bundle="0" * 64, target={"all": True}, policy={}, phase="running"))
        s.add_all(RolloutDevice(rollout_id=rid, device_id=d, state="issued") for d in ids)
        s.commit()
    first = client.get(f"/api/v1/rollouts/{rid}?limit=4").json()
    assert [d["device_id"] for d in first["devices"]] == ids[:4] and first["next_after"] == "cam-3"
    rest = client.get(f"/api/v1/rollouts/{rid}?limit=4&after=cam-3").json()
    assert [d["device_id"] for d in rest["devices"]] == ids[4:] and rest["has_more"] is False
    assert rest["counts"] == {"issued": 7} and rest["total"] == 7

    # from tallies.LARGE rows the total is a count kept a few seconds: counted_at says when
    monkeypatch.setattr(tallies, "LARGE", 5)
    kept = client.get("/api/v1/devices?limit=1").json()
    hub.ingest.handle([("ef/v1/dev/new-1/status", status("new-1"))])
    again = client.get("/api/v1/devices?limit=1").json()
    assert again["total"] == kept["total"] == 7 and again["counted_at"] == kept["counted_at"]
    assert client.get("/api/v1/devices?limit=1&q=new").json()["total"] == 1  # small: counted now


def test_rollout_to_all_sends_each_device_a_signed_desired_with_its_chunks(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    hub.ingest.handle([(f"ef/v1/dev/d{i}/status", status(f"d{i}")) for i in range(3)])
    b = push(client, bundle_dir())
    r = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    root = HubKeys.load(keys_dir).root
    now = int(time.time())
    for i in range(3):
        doc = pub.retained[f"ef/v1/dev/d{i}/desired"]
        desired = verify_desired(doc, root, f"d{i}", 0, now)
        assert desired.action == "install" and desired.bundle.digest == b["digest"] and desired.rollout == rid
        assert desired.expires > now + 86400
    plan = desired.bundle.archive
    for i in range(len(plan.chunks)):
        plan.check_chunk(i, pub.retained[f"ef/v1/bundle/{plan.sha256}/chunk/{i}"])
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["counts"] == {"issued": 3} and st["phase"] == "running"

    # a second rollout gets a higher seq for the same device (never a replay)
    b2 = push(client, bundle_dir(version="1.0.1"))
    client.post("/api/v1/rollouts", json={"bundle": b2["digest"], "target": {"devices": ["d0"]}})
    d2 = verify_desired(pub.retained["ef/v1/dev/d0/desired"], root, "d0", desired.seq, now)
    assert d2.seq > desired.seq and d2.bundle.digest == b2["digest"]
    assert client.get(f"/api/v1/rollouts/{rid}").json()["counts"] == {"issued": 2, "cancelled": 1}


def test_commit_and_failure_reports_settle_rows_and_a_failure_pauses_the_rollout(client, memhub, bundle_dir):
    hub, pub = memhub
    hub.ingest.handle([("ef/v1/dev/a/status", status("a")), ("ef/v1/dev/b/status", status("b"))])
    b = push(client, bundle_dir())
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}}).json()["id"]
    hub.ingest.handle(
        [
            ("ef/v1/dev/a/report", report("a", 1, 1, stage="download", status="progress")),
            ("ef/v1/dev/b/report", report("b", 1, 1, stage="selftest", status="failed", reason="selftest_failed")),
        ]
    )
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["counts"] == {"installing": 1, "failed": 1}
    assert "selftest_failed" in [d for d in st["devices"] if d["device_id"] == "b"][0]["reason"]
    hub.ingest.handle([("ef/v1/dev/a/report", report("a", 2, 1, stage="commit", bundle=b["digest"]))])
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["counts"] == {"installed": 1, "failed": 1}
    st = client.get(f"/api/v1/rollouts/{rid}").json()  # simple policy: a failed install pauses it
    assert st["phase"] == "paused" and "install_failure_rate" in st["reason"]
    acks = [parse_ack(m.payload) for m in pub.sent if m.topic == "ef/v1/dev/a/ack"]
    assert [a.seqs for a in acks] == [(1,), (2,)] and acks[0].kind == "report"


def test_incompatible_board_is_never_sent_the_bundle(client, memhub, bundle_dir):
    from protocol.bundle import Requirements

    hub, pub = memhub
    hub.ingest.handle(
        [
            ("ef/v1/dev/pi/status", status("pi", board="rpi4")),
            ("ef/v1/dev/dev/status", status("dev", board="coral-devboard")),
        ]
    )
    b = push(client, bundle_dir(requirements=Requirements(edgetpu="optional", boards=("coral-devboard",))))
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}}).json()["id"]
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    states = {d["device_id"]: (d["state"], d["reason"]) for d in st["devices"]}
    assert states["pi"][0] == "incompatible" and "wrong_hardware" in states["pi"][1]
    assert states["dev"][0] == "issued"
    assert "ef/v1/dev/pi/desired" not in pub.retained


def test_device_that_appears_after_the_rollout_converges_to_its_target(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    hub.ingest.handle([("ef/v1/dev/early/status", status("early"))])
    b = push(client, bundle_dir())
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}}).json()["id"]
    hub.ingest.handle([("ef/v1/dev/early/report", report("early", 1, 1, bundle=b["digest"]))])
    ticker.tick(hub.fleet)
    assert client.get(f"/api/v1/rollouts/{rid}").json()["phase"] == "completed"
    hub.ingest.handle([("ef/v1/dev/late/status", status("late"))])
    desired = verify_desired(
        pub.retained["ef/v1/dev/late/desired"], HubKeys.load(keys_dir).root, "late", 0, int(time.time())
    )
    assert desired.bundle.digest == b["digest"]
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["counts"] == {"installed": 1, "issued": 1} and st["phase"] == "running"


def test_a_batch_of_new_devices_is_told_to_the_rollout_in_a_few_queries_not_two_a_device(
    client, memhub, bundle_dir, keys_dir
):
    """200 devices appear in one batch while a rollout targets all: each gets its document, and
    telling the rollouts about them reads the devices, their rollout rows (hub.rollouts._seen_events)
    and their last documents (hub.desired.preload) in pages: 607 SELECTs before, about ten
    now."""
    from sqlalchemy import event

    hub, pub = memhub
    b = push(client, bundle_dir())
    client.post(
        "/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}, "policy": {"cohorts": ["100%"]}}
    )
    ids = [f"new-{i:03d}" for i in range(200)]
    with hub.fleet.session() as s:
        rows_before = len(s.exec(select(RolloutDevice)).all())
    statements: list[str] = []

    def count(_conn, _cur, sql, *_a) -> None:
        statements.append(sql)

    event.listen(hub.fleet.engine, "before_cursor_execute", count)
    try:
        hub.ingest.followups.behind = lambda: True  # gather the batch's devices (as while behind)
        hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d)) for d in ids])
        statements.clear()
        hub.ingest.followups.run()  # told in one run
        lookups = [q for q in statements if q.lstrip().startswith("SELECT")]
    finally:
        event.remove(hub.fleet.engine, "before_cursor_execute", count)
    for d in ids[::50]:
        desired = verify_desired(
            pub.retained[f"ef/v1/dev/{d}/desired"], HubKeys.load(keys_dir).root, d, 0, int(time.time())
        )
        assert desired.bundle.digest == b["digest"]
    with hub.fleet.session() as s:
        assert len(s.exec(select(RolloutDevice)).all()) == rows_before + 200
    assert len(lookups) < 20, f"{len(lookups)} SELECTs to find and issue to 200 new devices"


def test_an_upgrade_to_200_devices_that_hold_documents_reads_their_documents_a_page_at_a_time(
    client, memhub, bundle_dir, keys_dir
):
    """A second rollout's POST to devices that each hold a document: hub.desired.preload reads
    them a page a query and issue() finds them there. It read them, then let them go (the
    session keeps an object only while something refers to it), so each device cost a SELECT in
    _previous and another in merge: 1.1 s of an upgrade POST at 1,000 devices, 0.3 s for the
    first install."""
    from sqlalchemy import event

    hub, pub = memhub
    ids = [f"up-{i:03d}" for i in range(200)]
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d)) for d in ids])
    first = push(client, bundle_dir())
    policy = {"cohorts": ["100%"]}
    r = client.post("/api/v1/rollouts", json={"bundle": first["digest"], "target": {"all": True}, "policy": policy})
    assert r.status_code == 201, r.text
    second = push(client, bundle_dir(version="2.0.0"))
    statements: list[str] = []

    def count(_conn, _cur, sql, *_a) -> None:
        statements.append(sql)

    event.listen(hub.fleet.engine, "before_cursor_execute", count)
    try:
        r = client.post(
            "/api/v1/rollouts", json={"bundle": second["digest"], "target": {"all": True}, "policy": policy}
        )
    finally:
        event.remove(hub.fleet.engine, "before_cursor_execute", count)
    assert r.status_code == 201, r.text
    for d in ids[::50]:
        desired = verify_desired(
            pub.retained[f"ef/v1/dev/{d}/desired"], HubKeys.load(keys_dir).root, d, 0, int(time.time())
        )
        assert desired.bundle.digest == second["digest"] and desired.seq == 2
    lookups = [q for q in statements if q.lstrip().startswith("SELECT") and "desired" in q.lower()]
    assert len(lookups) < 10, f"{len(lookups)} SELECTs of desired documents to issue to 200 devices"


def test_telemetry_is_stored_once_acked_every_time_and_summarised(client, memhub, bundle_dir):
    hub, pub = memhub
    b = push(client, bundle_dir())
    hub.ingest.handle([("ef/v1/dev/t/status", status("t", active=(b["digest"], b["name"], b["version"])))])
    drift = {"inputs": {"brightness": [10, 10, 10, 170]}, "outputs": {"top1_class": [70, 70, 60]}}
    msg = telemetry("t", 1, b["digest"], latencies_s=tuple([0.010] * 90 + [0.050] * 10) * 2, drift=drift)
    hub.ingest.handle([("ef/v1/dev/t/telemetry", msg), ("ef/v1/dev/t/telemetry", msg)])
    hub.ingest.handle([("ef/v1/dev/t/telemetry", msg)])
    dev = client.get("/api/v1/devices/t").json()
    assert dev["telemetry"]["inferences"] == 200 and dev["telemetry"]["windows"] == 1
    assert 9 < dev["telemetry"]["p50_ms"] < 11 and 45 < dev["telemetry"]["p95_ms"] < 55
    assert dev["recent"]["drift"]["inputs.brightness"]["status"] == "alert"
    assert dev["recent"]["drift"]["outputs.top1_class"]["status"] == "ok"
    acks = [parse_ack(m.payload).seqs for m in pub.sent if m.topic == "ef/v1/dev/t/ack"]
    assert acks == [(1,), (1,)]
    # at QoS 0: one lost costs the device a resend, which the lines above show is stored once
    assert {m.qos for m in pub.sent if m.kind == "ack"} == {0}
    dup = hub.fleet.metrics.messages.labels("telemetry", "duplicate")._value.get()
    assert dup == 2
    text = client.get("/metrics").text  # the window counted once, in the histogram's buckets
    assert 'edgefleet_fleet_latency_seconds_count{cohort="none",model="digits",version="1.0.0"} 200.0' in text
    assert (
        'edgefleet_fleet_latency_seconds_bucket{cohort="none",le="0.046341",model="digits",version="1.0.0"} 180.0'
        in text
    )


def test_malformed_and_mismatched_messages_are_counted_and_dropped(client, memhub):
    hub, _ = memhub
    m = hub.fleet.metrics.messages
    hub.ingest.handle(
        [
            ("ef/v1/dev/x/telemetry", b"{not json"),
            ("ef/v1/dev/x/status", status("someone-else")),
            ("ef/v1/dev/x/report", json.dumps({"v": 1, "device": "x"}).encode()),
            (
                "ef/v1/dev/x/telemetry",
                json.dumps({"v": 1, "device": "x", "seq": 2**70, "window_start": 0, "window_end": 1}).encode(),
            ),
            ("ef/v1/dev/x/status", status("x")),
        ]
    )
    assert m.labels("telemetry", "malformed")._value.get() == 2
    assert m.labels("status", "malformed")._value.get() == 1
    assert m.labels("report", "malformed")._value.get() == 1
    assert [d["device_id"] for d in client.get("/api/v1/devices").json()["items"]] == ["x"]
    text = client.get("/metrics").text
    assert 'edgefleet_hub_messages_total{kind="telemetry",outcome="malformed"} 2.0' in text


def test_fetch_request_republishes_exactly_the_missing_chunks_and_storms_are_throttled(client, memhub, bundle_dir):
    hub, pub = memhub
    b = push(client, bundle_dir(model_bytes=bytes(range(256)) * 1000))  # > 3 chunks of 64 KiB
    plan = ChunkPlan.of(client.get(f"/api/v1/bundles/{b['digest']}/archive").content, 64 * 1024)
    assert len(plan.chunks) >= 4
    req = FetchRequest("f", b["archive_sha256"], (1, 3, 999)).to_bytes()
    hub.ingest.handle([("ef/v1/dev/f/fetch", req)])
    sent = [m for m in pub.sent if m.kind == "chunk"]
    assert [m.topic.rsplit("/", 1)[1] for m in sent] == ["1", "3"]
    for m in sent:
        plan.check_chunk(int(m.topic.rsplit("/", 1)[1]), m.payload)
    # a storm of requests for the same chunks is not amplified: each chunk once per interval
    hub.ingest.handle(
        [("ef/v1/dev/f/fetch", req)] * 20
        + [("ef/v1/dev/g/fetch", FetchRequest("g", b["archive_sha256"], (1, 2)).to_bytes())]
    )
    assert [m.topic.rsplit("/", 1)[1] for m in pub.sent if m.kind == "chunk"][2:] == ["2"]


def test_healthz_metrics_and_the_device_page(client, memhub):
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/page-dev/status", status("page-dev"))])
    assert client.get("/healthz").json()["status"] == "ok"
    assert "edgefleet_hub_devices" in client.get("/metrics").text
    anon = client.get("/", headers={"Authorization": ""})
    assert anon.status_code == 401 and "token" in anon.text and 'action="/ui/login"' in anon.text
    # a token in the URL never signs in (history, proxy and access logs keep URLs)

    leaky = client.get(f"/?token={TOKEN}", headers={"Authorization": ""})
    assert leaky.status_code == 401 and "not accepted" in leaky.text and "ef_token" not in leaky.cookies
    page = client.get("/")
    assert page.status_code == 200 and 'data-device="page-dev"' in page.text


def test_bad_rollout_requests_get_clear_4xx(client, bundle_dir):
    r = client.post("/api/v1/rollouts", json={"bundle": "0" * 64, "target": {"all": True}})
    assert r.status_code == 404 and "0000" in r.json()["error"]
    r = client.post("/api/v1/rollouts", json={"bundle": "xyz", "target": {"all": True}})
    assert r.status_code == 422 and "bundle" in r.json()["error"]
    b = push(client, bundle_dir())
    r = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True, "group": "g"}})
    assert r.status_code == 400 and "exactly one" in r.json()["error"]
    assert client.get("/api/v1/rollouts/nope").status_code == 404
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"devices": [] or ["zz"]}}).json()[
        "id"
    ]
    assert client.post(f"/api/v1/rollouts/{rid}/explode").status_code == 422


def test_device_moved_into_a_targeted_group_converges_to_that_rollout(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    hub.ingest.handle([("ef/v1/dev/g1/status", status("g1")), ("ef/v1/dev/g2/status", status("g2"))])
    assert client.patch("/api/v1/devices/g1", json={"group": "lab", "tags": ["cam", "cam"]}).json()["tags"] == ["cam"]
    b = push(client, bundle_dir())
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"group": "lab"}}).json()["id"]
    assert [d["device_id"] for d in client.get(f"/api/v1/rollouts/{rid}").json()["devices"]] == ["g1"]
    assert "ef/v1/dev/g2/desired" not in pub.retained
    client.patch("/api/v1/devices/g2", json={"group": "lab"})
    assert (
        verify_desired(
            pub.retained["ef/v1/dev/g2/desired"], HubKeys.load(keys_dir).root, "g2", 0, int(time.time())
        ).bundle.digest
        == b["digest"]
    )
    assert client.get("/api/v1/devices?group=lab").json()["total"] == 2
    assert client.get("/api/v1/devices?tag=cam").json()["total"] == 1
    assert client.patch("/api/v1/devices/g2", json={"colour": "red"}).status_code == 422
    assert (
        client.patch(
            "/api/v1/devices/g2", json={"group": "x"}, headers={"Authorization": f"Bearer {VIEWER}"}
        ).status_code
        == 403
    )


def test_telemetry_merges_across_devices_and_time_and_old_windows_are_pruned(client, memhub, bundle_dir):
    hub, _ = memhub
    b = push(client, bundle_dir())
    hub.ingest.handle(
        [
            (f"ef/v1/dev/m{i}/telemetry", telemetry(f"m{i}", s, b["digest"], (0.002 * (i + 1),) * 50, start=s * 10))
            for i in range(3)
            for s in (1, 2)
        ]
    )
    client.patch("/api/v1/devices/m0", json={"group": "north"})
    fleet = client.get(f"/api/v1/telemetry/summary?bundle={b['digest']}").json()
    assert fleet["inferences"] == 300 and fleet["devices"] == 3 and fleet["windows"] == 6
    assert 3.7 < fleet["p50_ms"] < 4.3 and 5.6 < fleet["p95_ms"] < 6.4  # 2, 4, 6 ms devices merged
    north = client.get("/api/v1/telemetry/summary?group=north").json()
    assert north["devices"] == 1 and 1.8 < north["p95_ms"] < 2.2
    late = client.get("/api/v1/telemetry/summary?since=25").json()  # windows end at seq*10+10
    assert late["windows"] == 3
    real_clock = hub.fleet.clock
    hub.fleet.clock = lambda: real_clock() + 40 * 86400
    try:
        assert hub_telemetry.prune(hub.fleet, 30 * 86400) == 6
    finally:
        hub.fleet.clock = real_clock
    assert client.get("/api/v1/telemetry/summary").json()["windows"] == 0
    assert client.get("/api/v1/devices/m1").json()["telemetry"]["inferences"] == 100  # totals stay


def test_agent_backlog_stats_are_kept_with_the_window_health(client, memhub, bundle_dir):
    from sqlmodel import Session, select

    from hub.models import TelemetryWindow
    from protocol.device import Health
    from protocol.messages import Telemetry, parse_telemetry

    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/bk/status", status("bk"))])
    base = parse_telemetry(telemetry("bk", 7))
    msg = Telemetry(
        base.device,
        base.seq,
        base.window_start,
        base.window_end,
        counts=base.counts,
        latency=base.latency,
        health=Health(load1=0.5),
        backlog={"size": 12, "oldest_age_s": 40.0, "dropped": 3},
    )
    hub.ingest.handle([("ef/v1/dev/bk/telemetry", msg.to_bytes())])
    with Session(hub.fleet.engine) as s:
        row = s.exec(select(TelemetryWindow).where(TelemetryWindow.device == "bk")).one()
    assert row.health == {"load1": 0.5, "backlog": {"size": 12, "oldest_age_s": 40.0, "dropped": 3}}


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/api/v1/devices/enroll", {"device": "d1", "group": "\u0000", "tags": []}),
        ("POST", "/api/v1/devices/enroll", {"device": "d1", "group": "", "tags": ["a\u0001b"]}),
        ("GET", "/api/v1/devices?group=%00", None),
        ("GET", "/api/v1/devices/a%00b", None),
    ],
)
def test_control_characters_in_requests_get_one_clear_400(client, method, path, body):
    resp = client.request(method, path, json=body)
    assert resp.status_code == 400
    assert "control characters" in resp.json()["error"]


def test_ordinary_json_requests_pass_the_text_guard(client):
    resp = client.post("/api/v1/devices/enroll", json={"device": "d1", "group": "lab\twest", "tags": ["é"]})
    assert resp.status_code in (200, 201), resp.text


def test_a_pretty_printed_manifest_is_signed_in_canonical_form_under_one_digest(client, memhub, bundle_dir):
    """Signed bytes are canonical JSON whatever was uploaded: the same manifest pretty-printed
    by hand is the same bundle, and what the hub signs parses back to the same document."""
    import json

    from protocol.bundle import MANIFEST_FILE
    from protocol.codec import canonical

    d = bundle_dir(model_bytes=b"\x05" * 3000)
    plain = push(client, d)
    env = Envelope.parse((d / MANIFEST_FILE).read_bytes())
    pretty = json.dumps(json.loads(env.payload), indent=4, sort_keys=False).encode()
    assert pretty != env.payload
    (d / MANIFEST_FILE).write_bytes(Envelope(env.payload_type, pretty, ()).to_bytes())
    again = push(client, d)
    assert again["digest"] == plain["digest"]
    hub, _ = memhub
    stored = Envelope.parse((hub.fleet.store.root / "bundles" / plain["digest"] / MANIFEST_FILE).read_bytes())
    assert stored.payload == canonical(json.loads(pretty))


def test_a_bundle_cut_into_more_chunks_than_a_broker_session_queues_is_refused_naming_the_count(
    client, bundle_dir, monkeypatch
):
    """hub.store.MAX_ARCHIVE_CHUNKS (what edgefleet.conf sizes each session's queue for) lowered to
    2 here: a 200 kB model is 4 chunks of 64 KiB. The push is a 400 that says how many chunks,
    the limit and the remedy; nothing is stored."""
    monkeypatch.setattr(hub_store, "MAX_ARCHIVE_CHUNKS", 2)
    d = bundle_dir(model_bytes=os.urandom(200_000))
    env, arts = read_bundle_dir(d)
    r = client.post(
        "/api/v1/bundles", content=pack_archive(env, arts), headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "4 chunks of 65536 bytes" in err and "over the 2" in err and "--chunk-size" in err, err
    assert client.get("/api/v1/bundles").json()["total"] == 0
