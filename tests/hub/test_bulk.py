"""Bulk actions on devices (issue 17): tag, untag, set the group and retry failed installs for
a bounded list of ids, with one result per id and never a silent partial; role-checked and
audited. Over the real API and a real SQLite/PostgreSQL registry, device traffic through ingest."""

from __future__ import annotations

import pytest

from hub.bulk import MAX_IDS, retry_verdict

from .conftest import OPERATOR, VIEWER
from .helpers import report, status
from .test_api import push


def op(client, body: dict, token: str = OPERATOR):
    return client.post("/api/v1/devices/bulk", json=body, headers={"Authorization": f"Bearer {token}"})


def results(r) -> dict[str, tuple[str, str]]:
    assert r.status_code == 200, r.text
    return {x["device"]: (x["status"], x["detail"]) for x in r.json()["results"]}


def test_tag_untag_and_group_answer_per_id_and_are_audited(client, memhub):
    hub, _ = memhub
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d)) for d in ("a", "b", "c")])
    r = op(client, {"action": "tag", "devices": ["a", "b", "ghost", "a"], "tag": "lab"})
    assert [x["device"] for x in r.json()["results"]] == ["a", "b", "ghost"]  # asked order, once each
    assert results(r) == {"a": ("ok", "changed"), "b": ("ok", "changed"), "ghost": ("unknown", "no such device")}
    assert (r.json()["ok"], r.json()["unknown"], r.json()["refused"]) == (2, 1, 0)
    assert results(op(client, {"action": "tag", "devices": ["a"], "tag": "lab"}))["a"] == (
        "ok",
        "unchanged: already so",
    )
    assert client.get("/api/v1/devices?tag=lab").json()["total"] == 2
    assert results(op(client, {"action": "untag", "devices": ["b"], "tag": "lab"}))["b"][0] == "ok"
    assert [d["device_id"] for d in client.get("/api/v1/devices?tag=lab").json()["items"]] == ["a"]
    assert results(op(client, {"action": "set_group", "devices": ["b", "c"], "group": "east"}))["c"][0] == "ok"
    assert client.get("/api/v1/devices?group=east").json()["total"] == 2
    audit = client.get("/api/v1/audit?action=device.bulk.tag").json()["items"]
    assert len(audit) == 1 and audit[0]["actor"].startswith("operator") and audit[0]["detail"]["devices"] == ["a", "b"]
    assert client.get("/api/v1/audit?action=device.bulk.set_group").json()["items"][0]["detail"]["group"] == "east"


def test_a_bulk_tag_retargets_a_rollout_to_that_tag(client, memhub, bundle_dir):
    hub, pub = memhub
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d)) for d in ("a", "b")])
    b = push(client, bundle_dir())
    client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"tag": "canary"}})
    assert not [m for m in pub.sent if m.topic.endswith("/desired")]
    op(client, {"action": "tag", "devices": ["b"], "tag": "canary"})
    assert [m.topic for m in pub.sent if m.topic.endswith("/desired")] == ["ef/v1/dev/b/desired"]


def test_retry_reissues_a_failed_install_and_refuses_the_rest_with_the_reason(client, memhub, bundle_dir):
    hub, pub = memhub
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d)) for d in ("a", "b", "idle")])
    b = push(client, bundle_dir())
    policy = {"gates": {"max_install_failure_rate": 1.0}}  # a failure does not pause this rollout
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": b["digest"], "target": {"devices": ["a", "b"]}, "policy": policy}
    ).json()["id"]
    hub.ingest.handle(
        [
            ("ef/v1/dev/a/report", report("a", 1, 1, stage="download", status="progress")),
            ("ef/v1/dev/b/report", report("b", 1, 1, stage="selftest", status="failed", reason="selftest_failed")),
        ]
    )
    before = len([m for m in pub.sent if m.topic == "ef/v1/dev/b/desired"])
    r = op(client, {"action": "retry", "devices": ["a", "b", "idle", "ghost"]})
    got = results(r)
    assert got["b"] == ("ok", f"re-issued in rollout {rid} (issued)")
    assert got["a"] == ("refused", f"nothing to retry: its install in rollout {rid} is installing")
    assert got["idle"] == ("refused", "not in a running or completed rollout: nothing to retry")
    assert got["ghost"] == ("unknown", "no such device")
    assert len([m for m in pub.sent if m.topic == "ef/v1/dev/b/desired"]) == before + 1  # a new signed doc
    row = next(d for d in client.get(f"/api/v1/rollouts/{rid}").json()["devices"] if d["device_id"] == "b")
    assert row["state"] == "issued" and row["attempts"] == 1 and row["reason"].startswith("retry by operator")
    audit = client.get("/api/v1/audit?action=rollout.retry").json()["items"]
    assert audit[0]["target"] == rid and audit[0]["detail"] == {"devices": ["b"]}


def test_retry_in_a_paused_rollout_is_refused_until_it_is_resumed(client, memhub, bundle_dir):
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/b/status", status("b"))])
    b = push(client, bundle_dir())
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}}).json()["id"]
    hub.ingest.handle(
        [("ef/v1/dev/b/report", report("b", 1, 1, stage="selftest", status="failed", reason="selftest_failed"))]
    )
    assert client.get(f"/api/v1/rollouts/{rid}").json()["phase"] == "paused"  # the failure gate
    status_, detail = results(op(client, {"action": "retry", "devices": ["b"]}))["b"]
    assert (
        status_ == "refused"
        and detail == f"rollout {rid} is paused; a retry needs it running or completed (resume it first)"
    )


def test_bad_bulk_requests_are_refused_whole_with_the_reason(client, memhub):
    hub, _ = memhub
    hub.ingest.handle([("ef/v1/dev/a/status", status("a"))])
    assert op(client, {"action": "tag", "devices": ["a"]}, VIEWER).status_code == 403
    r = op(client, {"action": "tag", "devices": ["a"]})
    assert r.status_code == 400 and r.json()["error"] == "bad tag: tag needs a non-empty tag, got None"
    assert op(client, {"action": "set_group", "devices": ["a"]}).status_code == 400
    assert op(client, {"action": "tag", "devices": [], "tag": "x"}).status_code == 422
    assert (
        op(client, {"action": "tag", "devices": [f"d{i}" for i in range(MAX_IDS + 1)], "tag": "x"}).status_code == 422
    )
    assert op(client, {"action": "reboot", "devices": ["a"]}).status_code == 422
    assert op(client, {"action": "tag", "devices": ["../etc"], "tag": "x"}).status_code == 422
    r = op(client, {"action": "tag", "devices": [f"d{i}" for i in range(MAX_IDS)], "tag": "x"})
    assert r.status_code == 200 and r.json()["unknown"] == MAX_IDS  # the bound is inclusive


@pytest.mark.parametrize(
    "rollout,phase,state,expect",
    [
        (None, "", "", "not in a running or completed rollout"),
        ("r1", "running", "installed", "its install in rollout r1 is installed"),
        ("r1", "running", "issued", "its install in rollout r1 is issued"),
        ("r1", "awaiting_approval", "failed", "rollout r1 is awaiting_approval"),
        ("r1", "paused", "timed_out", "rollout r1 is paused"),
        ("r1", "running", "failed", None),
        ("r1", "completed", "timed_out", None),
    ],
)
def test_retry_verdict(rollout, phase, state, expect):
    v = retry_verdict("d", rollout, phase, state)
    assert (v is None) if expect is None else (v is not None and v.status == "refused" and expect in v.detail)
