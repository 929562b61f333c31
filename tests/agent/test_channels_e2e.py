"""Model channels with a real agent process over a real broker: a device installed before
channels is its ``default`` channel; a second channel installs beside it from a document that
leaves the default's entry alone; both serve on their routes, both come back after a restart,
and rolling one back does not touch the other. The two models are Coral's co-compiled pair (one
Edge TPU's parameter cache for both); here, without an Edge TPU, each serves its CPU twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import Reason
from protocol.messages import ChannelDesired

from .bundles import BROKEN, MNV1, coral_bundle

pytestmark = pytest.mark.integration

CO_025 = "mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite"
CO_05 = "mobilenet_v1_0.5_160_quant_cocompiled_with_mobilenet_v1_0.25_128_quant_edgetpu.tflite"
MNV1_05 = "mobilenet_v1_0.5_160_quant.tflite"


def test_two_channels_install_serve_restart_and_roll_back_independently(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    def publish(name: str, model: str, twin: str, version: str = "1"):
        d = coral_bundle(
            tmp_path / f"{name}-{version}",
            coral_models,
            model,
            name=name,
            version=version,
            role="tflite_edgetpu",
            edgetpu="optional",
            cpu_twin=twin,
        )
        env, _, archive = trust.sign_dir(d)
        return hub.publish_bundle(env, archive)

    cls = publish("mnv1-025", CO_025, MNV1)
    second = publish("mnv1-05", CO_05, MNV1_05)
    second2 = publish("mnv1-05", CO_05, MNV1_05, version="2")
    cat = (coral_models / "cat_720p.jpg").read_bytes()
    agent = make_agent("dev1").start()

    # a single-model install, as before channels: the default channel
    hub.desire("dev1", cls)
    hub.report("dev1", "commit", "ok", cls.ref.digest)

    # the second channel; the document keeps the default's entry at the seq that set it
    hub.desire("dev1", cls, since=1, channels={"second": ChannelDesired(2, "install", second.ref, "r2")})
    done = hub.report("dev1", "commit", "ok", second.ref.digest)
    assert (done.channel, done.desired_seq) == ("second", 2)

    def serves(path: str, digest: str) -> None:
        code, out = agent.predict_image(cat, path)
        assert code == 200, out
        assert out["bundle"]["digest"] == digest and out["served_by"] == "cpu" and "cat" in out["top"][0]["label"]

    def both() -> None:
        serves("/v1/predict", cls.ref.digest)
        serves("/v1/models/default/predict", cls.ref.digest)
        serves("/v1/models/second/predict", second.ref.digest)

    both()
    code, out = agent.predict_image(cat, "/v1/models/nope/predict")
    assert code == 404 and "no model channel 'nope'" in out["detail"]
    assert agent.http("GET", "/v1/models/second/healthz") == (200, {"ok": True, "model": True})

    def second_active():  # a status sent while the second channel was still installing has no active entry yet
        st = hub.status.get("dev1")
        ch = st.channels.get("second") if st is not None else None
        return st if ch is not None and ch.active is not None else None

    st = hub.wait(second_active, 30, "the second channel active in status")
    assert st.active.digest == cls.ref.digest and st.channels["second"].active["digest"] == second.ref.digest
    hub.wait(
        lambda: [t for t in hub.telemetry if t.channel == "second" and t.counts.get("inferences")],
        30,
        "the second channel's telemetry",
    )
    assert all(t.bundle == cls.ref.digest for t in hub.telemetry if t.channel == "default" and t.bundle)
    assert all(t.bundle == second.ref.digest for t in hub.telemetry if t.channel == "second" and t.bundle)

    # both channels come back after a restart (the second from state_dir/channels/second)
    agent.stop()
    agent.start()
    both()

    # the second channel moves to v2 and back; the default channel hears nothing of it
    hub.desire("dev1", cls, since=1, channels={"second": ChannelDesired(3, "install", second2.ref, "r3")})
    hub.report("dev1", "commit", "ok", second2.ref.digest)
    serves("/v1/models/second/predict", second2.ref.digest)
    hub.desire("dev1", cls, since=1, channels={"second": ChannelDesired(4, "rollback", second.ref, "r3")})
    back = hub.wait(
        lambda: [r for r in hub.reports if r.desired_seq == 4 and r.stage == "commit" and r.status == "ok"],
        60,
        "the second channel rolled back",
    )
    assert back[0].channel == "second" and back[0].bundle == second.ref.digest
    serves("/v1/models/second/predict", second.ref.digest)
    serves("/v1/predict", cls.ref.digest)
    default_reports = [r for r in hub.reports if r.channel == "default"]
    assert default_reports and {r.desired_seq for r in default_reports} == {1}
    assert not hub.failures("dev1")


@pytest.mark.parametrize("stage", ["download", "switch"])
def test_a_channel_install_killed_mid_way_resumes_after_a_restart(
    stage, tmp_path: Path, coral_models, trust, hub, make_agent
):
    """The channel's job is persisted in its own state dir and resumed at start like the default's."""
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models, MNV1, name="mnv1"))
    pub = hub.publish_bundle(env, archive)
    agent = make_agent("dev1")
    hub.desire("dev1", None, action="idle", since=0, channels={"second": ChannelDesired(1, "install", pub.ref)})
    agent.start(EDGEFLEET_AGENT_CRASH_AT=stage)
    assert agent.wait_exit(120) == 137, agent.log_text()
    assert (agent.state_dir / "channels" / "second" / "job.json").exists()
    agent.start()
    done = hub.report("dev1", "commit", "ok", pub.ref.digest, timeout=120)
    assert (done.channel, done.desired_seq) == ("second", 1)
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes(), "/v1/models/second/predict")
    assert code == 200 and out["bundle"]["digest"] == pub.ref.digest
    assert agent.http("GET", "/healthz")[0] == 503  # the default channel has no model
    assert not hub.failures("dev1")


def test_the_co_compiled_pair_loads_on_two_channels_through_the_edge_tpu_path(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    """Both models of the pair are opened by the Edge TPU code path (agent.watchdog's guarded
    backend, one per channel) and answer as ``edgetpu``. The driver is the tests' fake
    (tests/agent/faketpu.py: a CPU interpreter on the twin where libedgetpu would be), so the
    shared parameter cache itself is not exercised here."""
    control = tmp_path / "tpu-mode"
    control.write_text("ok")
    agent = make_agent("coral1")
    agent.env.update(EDGEFLEET_AGENT_EDGETPU_DRIVER="tests.agent.faketpu:DRIVER", EDGEFLEET_TEST_FAKE_TPU=str(control))
    agent.start()
    pubs = []
    for name, model, twin in (("a", CO_025, MNV1), ("b", CO_05, MNV1_05)):
        d = coral_bundle(tmp_path / name, coral_models, model, name=name, role="tflite_edgetpu", cpu_twin=twin)
        env, _, archive = trust.sign_dir(d)
        pubs.append(hub.publish_bundle(env, archive))
    hub.desire("coral1", pubs[0], since=1, channels={"second": ChannelDesired(1, "install", pubs[1].ref)})
    for pub in pubs:
        staged = hub.report("coral1", "stage", "ok", pub.ref.digest)
        assert "model_edgetpu.tflite on edgetpu" in staged.detail
        hub.report("coral1", "commit", "ok", pub.ref.digest)
    cat = (coral_models / "cat_720p.jpg").read_bytes()
    for path, pub in (("/v1/predict", pubs[0]), ("/v1/models/second/predict", pubs[1])):
        code, out = agent.predict_image(cat, path)
        assert code == 200 and out["served_by"] == "edgetpu" and out["bundle"]["digest"] == pub.ref.digest
        assert "cat" in out["top"][0]["label"]


def test_a_bundle_failing_its_self_test_on_one_channel_leaves_both_channels_serving(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    def publish(name: str, model: str, version: str = "1"):
        env, _, archive = trust.sign_dir(coral_bundle(tmp_path / f"{name}{version}", coral_models, model, name=name))
        return hub.publish_bundle(env, archive)

    first, second, broken = publish("a", MNV1), publish("b", MNV1, "2"), publish("broken", BROKEN)
    agent = make_agent("dev1").start()
    hub.desire("dev1", first, channels={"second": ChannelDesired(1, "install", second.ref)})
    for pub in (first, second):
        hub.report("dev1", "commit", "ok", pub.ref.digest)
    hub.desire("dev1", first, since=1, channels={"second": ChannelDesired(2, "install", broken.ref)})
    failed = hub.report("dev1", "selftest", "failed", broken.ref.digest)
    assert (failed.channel, failed.desired_seq, failed.reason) == ("second", 2, Reason.SELFTEST_FAILED.value)
    cat = (coral_models / "cat_720p.jpg").read_bytes()
    for path, pub in (("/v1/predict", first), ("/v1/models/second/predict", second)):
        code, out = agent.predict_image(cat, path)
        assert code == 200 and out["bundle"]["digest"] == pub.ref.digest
    assert [r.desired_seq for r in hub.reports if r.channel == "default" and r.stage == "commit"] == [1]
