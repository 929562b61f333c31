"""hub/deltas.py: which devices get a delta, built once per (base, target), published once, and
named in the signed desired document."""

from __future__ import annotations

import os

from agent.delta import apply
from hub import deltas, desired
from hub.models import Bundle, Device
from protocol.delta import ALGOS, base_parts, unsigned
from protocol.messages import parse_desired_payload
from protocol.signing import Envelope
from protocol.topics import Kind, Topic

from .test_api import push


def two_versions(client, bundle_dir, changed: bytes | None = None) -> tuple[dict, dict, bytes]:
    model = os.urandom(30_000)
    v2_model = changed if changed is not None else model[:20_000] + os.urandom(300) + model[20_300:]
    return (
        push(client, bundle_dir(model_bytes=model)),
        push(client, bundle_dir(version="2", model_bytes=v2_model)),
        model,
    )


def rows(hub, v2: dict, active: str | None) -> tuple[Device, Bundle]:
    with hub.fleet.session() as s:
        b = s.get(Bundle, v2["digest"])
        s.expunge(b)
    return Device(id="dev1", active_digest=active), b


def test_a_device_on_a_known_base_gets_a_delta_that_patches_it_into_the_target_archive(memhub, client, bundle_dir):
    hub, _ = memhub
    v1, v2, _ = two_versions(client, bundle_dir)
    d, b = rows(hub, v2, v1["digest"])
    ref, msgs = deltas.for_device(hub.fleet, d, b)
    assert ref is not None and ref.base == v1["digest"] and ref.algo in ALGOS
    assert [Topic.parse(m.topic).kind for m in msgs] == [Kind.DELTA] * len(ref.plan.chunks)
    assert all(m.retain for m in msgs)
    data = b"".join(m.payload for m in msgs)
    store = hub.fleet.store
    head = unsigned(store.envelope(v1["digest"]))
    base = base_parts(store.manifest(v1["digest"]), head, lambda a: store.artifact(v1["digest"], a.name) or b"")
    target = store.archive(v2["archive_sha256"])
    assert apply(ref.algo, data, base, len(target)) == target
    assert len(data) < len(target) // 4
    again, msgs2 = deltas.for_device(hub.fleet, d, b)
    assert again == ref and msgs2 == []  # built and published once per (base, target)


def test_no_delta_without_a_known_base_or_for_the_active_bundle_itself(memhub, client, bundle_dir):
    hub, _ = memhub
    v1, v2, _ = two_versions(client, bundle_dir)
    for active in (None, v2["digest"], "f" * 64):  # unknown; the target; a bundle the hub never stored
        d, b = rows(hub, v2, active)
        assert deltas.for_device(hub.fleet, d, b) == (None, [])


def test_a_delta_larger_than_half_the_archive_is_not_offered(memhub, client, bundle_dir):
    hub, _ = memhub
    v1, v2, _ = two_versions(client, bundle_dir, changed=os.urandom(30_000))
    d, b = rows(hub, v2, v1["digest"])
    assert deltas.for_device(hub.fleet, d, b) == (None, [])
    cached = hub.fleet.store.root / "deltas" / f"{v2['archive_sha256']}-{v1['digest']}.zst"
    assert cached.read_bytes() == b""  # "not worth it" remembered, not rebuilt


def test_the_install_document_names_the_delta_and_its_chunks_are_published_before_it(memhub, client, bundle_dir):
    hub, pub = memhub
    v1, v2, _ = two_versions(client, bundle_dir)
    with hub.fleet.session() as s:
        dev = Device(id="dev1", active_digest=v1["digest"])
        s.add(dev)
        out = desired.issue(hub.fleet, s, dev, s.get(Bundle, v2["digest"]), "install", "r1")
        s.commit()
    doc = parse_desired_payload(Envelope.parse(out.payload).payload)
    assert doc.delta is not None and doc.delta.base == v1["digest"]
    assert doc.bundle is not None and doc.bundle.digest == v2["digest"]
    published = [t for t in pub.retained if Topic.parse(t).kind is Kind.DELTA]
    assert len(published) == len(doc.delta.plan.chunks)
    with hub.fleet.session() as s:
        dev = s.get(Device, "dev1")
        rb = desired.issue(hub.fleet, s, dev, s.get(Bundle, v2["digest"]), "rollback", "r1")
    assert parse_desired_payload(Envelope.parse(rb.payload).payload).delta is None


def test_an_agent_that_announced_members_2_gets_sub_records_and_an_older_one_members_1(memhub, client, bundle_dir):
    """A fine-tune moves int8 weights by one step: as byte-wise differences those compress better
    than as XORs, and only an agent that listed zstd-members-2 in its features is sent them."""
    import random

    from protocol.delta import ALGO_MEMBERS, ALGO_MEMBERS2

    hub, _ = memhub
    rng = random.Random(7)
    model = bytes(rng.getrandbits(8) for _ in range(30_000))
    stepped = bytes((b + rng.choice((1, 255))) & 0xFF if rng.random() < 0.3 else b for b in model)
    v1 = push(client, bundle_dir(model_bytes=model))
    v2 = push(client, bundle_dir(version="2", model_bytes=stepped))
    d, b = rows(hub, v2, v1["digest"])
    old_ref, _ = deltas.for_device(hub.fleet, d, b)
    d.inventory = {"features": [ALGO_MEMBERS2]}
    new_ref, msgs = deltas.for_device(hub.fleet, d, b)
    assert old_ref is not None and old_ref.algo == ALGO_MEMBERS
    assert new_ref is not None and new_ref.algo == ALGO_MEMBERS2 and new_ref.plan.size < old_ref.plan.size
    store = hub.fleet.store
    head = unsigned(store.envelope(v1["digest"]))
    base = base_parts(store.manifest(v1["digest"]), head, lambda a: store.artifact(v1["digest"], a.name) or b"")
    target = store.archive(v2["archive_sha256"])
    assert apply(new_ref.algo, b"".join(m.payload for m in msgs), base, len(target)) == target
