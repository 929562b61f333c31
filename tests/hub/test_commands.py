"""Remote diagnostics on the hub: who may issue a command, how often, that it is signed, sent,
audited and stored, and which device answers are kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hub.commands import Limit, Policy, prune, rate_verdict
from protocol.commands import Result, verify_command
from protocol.signing import load_root_unverified

from .conftest import OPERATOR, VIEWER
from .helpers import status

T = 1_800_000_000
P = Policy(device=Limit(3, 60), actor=Limit(5, 60))


@pytest.mark.parametrize(
    "device_times,actor_times,ok,retry,needle",
    [
        ([], [], True, 0, ""),
        ([T - 10, T - 5], [T - 10, T - 5], True, 0, ""),
        ([T - 50, T - 10, T - 5], [], False, 10, "device rate limit: 3 commands in the last 60 s, at most 3"),
        ([T - 60, T - 10, T - 5], [], True, 0, ""),  # the oldest has just left the window
        ([T - 59, T - 58, T - 57, T - 2], [], False, 2, "device rate limit: 4 commands"),
        ([], [T - 30, T - 20, T - 10, T - 5, T - 1], False, 30, "operator rate limit: 5 commands"),
        ([T - 40, T - 30, T - 1], [T - 50] * 5, False, 20, "device rate limit"),  # the device's is named first
        ([T + 5, T + 6, T + 7], [], True, 0, ""),  # the future (a skewed replica) does not count
    ],
)
def test_rate_limit_per_device_and_per_operator(device_times, actor_times, ok, retry, needle):
    v = rate_verdict(device_times, actor_times, T, P)
    assert (v.ok, v.retry_after) == (ok, retry) and needle in v.why


def online(hub, device: str = "dev1") -> None:
    hub.ingest.handle([(f"ef/v1/dev/{device}/status", status(device))])


def test_an_operator_command_is_signed_for_the_device_sent_audited_and_answered(client, memhub, keys_dir: Path):
    hub, pub = memhub
    online(hub)
    ops = TestClient(hub.app, headers={"Authorization": f"Bearer {OPERATOR}"})
    r = ops.post("/api/v1/devices/dev1/commands", json={"name": "logs", "lines": 20})
    assert r.status_code == 202, r.text
    cmd = r.json()
    assert cmd["status"] == "sent" and cmd["args"] == {"lines": 20} and cmd["actor"].startswith("operator:")
    sent = [m for m in pub.sent if m.topic == "ef/v1/dev/dev1/command"]
    assert len(sent) == 1 and not sent[0].retain and sent[0].qos == 1
    root = load_root_unverified((keys_dir / "root.json").read_bytes())
    got = verify_command(sent[0].payload, root, "dev1", set(), hub.fleet.clock())
    assert (got.id, got.name, got.log_lines) == (cmd["id"], "logs", 20)
    audit = client.get("/api/v1/audit?action=device.logs").json()["items"]
    assert audit and audit[0]["target"] == "dev1" and audit[0]["detail"]["command"] == cmd["id"]
    answer = Result(cmd["id"], "dev1", "logs", T, "ok", detail="2 lines", body={"lines": ["a", "b"]})
    hub.ingest.handle([("ef/v1/dev/dev1/result", answer.to_bytes())])
    shown = client.get(f"/api/v1/devices/dev1/commands/{cmd['id']}").json()
    assert shown["status"] == "ok" and shown["body"] == {"lines": ["a", "b"]} and shown["answered"]
    # a second answer for the same command is dropped, not stored over the first
    hub.ingest.handle([("ef/v1/dev/dev1/result", Result(cmd["id"], "dev1", "logs", T, "failed").to_bytes())])
    assert client.get(f"/api/v1/devices/dev1/commands/{cmd['id']}").json()["status"] == "ok"


def test_a_device_cannot_answer_another_devices_command(client, memhub):
    hub, _ = memhub
    online(hub, "dev1")
    online(hub, "dev2")
    cid = client.post("/api/v1/devices/dev1/commands", json={"name": "diagnostics"}).json()["id"]
    forged = Result(cid, "dev2", "diagnostics", T, "ok", body={"checks": []})
    hub.ingest.handle([("ef/v1/dev/dev2/result", forged.to_bytes())])
    hub.ingest.handle([("ef/v1/dev/dev1/result", Result(cid, "dev1", "logs", T, "ok").to_bytes())])  # wrong name
    assert client.get(f"/api/v1/devices/dev1/commands/{cid}").json()["status"] == "sent"
    # and a result whose payload names another device than its topic is malformed
    hub.ingest.handle([("ef/v1/dev/dev2/result", Result(cid, "dev1", "diagnostics", T, "ok").to_bytes())])
    assert client.get(f"/api/v1/devices/dev1/commands/{cid}").json()["status"] == "sent"
    assert any("does not match topic device" in q.reason for q in hub.ingest.quarantine)


def test_a_viewer_may_read_results_but_not_issue_commands(memhub):
    hub, _ = memhub
    online(hub)
    viewer = TestClient(hub.app, headers={"Authorization": f"Bearer {VIEWER}"})
    r = viewer.post("/api/v1/devices/dev1/commands", json={"name": "restart"})
    assert r.status_code == 403 and "needs operator" in r.json()["error"]
    assert viewer.get("/api/v1/devices/dev1/commands").status_code == 200


def test_commands_for_unknown_or_offline_devices_and_unknown_names_are_refused(client, memhub):
    hub, pub = memhub
    assert client.post("/api/v1/devices/ghost/commands", json={"name": "logs"}).status_code == 404
    hub.ingest.handle([("ef/v1/dev/dev1/status", status("dev1", online=False))])
    r = client.post("/api/v1/devices/dev1/commands", json={"name": "logs"})
    assert r.status_code == 409 and "offline" in r.json()["error"]
    r = client.post("/api/v1/devices/dev1/commands", json={"name": "format"})
    assert r.status_code == 422 and "name" in r.json()["error"]
    online(hub)
    r = client.post("/api/v1/devices/dev1/commands", json={"name": "selftest", "lines": 5})
    assert r.status_code == 400 and "selftest takes no arguments, got lines" in r.json()["error"]
    assert not [m for m in pub.sent if m.topic.endswith("/command")]


def test_too_many_commands_answer_429_with_retry_after(client, memhub):
    hub, pub = memhub
    online(hub)
    hub.fleet.clock = lambda: T
    for _ in range(Policy().device.count):
        assert client.post("/api/v1/devices/dev1/commands", json={"name": "selftest"}).status_code == 202
    r = client.post("/api/v1/devices/dev1/commands", json={"name": "selftest"})
    assert r.status_code == 429 and "device rate limit" in r.json()["error"]
    assert r.headers["retry-after"] == "60"
    assert len([m for m in pub.sent if m.topic.endswith("/command")]) == Policy().device.count
    hub.fleet.clock = lambda: T + 61
    assert client.post("/api/v1/devices/dev1/commands", json={"name": "selftest"}).status_code == 202


def test_an_unanswered_command_shows_expired_after_its_expiry(client, memhub):
    hub, _ = memhub
    online(hub)
    hub.fleet.clock = lambda: T
    cmd = client.post("/api/v1/devices/dev1/commands", json={"name": "diagnostics"}).json()
    hub.fleet.clock = lambda: cmd["expires"]
    page = client.get("/api/v1/devices/dev1/commands").json()
    assert page["total"] == 1 and page["items"][0]["status"] == "expired"


def test_commands_older_than_the_retention_are_pruned_with_their_answers(client, memhub):
    hub, _ = memhub
    online(hub)
    hub.fleet.clock = lambda: T
    client.post("/api/v1/devices/dev1/commands", json={"name": "logs"})
    hub.fleet.clock = lambda: T + 100
    client.post("/api/v1/devices/dev1/commands", json={"name": "diagnostics"})
    assert prune(hub.fleet, 100) == 0  # issued exactly 100 s ago: kept
    hub.fleet.clock = lambda: T + 101
    assert prune(hub.fleet, 100) == 1
    assert [c["name"] for c in client.get("/api/v1/devices/dev1/commands").json()["items"]] == ["diagnostics"]
