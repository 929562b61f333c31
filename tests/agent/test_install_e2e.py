"""Install over a real broker with real agent processes: the walking-skeleton path."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import Reason
from protocol.signing import SigningKey

from .bundles import coral_bundle

pytestmark = pytest.mark.integration


def test_signed_bundle_is_fetched_installed_and_serves_a_cat(tmp_path: Path, coral_models, trust, hub, make_agent):
    env, arts, archive = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models))
    pub = hub.publish_bundle(env, archive)
    agent = make_agent("dev1").start()
    hub.wait(lambda: "dev1" in hub.status and hub.status["dev1"].online, 30, "online status")
    hub.desire("dev1", pub)
    done = hub.report("dev1", "commit", "ok", pub.ref.digest)
    assert done.desired_seq == 1
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200, out
    assert "cat" in out["top"][0]["label"]
    assert out["served_by"] == "cpu" and out["bundle"]["digest"] == pub.ref.digest
    st = hub.wait(lambda: hub.status["dev1"].active and hub.status["dev1"], 30, "status with active bundle")
    assert st.active.digest == pub.ref.digest and st.inventory.edgetpu is False
    tm = hub.wait(lambda: [t for t in hub.telemetry if t.counts.get("inferences")], 30, "telemetry with an inference")
    assert tm[0].counts["cpu"] >= 1 and tm[0].latency["n"] >= 1 and tm[0].bundle == pub.ref.digest

    def binned(side: str, feature: str) -> int:
        return sum(sum(t.drift.get(side, {}).get(feature, [])) for t in hub.telemetry)

    # every served request lands in the drift histograms on the bundle's baseline edges
    hub.wait(
        lambda: binned("inputs", "brightness") == 1 and binned("outputs", "top1_confidence") == 1,
        30,
        "the request binned for drift",
    )
    assert all(len(t.drift["inputs"]["brightness"]) == 4 for t in hub.telemetry if t.drift)


def test_bundle_signed_by_unknown_key_is_rejected_and_agent_keeps_serving(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models))
    good = hub.publish_bundle(env, archive)
    agent = make_agent("dev1").start()
    hub.desire("dev1", good)
    hub.report("dev1", "commit", "ok", good.ref.digest)
    rogue = SigningKey.generate()
    env2, _, archive2 = trust.sign_dir(coral_bundle(tmp_path / "b2", coral_models, version="2"), keys=[rogue])
    bad = hub.publish_bundle(env2, archive2)
    hub.desire("dev1", bad, keys=[rogue])
    rej = hub.report("dev1", "verify", "failed")
    assert rej.reason == Reason.UNKNOWN_KEY.value
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == good.ref.digest
    assert agent.proc.poll() is None


@pytest.fixture
def amqtt_broker(tmp_path):
    import shutil
    import sys

    from tests.conftest import free_port, serving_process

    exe = shutil.which("amqtt", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("amqtt (the embedded MQTT 3.1.1 broker) is not installed")
    port = free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(
        f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    )
    with serving_process([exe, "-c", str(conf)], port, tmp_path / "amqtt.log", timeout=30):
        yield f"mqtt://127.0.0.1:{port}"


def test_agent_falls_back_to_mqtt_311_on_the_embedded_broker(
    tmp_path: Path, coral_models, trust, make_agent, amqtt_broker
):
    from .fakehub import FakeHub

    hub = FakeHub(amqtt_broker, trust.targets_key, mqtt_v5=False)
    try:
        agent = make_agent("old", broker=amqtt_broker).start()
        st = hub.wait(lambda: hub.status.get("old") and hub.status["old"].online and hub.status["old"], 60, "online")
        assert st.inventory.mqtt == "v3.1.1"
        env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b1", coral_models))
        pub = hub.publish_bundle(env, archive)
        hub.desire("old", pub)
        hub.report("old", "commit", "ok", pub.ref.digest)
        code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
        assert code == 200 and "cat" in out["top"][0]["label"]
    finally:
        hub.close()


def test_rotated_root_from_the_hub_is_adopted_and_trusts_the_new_targets_key(
    tmp_path: Path, coral_models, trust, hub, make_agent
):
    import time

    from protocol.signing import root_document, seal
    from protocol.topics import Topic

    new_targets = SigningKey.generate()
    doc = root_document(2, int(time.time()) + 86400, trust.root_keys, 2, [new_targets])
    rotated = seal("root", doc, trust.root_keys[:2]).to_bytes()  # threshold of the old (= new) root role
    agent = make_agent("rot").start()
    hub.wait(lambda: "rot" in hub.status, 30, "agent online")
    hub._c.publish(str(Topic.root()), rotated, qos=1, retain=True).wait_for_publish(10)
    hub.wait(lambda: (agent.state_dir / "root.json").exists(), 30, "rotated root persisted")
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models), keys=[new_targets])
    pub = hub.publish_bundle(env, archive)
    hub.desire("rot", pub, keys=[new_targets])
    hub.report("rot", "commit", "ok", pub.ref.digest)
    agent.stop()
    agent.start()  # the rotated root survives a restart; the old targets key is no longer trusted
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "c", coral_models, version="2"))
    old = hub.publish_bundle(env, archive)
    hub.desire("rot", old, keys=[trust.targets_key])
    r = hub.report("rot", "verify", "failed")
    assert r.reason == Reason.UNKNOWN_KEY.value
