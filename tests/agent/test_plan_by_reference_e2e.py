"""A chunk plan read by reference (protocol.planref) over a real broker with a real agent process:
the agent announces it, reads the plan once from the bundle's plan topic, installs and serves; a
forged plan on that topic changes nothing (the agent asks again and installs the signed one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol import planref
from protocol.bundle import ChunkPlan

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
