"""hub: an agent that announced it reads chunk plans by reference (protocol.planref) gets the
plan's hash in its signed document and the plan once, retained, on the bundle's plan topic; an
older agent keeps the inline list; a fetch request naming no chunk publishes the plan again."""

from __future__ import annotations

import time

from hub.keys import HubKeys
from protocol import planref
from protocol.messages import FetchRequest, verify_desired
from protocol.topics import Topic

from .helpers import report, status
from .test_api import push


def test_a_plan_by_reference_agent_gets_a_small_document_and_the_plan_once_on_its_topic(
    client, memhub, bundle_dir, keys_dir
):
    hub, pub = memhub
    hub.ingest.handle(
        [(f"ef/v1/dev/new{i}/status", status(f"new{i}", features=[planref.FEATURE])) for i in range(3)]
        + [("ef/v1/dev/old0/status", status("old0"))]
    )
    b = push(client, bundle_dir(model_bytes=bytes(range(256)) * 2000))  # several chunks
    r = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}})
    assert r.status_code == 201, r.text
    root, now = HubKeys.load(keys_dir).root, int(time.time())
    new = verify_desired(pub.retained["ef/v1/dev/new0/desired"], root, "new0", 0, now)
    old = verify_desired(pub.retained["ef/v1/dev/old0/desired"], root, "old0", 0, now)
    assert old.bundle is not None and not old.bundle.unresolved and old.bundle.plan_ref is None
    assert new.bundle is not None and new.bundle.unresolved
    assert len(pub.retained["ef/v1/dev/new0/desired"]) < len(pub.retained["ef/v1/dev/old0/desired"]) - 5 * 64
    # the plan message: published once for the three devices, before their documents
    topic = str(Topic.plan(b["archive_sha256"]))
    kinds = [m.kind for m in pub.sent]
    assert pub.topics("plan") == [topic] and kinds.index("plan") < kinds.index("desired")
    full = new.bundle.resolve(pub.retained[topic])
    assert full.archive == old.bundle.archive  # the same chunk list the older agent got inline


def test_a_fetch_request_naming_no_chunk_publishes_the_plan_again_at_most_once_per_interval(client, memhub, bundle_dir):
    hub, pub = memhub
    hub.ingest.handle([("ef/v1/dev/new0/status", status("new0", features=[planref.FEATURE]))])
    b = push(client, bundle_dir())
    client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}})
    sha = b["archive_sha256"]
    pub.retained.pop(str(Topic.plan(sha)))  # a broker that lost its retained messages
    before = len(pub.sent)
    ask = ("ef/v1/dev/new0/fetch", FetchRequest("new0", sha, ()).to_bytes())
    hub.ingest.handle([ask])
    hub.ingest.handle([ask])  # a second device asking at once: the same message already went out
    again = [m for m in pub.sent[before:] if m.kind == "plan"]
    assert len(again) == 1 and again[0].retain and again[0].topic == str(Topic.plan(sha))
    assert not [m for m in pub.sent[before:] if m.kind == "chunk"]  # no chunk named, none sent
    messages = hub.fleet.metrics.messages
    assert messages.labels("fetch", "stored")._value.get() == 1
    assert messages.labels("fetch", "throttled")._value.get() == 1


def test_every_broker_connect_publishes_the_plans_of_published_bundles(client, memhub, bundle_dir, keys_dir):
    """A broker that lost its retained messages, or bundles published before the hub wrote plans:
    the plans are retained again on each connect, so no agent waits a repair interval for one."""
    hub, pub = memhub
    hub.ingest.handle([("ef/v1/dev/d0/status", status("d0"))])
    b = push(client, bundle_dir())
    never = push(client, bundle_dir(version="9.9.9"))  # stored, never rolled out: nothing to publish
    client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}})
    inline = verify_desired(
        pub.retained["ef/v1/dev/d0/desired"], HubKeys.load(keys_dir).root, "d0", 0, int(time.time())
    )
    pub.retained.clear()
    before = len(pub.sent)
    hub._on_connected()
    plans = [m for m in pub.sent[before:] if m.kind == "plan"]
    assert [m.topic for m in plans] == [str(Topic.plan(b["archive_sha256"]))] and plans[0].retain
    assert inline.bundle is not None and plans[0].payload == planref.plan_bytes(inline.bundle.archive)
    assert str(Topic.plan(never["archive_sha256"])) not in pub.retained


def test_an_agent_downgraded_below_plans_by_reference_is_issued_its_document_again_inline(
    client, memhub, bundle_dir, keys_dir
):
    """An older agent refuses a document that names its chunk plan by reference as malformed:
    the status that stops announcing the feature gets the device the same document, every list
    inline, under a new seq whose default-channel entry keeps the seq its rollout issued."""
    hub, pub = memhub
    feature = {"features": [planref.FEATURE]}
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d, **feature)) for d in ("down", "kept")])
    b = push(client, bundle_dir(model_bytes=bytes(range(256)) * 2000))
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}}).json()["id"]
    root, now = HubKeys.load(keys_dir).root, int(time.time())
    first = verify_desired(pub.retained["ef/v1/dev/down/desired"], root, "down", 0, now)
    kept = pub.retained["ef/v1/dev/kept/desired"]
    assert first.bundle is not None and first.bundle.unresolved

    before = len(pub.sent)  # its last will (offline, the board only) is not a downgrade
    hub.ingest.handle([("ef/v1/dev/down/status", status("down", online=False, ts=1001))])
    assert not [m for m in pub.sent[before:] if m.kind == "desired"]
    hub.ingest.handle([("ef/v1/dev/down/status", status("down", ts=1001))])  # the same device, an older agent
    again = verify_desired(pub.retained["ef/v1/dev/down/desired"], root, "down", first.seq, now)
    assert again.seq == first.seq + 1 and again.since == first.seq
    assert again.bundle is not None and again.bundle.plan_ref is None and not again.bundle.unresolved
    assert again.bundle.archive == first.bundle.resolve(pub.retained[str(Topic.plan(b["archive_sha256"]))]).archive
    default = again.channel("default")
    assert default is not None and default.seq == first.seq  # what the agent's reports will name
    assert pub.retained["ef/v1/dev/kept/desired"] == kept  # still announces it: untouched

    before = len(pub.sent)  # a second status of the downgraded agent, and the other's: nothing new
    hub.ingest.handle(
        [
            ("ef/v1/dev/down/status", status("down", ts=1002)),
            ("ef/v1/dev/kept/status", status("kept", ts=1001, **feature)),
        ]
    )
    assert not [m for m in pub.sent[before:] if m.kind == "desired"]

    hub.ingest.handle([("ef/v1/dev/down/report", report("down", 1, default.seq, "download", bundle=b["digest"]))])
    rows = {r["device_id"]: r for r in client.get(f"/api/v1/rollouts/{rid}").json()["devices"]}
    assert rows["down"]["state"] == "installing"  # the report matched the rollout's row
