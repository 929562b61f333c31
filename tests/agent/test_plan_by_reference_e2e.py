"""A chunk plan read by reference (protocol.planref) over a real broker with a real agent process:
the agent announces it, reads the plan once from the bundle's plan topic, installs and serves; a
forged plan on that topic changes nothing (the agent asks again and installs the signed one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import planref
from protocol.bundle import ChunkPlan, Requirements
from protocol.errors import Reason
from protocol.messages import BundleRef
from protocol.topics import Topic

from .bundles import coral_bundle

pytestmark = pytest.mark.integration


def test_an_agent_reads_the_plan_once_by_reference_installs_and_serves(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models))
    pub = hub.publish_plan(hub.publish_bundle(env, archive))
    agent = make_agent("dev1").start()
    st = hub.wait(lambda: hub.status.get("dev1"), 30, "status")
    assert planref.FEATURE in (st.inventory.features or ())
    doc = hub.desire("dev1", pub)
    assert doc.bundle is not None and "chunks" not in doc.bundle.to_dict()  # only the plan's hash went out
    dl = hub.report("dev1", "download", "ok", pub.ref.digest)
    assert dl.metrics["received_bytes"] == len(archive)
    hub.report("dev1", "commit", "ok", pub.ref.digest)
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == pub.ref.digest
    assert not hub.fetches and not hub.failures("dev1")  # the retained plan was there: nothing asked


def test_a_forged_plan_on_the_plan_topic_is_ignored_and_the_signed_one_is_asked_for(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models))
    pub = hub.publish_bundle(env, archive)
    p = pub.plan
    forged = ChunkPlan(p.size, p.sha256, p.chunk_size, ("0" * 64, *p.chunks[1:]))  # chunk 0 swapped
    pub = hub.publish_plan(pub, planref.plan_bytes(forged))
    agent = make_agent("dev1").start()
    hub.wait(lambda: hub.status.get("dev1"), 30, "status")
    hub.desire("dev1", pub)
    hub.report("dev1", "commit", "ok", pub.ref.digest)  # after fetch_repair_s the agent asked again
    asked = [f for f in hub.fetches if f.archive == p.sha256 and not f.missing]
    assert asked, hub.fetches
    assert not hub.failures("dev1")
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == pub.ref.digest
    assert "ignoring a chunk plan" in agent.log_text()


def test_an_agent_killed_mid_download_resumes_from_the_plan_it_kept_without_asking_for_it(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    agent = make_agent("dev1").start()
    hub.wait(lambda: (s := hub.status.get("dev1")) and s.online, 30, "agent online")
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models))
    n = -(-len(archive) // hub.chunk_size)
    first, second = set(range(n // 2)), set(range(n // 2, n))
    hub.serve_fetch = False  # the second half reaches the broker only when the hub publishes it
    pub = hub.publish_plan(hub.publish_bundle(env, archive, skip=second))
    hub.desire("dev1", pub)
    downloads = agent.state_dir / "downloads"
    bitmap = downloads / f"{pub.plan.sha256}.bitmap"
    hub.wait(lambda: bitmap.exists() and bitmap.read_bytes().count(1) == len(first), 120, "the first half on disk")
    assert (downloads / f"{pub.plan.sha256}.plan").read_bytes() == planref.plan_bytes(pub.plan)
    agent.kill()  # kill -9 with half of the bundle on disk and the plan beside it
    hub._c.publish(str(Topic.plan(pub.plan.sha256)), b"", qos=1, retain=True).wait_for_publish(10)  # gone
    hub.publish_bundle(env, archive, skip=first)
    agent.start()
    hub.report("dev1", "commit", "ok", pub.ref.digest, timeout=120)
    assert not [f for f in hub.fetches if not f.missing]  # never asked for the plan: it had kept it
    assert not hub.failures("dev1")
    assert not list(downloads.glob("*.plan"))  # removed with the finished download


def test_a_plan_too_big_for_the_agents_packet_size_fails_the_download_naming_both(trust, hub, make_agent):
    agent = make_agent("dev1").start()
    hub.wait(lambda: (s := hub.status.get("dev1")) and s.online, 30, "agent online")
    # 20 MB at 1 KiB chunks: ~20,000 hashes, a plan message over the 1 MiB packets the agent accepts
    stub = ChunkPlan(20_000_000, "e" * 64, 1024, ())
    ref = BundleRef("d" * 64, "big", "1", stub, Requirements(), plan_ref="f" * 64)
    hub.desire("dev1", None, ref=ref)
    failed = hub.report("dev1", "download", "failed")
    assert failed.reason == Reason.MALFORMED.value and "max_packet_bytes" in failed.detail, failed
    assert "20000000-byte archive" in failed.detail
    assert not hub.fetches  # it never waited for a plan the broker could not deliver
    code, _ = agent.http("GET", "/v1/status")
    assert code == 200
