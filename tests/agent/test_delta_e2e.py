"""Delta fallbacks through a real agent process and a real broker (agent/delta.py rules 1 and 4):
a delta whose chunks never arrive, and a delta from a bundle that is not the active one, both end
in a verified install from full chunks, with the reason reported; a delta held up by a link that
goes dark for longer than the stall wait is kept, because the broker is asked first (agent.stall)."""

from __future__ import annotations

import time

import pytest

from bench._delta_models import bundles as delta_bundles
from hub.deltas import make
from protocol.bundle import ChunkPlan, parse_manifest
from protocol.delta import ALGO, DeltaRef, reference
from protocol.messages import Desired
from protocol.topics import Kind, Topic
from tests.reliability.faultproxy import FaultProxy

from .fakehub import FakeHub, Published

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def desire_with_delta(hub: FakeHub, device: str, pub: Published, delta: DeltaRef) -> None:
    seq = hub.seqs.get(device, 0) + 1
    hub.seqs[device] = seq
    now = int(time.time())
    d = Desired(device, seq, now, now + 3600, "install", pub.ref, delta=delta)
    hub._c.publish(str(Topic.for_device(Kind.DESIRED, device)), d.seal([hub.targets_key]), qos=1, retain=True)


@pytest.fixture
def versions(trust, hub: FakeHub):
    paths = delta_bundles()  # TensorFlow training and builds the first time (cached)
    out = {}
    for v in ("base", "head"):
        env, arts, archive = trust.sign_dir(paths[v])
        out[v] = (hub.publish_bundle(env, archive), parse_manifest(env.payload), arts)
    return out


def install_base(hub: FakeHub, make_agent, base: Published):
    agent = make_agent("dev1").start()
    hub.desire("dev1", base)
    hub.report("dev1", "commit", "ok", base.ref.digest)
    return agent


def download_ok(hub: FakeHub, digest: str):
    return hub.report("dev1", "download", "ok", digest)


def test_a_delta_whose_chunks_never_arrive_falls_back_to_full_chunks_and_installs(hub, make_agent, versions):
    base, head = versions["base"], versions["head"]
    install_base(hub, make_agent, base[0])
    ref = reference(base[1], lambda a: base[2][a.name])
    delta = make(ref, head[0].archive)  # named in the document, never published
    desire_with_delta(hub, "dev1", head[0], DeltaRef(base[0].ref.digest, ALGO, ChunkPlan.of(delta, 1024)))
    hub.report("dev1", "commit", "ok", head[0].ref.digest)
    stalled = [r for r in hub.reports if r.stage == "download" and "delta fallback (stalled)" in r.detail]
    assert stalled and stalled[0].reason == "timeout"
    assert download_ok(hub, head[0].ref.digest).metrics["delta"] == "stalled"


def test_a_delta_from_a_bundle_that_is_not_active_is_not_used(hub, make_agent, versions):
    base, head = versions["base"], versions["head"]
    install_base(hub, make_agent, base[0])
    ref = reference(base[1], lambda a: base[2][a.name])
    delta = make(ref, head[0].archive)
    desire_with_delta(hub, "dev1", head[0], DeltaRef("e" * 64, ALGO, ChunkPlan.of(delta, 1024)))
    hub.report("dev1", "commit", "ok", head[0].ref.digest)
    assert any("not used (base_not_active)" in r.detail for r in hub.reports)
    assert download_ok(hub, head[0].ref.digest).metrics["delta"] == "base_not_active"


def test_a_delta_held_up_by_a_dark_link_longer_than_the_stall_wait_is_applied_not_given_up(
    hub, make_agent, versions, mosquitto
):
    """The delta's chunks are queued for the device while its link is dark for 7 s; the stall wait
    is 3 s (3 x fetch_repair_s). The device probes the broker; the answer comes behind the queued
    chunks, so the delta is kept and applied. (Before ADR 0020's rule reached deltas, it fell back
    to full chunks at 3 s.)"""
    base, head = versions["base"], versions["head"]
    link = FaultProxy(mosquitto.port, rate_bps=1e9, delay_s=0.0)
    try:
        make_agent("dev1", broker=f"mqtt://127.0.0.1:{link.port}", keepalive_s=30).start()
        hub.desire("dev1", base[0])
        hub.report("dev1", "commit", "ok", base[0].ref.digest)
        delta = make(reference(base[1], lambda a: base[2][a.name]), head[0].archive)
        plan = ChunkPlan.of(delta, 1024)
        desire_with_delta(hub, "dev1", head[0], DeltaRef(base[0].ref.digest, ALGO, plan))
        hub.wait(lambda: any("-byte delta from" in r.detail for r in hub.reports), what="the delta fetch to start")
        time.sleep(0.5)  # its subscription reaches the broker
        link.dark.set()
        for i in range(len(plan.chunks)):
            topic = Topic.delta(head[0].plan.sha256, base[0].ref.digest, i)
            hub._c.publish(str(topic), delta[i * 1024 : (i + 1) * 1024], qos=1, retain=True)
        time.sleep(7.0)
        link.dark.clear()
        hub.report("dev1", "commit", "ok", head[0].ref.digest)
        assert not any("delta fallback" in r.detail for r in hub.reports), [r.detail for r in hub.reports]
        assert download_ok(hub, head[0].ref.digest).metrics["delta"] == "applied"
    finally:
        link.close()
