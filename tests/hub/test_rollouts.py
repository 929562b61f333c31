"""The rollout shell over a real SQLite registry: staged rollouts gated on device telemetry,
rollback as a new signed instruction, operator commands, alerts."""

from __future__ import annotations

import time

import pytest
from sqlmodel import select

from hub import ticker
from hub.keys import HubKeys
from hub.models import Alert, AuditEntry
from protocol.messages import verify_desired

from .helpers import report, status, telemetry
from .test_api import push

OLD_MS, SLOW_MS = 0.010, 0.045


def desired_of(pub, keys_dir, dev: str, trusted: int = 0):
    return verify_desired(
        pub.retained[f"ef/v1/dev/{dev}/desired"], HubKeys.load(keys_dir).root, dev, trusted, int(time.time())
    )


def fleet_on(hub, client, pub, bundle_dir, n: int):
    """n devices running bundle v1 with a telemetry history of ~10 ms p95."""
    v1 = push(client, bundle_dir(version="1.0.0"))
    hub.ingest.handle(
        [(f"ef/v1/dev/d{i}/status", status(f"d{i}", active=(v1["digest"], "digits", "1.0.0"))) for i in range(n)]
    )
    hub.ingest.handle(
        [(f"ef/v1/dev/d{i}/telemetry", telemetry(f"d{i}", 1, v1["digest"], (OLD_MS,) * 200)) for i in range(n)]
    )
    return v1


STAGED = {"preset": "staged", "soak_s": 0, "require_samples": True, "gates": {"max_p95_ratio": 1.5, "min_samples": 100}}


def test_slow_canary_is_rolled_back_and_the_rest_of_the_fleet_never_sees_it(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    v1 = fleet_on(hub, client, pub, bundle_dir, 10)
    v2 = push(client, bundle_dir(version="2.0.0-slow"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": STAGED}
    ).json()["id"]
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["counts"] == {"issued": 1, "pending": 9} and st["cohort_sizes"] == [1, 2, 5, 10]
    canary = [d["device_id"] for d in st["devices"] if d["state"] == "issued"][0]
    first = desired_of(pub, keys_dir, canary)
    assert first.bundle.digest == v2["digest"]
    hub.ingest.handle(
        [
            (f"ef/v1/dev/{canary}/report", report(canary, 1, first.seq, bundle=v2["digest"])),
            (f"ef/v1/dev/{canary}/status", status(canary, active=(v2["digest"], "digits", "2.0.0-slow"))),
        ]
    )
    hub.ingest.handle([(f"ef/v1/dev/{canary}/telemetry", telemetry(canary, 2, v2["digest"], (SLOW_MS,) * 200))])
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["phase"] == "rolled_back" and "p95_latency_ratio" in st["reason"]
    back = desired_of(pub, keys_dir, canary, first.seq)  # a NEW document, higher seq, previous bundle
    assert back.action == "rollback" and back.bundle.digest == v1["digest"] and back.seq > first.seq
    others = [f"d{i}" for i in range(10) if f"d{i}" != canary]
    assert all(f"ef/v1/dev/{d}/desired" not in pub.retained for d in others)
    with hub.fleet.session() as s:
        alert = s.exec(select(Alert).where(Alert.rollout == rid)).one()
    assert alert.kind == "rollout_gate" and "p95" in alert.message
    hub.ingest.handle([(f"ef/v1/dev/{canary}/status", status(canary, active=(v1["digest"], "digits", "1.0.0")))])
    assert client.get(f"/api/v1/rollouts/{rid}").json()["counts"] == {"rolled_back": 1, "cancelled": 9}


def test_good_model_walks_every_cohort_to_completion(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 10)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": STAGED}
    ).json()["id"]
    seq = 10
    for _ in range(10):
        st = client.get(f"/api/v1/rollouts/{rid}").json()
        if st["phase"] != "running":
            break
        batch = []
        for d in st["devices"]:
            if d["state"] == "issued":
                seq += 1
                dev = d["device_id"]
                batch += [
                    (f"ef/v1/dev/{dev}/report", report(dev, seq, d["seq"], bundle=v2["digest"])),
                    (f"ef/v1/dev/{dev}/telemetry", telemetry(dev, seq, v2["digest"], (OLD_MS,) * 200)),
                ]
        hub.ingest.handle(batch)
        ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["phase"] == "completed" and st["counts"] == {"installed": 10}
    assert {g["name"]: g["status"] for g in st["gates"]}["p95_latency_ratio"] == "pass"


def test_operator_commands_are_audited_and_illegal_ones_are_409(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    v1 = fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": {"preset": "staged"}}
    ).json()["id"]
    assert client.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409
    assert client.post(f"/api/v1/rollouts/{rid}/pause").json()["phase"] == "paused"
    assert client.post(f"/api/v1/rollouts/{rid}/resume").json()["phase"] == "running"
    r = client.post(f"/api/v1/rollouts/{rid}/rollback")
    assert r.json()["phase"] == "rolled_back"
    canary = [d for d in r.json()["devices"] if d["state"] == "rolling_back"][0]["device_id"]
    assert desired_of(pub, keys_dir, canary, 1).bundle.digest == v1["digest"]
    r = client.post(f"/api/v1/rollouts/{rid}/pause")
    assert r.status_code == 409 and "rolled_back" in r.json()["error"]
    with hub.fleet.session() as s:
        actions = [a.action for a in s.exec(select(AuditEntry).order_by(AuditEntry.id)).all()]
    assert actions[-4:] == ["rollout.create", "rollout.pause", "rollout.resume", "rollout.rollback"]


def test_a_command_answers_the_counts_it_made_even_where_counts_are_kept(client, memhub, bundle_dir, monkeypatch):
    from hub import tallies

    monkeypatch.setattr(tallies, "LARGE", 1)  # keep every count, as a fleet of 5,000+ devices does
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": {"preset": "staged"}}
    ).json()["id"]
    before = client.get(f"/api/v1/rollouts/{rid}").json()["counts"]  # kept from here on
    after = client.post(f"/api/v1/rollouts/{rid}/rollback").json()["counts"]
    assert after != before and "rolling_back" in after, (before, after)


def test_bad_policy_is_a_400_naming_the_field(client, bundle_dir):
    b = push(client, bundle_dir())
    r = client.post(
        "/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}, "policy": {"cohorts": ["1", "200%"]}}
    )
    assert r.status_code == 400 and "200%" in r.json()["error"]


def test_a_window_that_began_before_the_switch_is_not_held_against_the_new_model(client, memhub, bundle_dir):
    """Agents label a window by the bundle active when it closes, so the window spanning the
    switch carries the old model's samples under the new digest; the gates skip it."""
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": STAGED}
    ).json()["id"]
    canary = [d for d in client.get(f"/api/v1/rollouts/{rid}").json()["devices"] if d["state"] == "issued"][0]
    dev = canary["device_id"]
    hub.ingest.handle([(f"ef/v1/dev/{dev}/report", report(dev, 1, canary["seq"], bundle=v2["digest"]))])
    before_switch = int(time.time()) - 30
    hub.ingest.handle(
        [(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 2, v2["digest"], (SLOW_MS,) * 200, start=before_switch))]
    )
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["phase"] == "running" and st["cohort"] == 0
    assert {g["name"]: g["status"] for g in st["gates"]}["p95_latency_ratio"] == "insufficient_data"
    hub.ingest.handle([(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 3, v2["digest"], (OLD_MS,) * 200))])
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    assert st["cohort"] >= 1 and {g["name"]: g["status"] for g in st["gates"]}["p95_latency_ratio"] == "pass"


def test_shadow_that_disagrees_breaches_min_shadow_agreement_and_pauses_the_rollout(client, memhub, bundle_dir):
    """Shadow statistics exactly as agents send them (``samples`` compared, ``agreement`` as a
    fraction): half the answers disagree, below the policy's 0.9, so the canary's cohort breaches."""
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    policy = {**STAGED, "on_breach": "pause", "gates": {**STAGED["gates"], "min_shadow_agreement": 0.9}}
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": policy}
    ).json()["id"]
    canary = [d for d in client.get(f"/api/v1/rollouts/{rid}").json()["devices"] if d["state"] == "issued"][0]
    dev = canary["device_id"]
    hub.ingest.handle([(f"ef/v1/dev/{dev}/report", report(dev, 1, canary["seq"], bundle=v2["digest"]))])
    disagreeing = {"samples": 200, "errors": 0, "agreement": 0.5, "latency_delta_ms": 1.5}
    hub.ingest.handle(
        [(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 2, v2["digest"], (OLD_MS,) * 200, shadow=disagreeing))]
    )
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    gate = {g["name"]: g for g in st["gates"]}["shadow_agreement"]
    assert gate["status"] == "breach" and gate["value"] == 0.5 and gate["detail"] == "100/200 agree"
    assert st["phase"] == "paused" and st["cohort"] == 0 and "shadow_agreement" in st["reason"]


@pytest.mark.parametrize("recovering", [False, True])
def test_slow_windows_from_a_broker_recovery_are_left_out_of_the_gates_and_the_gates_say_so(
    client, memhub, bundle_dir, recovering
):
    """The same slow canary window breaches the p95 gate, unless it overlaps the period the
    hub's broker connection was down (and the minute after): then it is left out, counted in
    the gate's detail, and the rollout goes on."""
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": STAGED}
    ).json()["id"]
    canary = [d for d in client.get(f"/api/v1/rollouts/{rid}").json()["devices"] if d["state"] == "issued"][0]
    dev = canary["device_id"]
    now = int(time.time())
    if recovering:
        hub.fleet.note_recovery(now - 20, now - 5)
    hub.ingest.handle([(f"ef/v1/dev/{dev}/report", report(dev, 1, canary["seq"], bundle=v2["digest"]))])
    hub.ingest.handle(
        [(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 2, v2["digest"], (SLOW_MS,) * 200, start=now + 1))]
    )
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{rid}").json()
    p95 = {g["name"]: g for g in st["gates"]}["p95_latency_ratio"]
    if recovering:
        assert st["phase"] == "running" and p95["status"] == "insufficient_data"
        assert "2 windows from a recovery period left out" in p95["detail"]  # its own and the fleet's old one
    else:
        assert st["phase"] == "rolled_back" and p95["status"] == "breach"


NOW = {"cohorts": ["100%"], "soak_s": 0}


def test_a_late_commit_report_of_a_superseded_rollout_records_the_install_and_the_rollout_completes(
    client, memhub, bundle_dir
):
    """Ingest lags the devices: they committed rollout 1's bundle, but their reports are still
    queued when a newer rollout on the same channel supersedes their rows. The late reports
    (matched by rollout 1's desired_seq) record the installs, and rollout 1 ends."""
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    v3 = push(client, bundle_dir(version="3.0.0"))
    r1 = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": NOW}).json()
    seqs = {d["device_id"]: d["seq"] for d in r1["devices"]}
    assert r1["counts"] == {"issued": 3}
    hub.ingest.handle(
        [
            (f"ef/v1/dev/{d}/report", report(d, 1, q, "download", "progress", bundle=v2["digest"]))
            for d, q in seqs.items()
        ]
    )
    assert client.get(f"/api/v1/rollouts/{r1['id']}").json()["counts"] == {"installing": 3}
    r2 = client.post("/api/v1/rollouts", json={"bundle": v3["digest"], "target": {"all": True}, "policy": NOW}).json()
    assert client.get(f"/api/v1/rollouts/{r1['id']}").json()["counts"] == {"cancelled": 3}

    hub.ingest.handle([(f"ef/v1/dev/{d}/report", report(d, 2, q, bundle=v2["digest"])) for d, q in seqs.items()])
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{r1['id']}").json()
    assert st["counts"] == {"installed": 3}
    assert {d["reason"] for d in st["devices"]} == {f"superseded by rollout {r2['id']}"}  # still says it moved on
    assert st["phase"] == "completed"
    assert client.get(f"/api/v1/rollouts/{r2['id']}").json()["counts"] == {"issued": 3}  # the newer one goes on


def test_a_rollout_whose_every_device_was_superseded_completes_instead_of_running_forever(client, memhub, bundle_dir):
    """The staged preset holds cohorts for soak and samples; none of that can happen once a newer
    rollout took every device: rollout 1 completes, saying why, and a late report still counts."""
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    v3 = push(client, bundle_dir(version="3.0.0"))
    staged = {**STAGED, "soak_s": 3600}
    r1 = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": staged})
    r1 = r1.json()
    canary = [d for d in r1["devices"] if d["state"] == "issued"][0]
    client.post("/api/v1/rollouts", json={"bundle": v3["digest"], "target": {"all": True}, "policy": NOW})
    ticker.tick(hub.fleet)
    st = client.get(f"/api/v1/rollouts/{r1['id']}").json()
    assert st["counts"] == {"cancelled": 3}
    assert st["phase"] == "completed" and "3 device(s) superseded" in st["reason"]

    dev = canary["device_id"]
    hub.ingest.handle([(f"ef/v1/dev/{dev}/report", report(dev, 1, canary["seq"], bundle=v2["digest"]))])
    st = client.get(f"/api/v1/rollouts/{r1['id']}").json()
    assert st["counts"] == {"installed": 1, "cancelled": 2} and st["phase"] == "completed"


def test_rolling_back_an_older_rollout_does_not_undo_a_newer_one_and_is_409_when_it_holds_every_device(
    client, memhub, bundle_dir, keys_dir
):
    """v2 installed on d0-d2 (rollout 1, completed); rollout 2 then took d0 and d1 to v3. Rolling
    rollout 1 back sends only d2 back to v1: d0 and d1 keep rollout 2's document. Once a third
    rollout holds d2 too, rolling rollout 1 back would move nobody: 409 naming that rollout."""
    hub, pub = memhub
    v1 = fleet_on(hub, client, pub, bundle_dir, 3)
    v2, v3 = push(client, bundle_dir(version="2.0.0")), push(client, bundle_dir(version="3.0.0"))
    r1 = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": NOW}).json()
    hub.ingest.handle(
        [
            (f"ef/v1/dev/{d['device_id']}/report", report(d["device_id"], 1, d["seq"], bundle=v2["digest"]))
            for d in r1["devices"]
        ]
    )
    ticker.tick(hub.fleet)
    assert client.get(f"/api/v1/rollouts/{r1['id']}").json()["phase"] == "completed"
    two = {"devices": ["d0", "d1"]}
    r2 = client.post("/api/v1/rollouts", json={"bundle": v3["digest"], "target": two, "policy": NOW}).json()
    assert r2["counts"] == {"issued": 2}

    back = client.post(f"/api/v1/rollouts/{r1['id']}/rollback")
    assert back.status_code == 200, back.text
    body = back.json()
    assert (
        body["phase"] == "rolled_back"
        and f"2 device(s) left alone: newer rollout {r2['id']} holds them" in body["reason"]
    )
    assert {d["device_id"]: d["state"] for d in body["devices"]} == {
        "d0": "installed",
        "d1": "installed",
        "d2": "rolling_back",
    }
    assert desired_of(pub, keys_dir, "d2", 1).bundle.digest == v1["digest"]
    for dev in ("d0", "d1"):  # rollout 2's install still stands
        assert desired_of(pub, keys_dir, dev, 1).bundle.digest == v3["digest"]

    r1b = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": NOW}).json()
    hub.ingest.handle(
        [
            (f"ef/v1/dev/{d['device_id']}/report", report(d["device_id"], 2, d["seq"], bundle=v2["digest"]))
            for d in r1b["devices"]
        ]
    )
    ticker.tick(hub.fleet)
    r3 = client.post("/api/v1/rollouts", json={"bundle": v3["digest"], "target": {"all": True}, "policy": NOW}).json()
    refused = client.post(f"/api/v1/rollouts/{r1b['id']}/rollback")
    assert refused.status_code == 409 and f"held by newer rollout {r3['id']}" in refused.json()["error"]
    assert client.get(f"/api/v1/rollouts/{r1b['id']}").json()["phase"] == "completed"  # nothing changed
