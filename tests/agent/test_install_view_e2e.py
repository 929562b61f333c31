"""A device view over a real broker with a real agent process: the agent announces the feature,
fetches only the view's chunks, installs, self-tests, serves, and keeps serving after a restart;
a view without an artifact the device needs is refused by name and the active model stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocol.bundle import parse_manifest
from protocol.errors import Reason
from protocol.view import FEATURE, needed

from .bundles import coral_bundle

pytestmark = pytest.mark.integration

OMITTED = {
    "model_float.tflite": ("tflite_float", os.urandom(150_000)),
    "model.onnx": ("onnx", os.urandom(150_000)),
    "report.json": ("report", b'{"top1": 0.7}'),
}


def _published(tmp_path: Path, coral_models: Path, trust, hub, version: str, drop: str | None = None):
    env, _, archive = trust.sign_dir(
        coral_bundle(tmp_path / f"b{version}", coral_models, version=version, extras=OMITTED)
    )
    names = [a.name for a in needed(parse_manifest(env.payload)) if a.name != drop]
    return hub.publish_bundle(env, archive, view=names), len(archive)


def test_device_view_is_fetched_installed_served_and_survives_a_restart(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    pub, full_size = _published(tmp_path, coral_models, trust, hub, "1")
    assert pub.ref.view is not None
    view_size = pub.ref.view.plan.size
    agent = make_agent("dev1").start()
    st = hub.wait(lambda: hub.status.get("dev1"), 30, "status")
    assert FEATURE in (st.inventory.features or ())
    hub.desire("dev1", pub)
    hub.report("dev1", "commit", "ok", pub.ref.digest)
    dl = hub.report("dev1", "download", "ok", pub.ref.digest)
    assert dl.metrics["received_bytes"] <= view_size < full_size - 300_000  # the view, not the archive
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and "cat" in out["top"][0]["label"] and out["bundle"]["digest"] == pub.ref.digest
    slot = agent.state_dir / "slots" / pub.ref.digest
    assert not (slot / "model.onnx").exists() and not (slot / "model_float.tflite").exists()
    agent.stop()
    hub.status.pop("dev1", None)
    agent.start()
    st = hub.wait(lambda: (s := hub.status.get("dev1")) and s.online and s.active and s, 60, "status after restart")
    assert st.active.digest == pub.ref.digest
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == pub.ref.digest
    assert not [r for r in hub.failures("dev1")], hub.failures("dev1")


def test_view_lacking_a_needed_artifact_is_refused_naming_it_and_the_active_model_stays(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    good, _ = _published(tmp_path, coral_models, trust, hub, "1")
    agent = make_agent("dev1").start()
    hub.desire("dev1", good)
    hub.report("dev1", "commit", "ok", good.ref.digest)
    bad, _ = _published(tmp_path, coral_models, trust, hub, "2", drop="labels.txt")
    hub.desire("dev1", bad)
    rej = hub.report("dev1", "verify", "failed", bad.ref.digest)
    assert rej.reason == Reason.MISSING_ARTIFACT.value and "labels.txt" in rej.detail
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == good.ref.digest


def test_under_a_hub_that_names_no_view_the_agent_fetches_and_keeps_the_full_archive(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models, extras=OMITTED))
    pub = hub.publish_bundle(env, archive)  # an older hub: no "view" in the reference
    assert pub.ref.view is None
    agent = make_agent("dev1").start()
    hub.desire("dev1", pub)
    hub.report("dev1", "commit", "ok", pub.ref.digest)
    dl = hub.report("dev1", "download", "ok", pub.ref.digest)
    assert dl.metrics["received_bytes"] >= len(archive)
    held = {p.name for p in (agent.state_dir / "slots" / pub.ref.digest).iterdir()}
    assert {a.name for a in parse_manifest(env.payload).artifacts} <= held, held
