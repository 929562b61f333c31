"""The hub after its online key changed (hub.rotation): everything it had signed with the old
key is signed again, in the order devices need it, and only once."""

from __future__ import annotations

import time

from sqlmodel import select

from hub import keys as hub_keys, rollout_rows, rotation
from hub.keys import HubKeys
from hub.models import Bundle, Rollout, RolloutDevice
from hub.rotation import stale
from protocol.bundle import verify_manifest
from protocol.messages import verify_desired
from protocol.signing import SigningKey

from .helpers import status
from .test_api import push


def _rotate(keys_dir) -> HubKeys:
    old = [SigningKey.from_pem(p.read_bytes()) for p in sorted(keys_dir.glob("root-[0-9].pem"))]
    hub_keys.rotate(keys_dir, old)
    return HubKeys.load(keys_dir)


def test_after_the_online_key_rotates_every_manifest_and_live_document_is_signed_again_once(
    client, memhub, bundle_dir, keys_dir
):
    hub, pub = memhub
    b = push(client, bundle_dir(version="1.0.0"))
    hub.ingest.handle([(f"ef/v1/dev/d{i}/status", status(f"d{i}")) for i in range(3)])
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}}).json()["id"]
    old_root = HubKeys.load(keys_dir).root
    before = {
        f"d{i}": verify_desired(pub.retained[f"ef/v1/dev/d{i}/desired"], old_root, f"d{i}", 0, int(time.time()))
        for i in range(3)
    }
    assert not stale(hub.fleet)

    new = _rotate(keys_dir)
    sent = len(pub.sent)
    assert rotation.reload_keys(hub.fleet)
    out = pub.sent[sent:]
    kinds = [m.kind for m in out]
    # manifests first, then the root, then the (re-published) chunks and the documents
    assert kinds.index("manifest") < kinds.index("root") < kinds.index("desired")
    manifest, digest = verify_manifest(pub.retained[f"ef/v1/bundle/{b['digest']}/manifest"], new.root)
    assert digest == b["digest"]
    for dev, old in before.items():
        d = verify_desired(pub.retained[f"ef/v1/dev/{dev}/desired"], new.root, dev, old.seq, int(time.time()))
        assert d.seq == old.seq + 1 and d.bundle.digest == b["digest"] and d.rollout == rid
        assert d.bundle.archive.sha256 != old.bundle.archive.sha256  # the archive carries the new signature
    with hub.fleet.session() as s:
        rows = s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)).all()
        assert {r.device_id: r.seq for r in rows} == {dev: old.seq + 1 for dev, old in before.items()}
        assert s.get(Bundle, b["digest"]).published
        kept = rollout_rows.load(hub.fleet, s, s.get(Rollout, rid))[1]  # the rows the hub kept moved too
        assert {d: row["seq"] for d, row in kept.items()} == {dev: old.seq + 1 for dev, old in before.items()}
    assert {m.topic for m in out if m.kind == "chunk"}, "the rebuilt archive's chunks are published"

    assert not stale(hub.fleet)
    sent = len(pub.sent)
    assert not rotation.reload_keys(hub.fleet)  # nothing new: nothing published
    assert pub.sent[sent:] == []


def test_a_hub_restarted_after_the_rotation_signs_again_when_it_connects(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    b = push(client, bundle_dir(version="1.0.0"))
    hub.ingest.handle([("ef/v1/dev/d0/status", status("d0"))])
    client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}})
    new = _rotate(keys_dir)
    hub.fleet.keys = new  # as a hub started after the rotation loads them
    assert stale(hub.fleet)
    hub._on_connected()
    assert not stale(hub.fleet)
    verify_manifest(pub.retained[f"ef/v1/bundle/{b['digest']}/manifest"], new.root)
    verify_desired(pub.retained["ef/v1/dev/d0/desired"], new.root, "d0", 0, int(time.time()))
