"""Rollouts on model channels over a real SQLite registry: each document changes one channel's
entry and carries the others over at their seq; a device that only ever had default rollouts
gets the documents it always got; a rollout on one channel supersedes nothing on another."""

from __future__ import annotations

from .helpers import report, status
from .test_api import push
from .test_rollouts import desired_of

NOW_POLICY = {"cohorts": ["100%"], "soak_s": 0}


def rollout(client, digest: str, channel: str | None = None, device: str = "d0", policy=None):
    body = {"bundle": digest, "target": {"devices": [device]}, "policy": policy or NOW_POLICY}
    if channel:
        body["channel"] = channel
    return client.post("/api/v1/rollouts", json=body)


def test_default_rollouts_keep_the_single_model_documents(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    v1 = push(client, bundle_dir(version="1.0.0"))
    hub.ingest.handle([("ef/v1/dev/d0/status", status("d0"))])
    assert rollout(client, v1["digest"]).status_code == 201
    doc = desired_of(pub, keys_dir, "d0")
    assert doc.channels == {} and doc.since is None and doc.bundle.digest == v1["digest"]
    assert b"channels" not in pub.retained["ef/v1/dev/d0/desired"]


def test_a_channel_rollout_keeps_the_default_entry_at_its_seq_and_supersedes_nothing(
    client, memhub, bundle_dir, keys_dir
):
    hub, pub = memhub
    a = push(client, bundle_dir(version="1.0.0"))
    b = push(client, bundle_dir(version="2.0.0"))
    c = push(client, bundle_dir(version="3.0.0"))
    hub.ingest.handle([("ef/v1/dev/d0/status", status("d0"))])
    r_a = rollout(client, a["digest"]).json()["id"]
    first = desired_of(pub, keys_dir, "d0")
    r_b = rollout(client, b["digest"], "second").json()
    assert r_b["channel"] == "second" and r_b["counts"] == {"issued": 1}
    second = desired_of(pub, keys_dir, "d0")
    assert second.seq == first.seq + 1 and second.since == first.seq and second.bundle.digest == a["digest"]
    entry = second.channels["second"]
    assert (entry.seq, entry.action, entry.bundle.digest, entry.rollout) == (
        second.seq,
        "install",
        b["digest"],
        r_b["id"],
    )
    assert client.get(f"/api/v1/rollouts/{r_a}").json()["counts"] == {"issued": 1}  # not superseded

    # the channel's report (matched by its seq) completes its rollout; the default's is untouched
    hub.ingest.handle([("ef/v1/dev/d0/report", report("d0", 1, second.seq, bundle=b["digest"]))])
    assert client.get(f"/api/v1/rollouts/{r_b['id']}").json()["counts"] == {"installed": 1}
    assert client.get(f"/api/v1/rollouts/{r_a}").json()["counts"] == {"issued": 1}

    # a new default rollout: the second channel's entry rides along at its own seq
    rollout(client, c["digest"])
    third = desired_of(pub, keys_dir, "d0", second.seq)
    assert third.since is None and third.bundle.digest == c["digest"]
    assert third.channels["second"] == entry
    assert client.get(f"/api/v1/rollouts/{r_a}").json()["counts"] == {"cancelled": 1}  # same channel: superseded


def test_a_device_whose_default_channel_never_had_a_rollout_gets_no_default_entry(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    b = push(client, bundle_dir(version="2.0.0"))
    hub.ingest.handle([("ef/v1/dev/d0/status", status("d0"))])
    rollout(client, b["digest"], "detector")
    doc = desired_of(pub, keys_dir, "d0")
    assert doc.since == 0 and doc.channel("default") is None and doc.channels["detector"].bundle.digest == b["digest"]


def test_a_bad_channel_is_refused_naming_it(client, memhub, bundle_dir):
    hub, _ = memhub
    b = push(client, bundle_dir(version="2.0.0"))
    hub.ingest.handle([("ef/v1/dev/d0/status", status("d0"))])
    r = rollout(client, b["digest"], "Bad/Name")
    assert r.status_code in (400, 422) and "Bad/Name" in r.text
