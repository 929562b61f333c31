"""hub/views.py: an agent that announced device views gets the view of every bundle named to it
(built once, content-addressed, chunks published before the document), an older agent the full
archive; a delta for a view agent goes from the base's view to the target's."""

from __future__ import annotations

import io
import os

from agent.delta import apply
from hub import bundles, desired, views
from hub.models import Bundle, Device
from protocol.bundle import MANIFEST_FILE, Artifact, Manifest, read_archive
from protocol.delta import base_parts, unsigned, view_manifest
from protocol.messages import parse_desired_payload
from protocol.signing import Envelope, seal
from protocol.topics import Kind, Topic
from protocol.view import FEATURE, needed

from .test_api import push
from .test_deltas import two_versions

NEW_AGENT = {"board": "rpi4", "features": [FEATURE]}
OLD_AGENT = {"board": "rpi4"}


def _issue(hub, digest: str, inventory: dict, active: str | None = None):
    with hub.fleet.session() as s:
        dev = s.get(Device, "dev1") or Device(id="dev1")
        dev.inventory, dev.active_digest = inventory, active
        s.add(dev)
        out = desired.issue(hub.fleet, s, dev, s.get(Bundle, digest), "install", "r1")
        s.commit()
    return parse_desired_payload(Envelope.parse(out.payload).payload), out


def test_an_agent_that_announced_views_gets_the_view_and_its_chunks_first(memhub, client, bundle_dir):
    hub, pub = memhub
    v1 = push(client, bundle_dir())
    doc, _ = _issue(hub, v1["digest"], NEW_AGENT)
    assert doc.bundle is not None and doc.bundle.view is not None
    view = doc.bundle.view
    store = hub.fleet.store
    m = store.manifest(v1["digest"])
    assert list(view.artifacts) == [a.name for a in needed(m)] == ["model_int8.tflite", "labels.txt", "baseline.json"]
    assert doc.bundle.archive.sha256 == v1["archive_sha256"]  # the full archive stays named
    data = store.archive(view.plan.sha256)
    assert len(data) == view.plan.size < v1["size"]
    got: dict[str, bytes] = {}
    manifest, digest = read_archive(
        io.BytesIO(data),
        hub.fleet.keys.root,
        len(data),
        lambda a, b: got.__setitem__(a.name, b),
        only=view.artifacts,
    )
    assert digest == v1["digest"] and set(got) == set(view.artifacts)
    chunks = [
        t for t in pub.retained if Topic.parse(t).kind is Kind.CHUNK and Topic.parse(t).digest == view.plan.sha256
    ]
    assert len(chunks) == len(view.plan.chunks)
    again, _ = _issue(hub, v1["digest"], NEW_AGENT)
    assert again.bundle is not None and again.bundle.view == view  # built once, content-addressed
    assert views.plan_of_archive(hub.fleet, view.plan.sha256) == view.plan  # fetch repairs find it
    assert [m.payload for m in bundles.plan_chunk_messages(hub.fleet, view.plan, [0])] == [data[: view.plan.chunk_size]]


def test_an_older_agent_gets_the_full_archive_and_document_bytes_without_a_view(memhub, client, bundle_dir):
    hub, _ = memhub
    v1 = push(client, bundle_dir())
    doc, out = _issue(hub, v1["digest"], OLD_AGENT)
    assert doc.bundle is not None and doc.bundle.view is None and b'"view"' not in out.payload
    assert doc.bundle.fetched().archive.sha256 == v1["archive_sha256"]


def test_a_bundle_with_nothing_to_leave_out_has_no_view(memhub, client, tmp_path):
    hub, _ = memhub
    d = tmp_path / "bare"
    d.mkdir()
    files = {"model_int8.tflite": ("tflite_int8", os.urandom(3000)), "labels.txt": ("labels", b"a\nb\n")}
    for n, (_, data) in files.items():
        (d / n).write_bytes(data)
    m = Manifest("bare", "1", 1, tuple(Artifact.of(n, r, data) for n, (r, data) in files.items()))
    (d / MANIFEST_FILE).write_bytes(seal("manifest", m.to_dict(), []).to_bytes())
    bare = push(client, d)
    doc, _ = _issue(hub, bare["digest"], NEW_AGENT)
    assert doc.bundle is not None and doc.bundle.view is None  # the device fetches the full archive
    assert (hub.fleet.store.root / "views" / f"{bare['archive_sha256']}.json").read_text() == "{}"  # remembered


def test_a_view_agent_on_a_known_base_gets_a_delta_between_views(memhub, client, bundle_dir):
    hub, pub = memhub
    v1, v2, _ = two_versions(client, bundle_dir)
    doc, _ = _issue(hub, v2["digest"], NEW_AGENT, active=v1["digest"])
    assert doc.bundle is not None and doc.bundle.view is not None and doc.delta is not None and doc.delta.view
    target_sha = doc.bundle.view.plan.sha256
    topics = [Topic.parse(t) for t in pub.retained]
    mine = [t for t in topics if t.kind is Kind.DELTA and t.digest == target_sha]
    assert len(mine) == len(doc.delta.plan.chunks)
    data = b"".join(pub.retained[str(Topic.delta(target_sha, v1["digest"], i))] for i in range(len(mine)))
    store = hub.fleet.store
    base = view_manifest(store.manifest(v1["digest"]))
    parts = base_parts(
        base, unsigned(store.envelope(v1["digest"])), lambda a: store.artifact(v1["digest"], a.name) or b""
    )
    assert apply(doc.delta.algo, data, parts, doc.bundle.view.plan.size) == store.archive(target_sha)
    old, _ = _issue(hub, v2["digest"], OLD_AGENT, active=v1["digest"])
    assert old.delta is not None and not old.delta.view and old.bundle is not None and old.bundle.view is None


def test_a_fetch_request_for_a_view_archive_republishes_its_missing_chunks(memhub, client, bundle_dir):
    from protocol.messages import FetchRequest

    hub, pub = memhub
    v1 = push(client, bundle_dir(model_bytes=bytes(range(256)) * 1000))  # a view of several chunks
    doc, _ = _issue(hub, v1["digest"], NEW_AGENT)
    assert doc.bundle is not None and doc.bundle.view is not None
    plan = doc.bundle.view.plan
    assert len(plan.chunks) >= 3
    before = len(pub.sent)
    hub.ingest.handle([("ef/v1/dev/dev1/fetch", FetchRequest("dev1", plan.sha256, (0, 2, 999)).to_bytes())])
    sent = [m for m in pub.sent[before:] if m.kind == "chunk"]
    assert [Topic.parse(m.topic).index for m in sent] == [0, 2]
    for m in sent:
        plan.check_chunk(int(Topic.parse(m.topic).index or 0), m.payload)
