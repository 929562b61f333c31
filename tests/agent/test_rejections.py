"""Each bad update is rejected with its reason code and the active model is left untouched."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time

import pytest

from protocol.bundle import ARCHIVE_MAGIC, parse_manifest
from protocol.errors import Reason

from .bundles import MNV1, MNV1_TPU, MNV2, coral_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def running(tmp_path, coral_models, trust, hub, make_agent):
    """An agent serving a first, good bundle."""
    agent = make_agent().start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "good", coral_models, MNV1))
    good = hub.publish_bundle(env, archive)
    hub.desire(agent.device, good)
    hub.report(agent.device, "commit", "ok", good.ref.digest)
    return agent, good


def _untouched(agent, good, coral_models) -> None:
    slots = json.loads((agent.state_dir / "slots.json").read_text())
    assert slots["active"]["digest"] == good.ref.digest
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == good.ref.digest
    assert agent.proc.poll() is None


def _second(tmp_path, coral_models, trust, **kw):
    return trust.sign_dir(coral_bundle(tmp_path / "second", coral_models, kw.pop("model", MNV1), version="2", **kw))


def test_tampered_chunk_is_rejected_and_refetched(tmp_path, coral_models, trust, hub, running):
    agent, good = running
    env, _, archive = _second(tmp_path, coral_models, trust)
    pub = hub.publish_bundle(env, archive, tamper={2: b"\0" * hub.chunk_size})
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    bad = [r for r in hub.reports if r.reason == Reason.HASH_MISMATCH.value and r.stage == "download"]
    assert bad and "chunk 2" in bad[0].detail
    assert any(2 in f.missing for f in hub.fetches)


def test_truncated_artifact_is_rejected_with_length_mismatch(tmp_path, coral_models, trust, hub, running):
    agent, good = running
    bundle = coral_bundle(tmp_path / "second", coral_models, MNV1, version="2")
    env, arts, _ = trust.sign_dir(bundle)
    m = parse_manifest(env.payload)
    env_bytes = env.to_bytes()
    body = b"".join(arts[a.name] for a in m.artifacts)[:-1000]  # last artifact cut short
    archive = ARCHIVE_MAGIC + struct.pack(">I", len(env_bytes)) + env_bytes + body
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    r = hub.report(agent.device, "verify", "failed", pub.ref.digest)
    assert r.reason == Reason.LENGTH_MISMATCH.value
    _untouched(agent, good, coral_models)


def test_replayed_older_desired_is_refused_as_downgrade(tmp_path, coral_models, trust, hub, running):
    agent, good = running
    env, _, archive = _second(tmp_path, coral_models, trust)
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub, seq=5)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    hub.desire(agent.device, running[1], seq=4)  # validly signed, but older than what it trusts
    r = hub.report(agent.device, "verify", "failed")
    assert r.reason == Reason.DOWNGRADE.value and "expected seq > 5" in r.detail
    _untouched(agent, pub, coral_models)
    assert json.loads((agent.state_dir / "trust.json").read_text())["desired_seq"] == 5


def test_expired_desired_is_refused(tmp_path, coral_models, trust, hub, running):
    agent, good = running
    env, _, archive = _second(tmp_path, coral_models, trust)
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub, expires_in=-5)
    r = hub.report(agent.device, "verify", "failed")
    assert r.reason == Reason.EXPIRED.value
    _untouched(agent, good, coral_models)


def test_bundle_for_another_board_is_refused_before_download(tmp_path, coral_models, trust, hub, running):
    agent, good = running
    env, _, archive = _second(tmp_path, coral_models, trust, boards=("coral-devboard",))
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    r = hub.report(agent.device, "verify", "failed", pub.ref.digest)
    assert r.reason == Reason.WRONG_HARDWARE.value and "rpi4" in r.detail
    assert not [x for x in hub.reports if x.stage == "download" and x.bundle == pub.ref.digest]
    _untouched(agent, good, coral_models)


def test_edgetpu_only_bundle_is_refused_on_a_device_without_a_tpu(tmp_path, coral_models, trust, hub, running):
    agent, good = running
    env, _, archive = _second(tmp_path, coral_models, trust, model=MNV1_TPU, role="tflite_edgetpu")
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    r = hub.report(agent.device, "verify", "failed", pub.ref.digest)
    assert r.reason == Reason.UNSUPPORTED_RUNTIME.value and "no Edge TPU" in r.detail
    _untouched(agent, good, coral_models)
    env, _, archive = _second(tmp_path, coral_models, trust, model=MNV1_TPU, role="tflite_edgetpu", edgetpu="required")
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    r = hub.report(agent.device, "verify", "failed", pub.ref.digest)
    assert r.reason == Reason.UNSUPPORTED_RUNTIME.value and "requires an Edge TPU" in r.detail
    _untouched(agent, good, coral_models)


def test_edgetpu_bundle_with_cpu_twin_serves_the_cpu_model_without_a_tpu(tmp_path, coral_models, trust, hub, running):
    agent, good = running
    env, _, archive = _second(
        tmp_path, coral_models, trust, model=MNV1_TPU, role="tflite_edgetpu", edgetpu="optional", cpu_twin=MNV1
    )
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    staged = hub.report(agent.device, "stage", "ok", pub.ref.digest)
    assert "model_int8.tflite on cpu" in staged.detail
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["served_by"] == "cpu" and "cat" in out["top"][0]["label"]


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_bundle_larger_than_free_disk_is_refused_with_disk_full(
    tmp_path, coral_models, trust, hub, make_agent, small_disk
):
    agent = make_agent("small", state_dir=str(small_disk / "state"), disk_reserve_bytes=0)
    agent.state_dir = small_disk / "state"
    agent.start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "good", coral_models, MNV1))
    good = hub.publish_bundle(env, archive)
    hub.desire(agent.device, good)
    hub.report(agent.device, "commit", "ok", good.ref.digest)
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "big", coral_models, MNV2, name="mnv2", version="2"))
    big = hub.publish_bundle(env, archive)
    hub.desire(agent.device, big)
    r = hub.report(agent.device, "verify", "failed", big.ref.digest)
    assert r.reason == Reason.DISK_FULL.value and f"{len(archive)}-byte bundle" in r.detail
    _untouched(agent, good, coral_models)


def test_disk_filling_up_during_download_fails_cleanly_with_disk_full(
    tmp_path, coral_models, trust, hub, make_agent, small_disk
):
    # the free-disk probe is told there is plenty (EDGEFLEET_AGENT_FREE_DISK), the tmpfs knows better:
    # the agent must survive the real ENOSPC when it reserves space for the archive
    agent = make_agent("liar", state_dir=str(small_disk / "state"), disk_reserve_bytes=0)
    agent.state_dir = small_disk / "state"
    agent.start(EDGEFLEET_AGENT_FREE_DISK=str(1 << 30))
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "good", coral_models, MNV1))
    good = hub.publish_bundle(env, archive)
    hub.desire(agent.device, good)
    hub.report(agent.device, "commit", "ok", good.ref.digest)
    big_dir = coral_bundle(tmp_path / "big", coral_models, MNV2, name="mnv2", version="2")
    env, _, archive = trust.sign_dir(big_dir)
    big = hub.publish_bundle(env, archive)
    hub.desire(agent.device, big)
    r = hub.report(agent.device, "download", "failed", big.ref.digest)
    assert r.reason == Reason.DISK_FULL.value
    _untouched(agent, good, coral_models)
    assert not list((small_disk / "state" / "downloads").glob("*.part"))  # the partial file is gone


def test_clock_behind_the_newest_accepted_document_cannot_revive_an_expired_one(
    tmp_path, coral_models, trust, hub, make_agent
):
    import time

    agent = make_agent("norct")
    # as if a document issued two hours from now (by this machine's clock) had been accepted:
    # the device's clock is behind, so "now" is at least that
    (agent.state_dir / "trust.json").write_text(json.dumps({"desired_seq": 0, "issued_max": int(time.time()) + 7200}))
    agent.start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models))
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub, expires_in=3600)  # fresh by the wall clock, expired by the floor
    r = hub.report(agent.device, "verify", "failed")
    assert r.reason == Reason.EXPIRED.value


def test_forged_desired_claiming_the_next_seq_names_no_seq_so_it_cannot_fail_the_real_install(
    tmp_path, coral_models, trust, hub, running
):
    """A document signed by a key the root does not know, claiming the seq the hub will issue
    next: the rejection report names seq 0 (no verified document), never the claimed seq, which
    the hub would match to its own install under that seq and mark failed."""
    from protocol.signing import SigningKey

    agent, good = running
    env, _, archive = _second(tmp_path, coral_models, trust)
    pub = hub.publish_bundle(env, archive)
    next_seq = hub.seqs[agent.device] + 1
    hub.desire(agent.device, pub, seq=next_seq, keys=[SigningKey.generate()])
    rej = hub.report(agent.device, "verify", "failed")
    assert rej.reason == Reason.UNKNOWN_KEY.value
    assert rej.desired_seq == 0 and f"claimed seq {next_seq}" in rej.detail
    hub.desire(agent.device, pub, seq=next_seq)  # the real document under that seq installs
    assert hub.report(agent.device, "commit", "ok", pub.ref.digest).desired_seq == next_seq
    _untouched(agent, pub, coral_models)


def test_agent_refuses_a_trust_root_that_expired_yesterday(tmp_path, coral_models, trust, hub, running):
    """The pinned root expired a day ago (the device was off when it did): the agent still
    starts and serves its installed model, but verifies nothing new with that root: a desired
    document is refused as ``expired``, naming the root's expiry, like edgefleet-cloud refuses
    bundles. A rotated root chains from the expired one and the refused document then installs."""
    from protocol.signing import root_document, seal
    from protocol.topics import Topic

    agent, good = running
    agent.stop()
    expires = int(time.time()) - 86400
    expired = seal("root", root_document(1, expires, trust.root_keys, 2, [trust.targets_key]), trust.root_keys[:2])
    (tmp_path / "root.json").write_bytes(expired.to_bytes())  # the pinned root all agents here read
    agent.start()
    _untouched(agent, good, coral_models)  # not bricked: the installed slot still verifies and serves
    assert "trust root v1 expired at" in agent.log_text() and f"({expires})" in agent.log_text()
    env, _, archive = _second(tmp_path, coral_models, trust)
    pub = hub.publish_bundle(env, archive)
    sent = hub.desire(agent.device, pub)
    rej = hub.report(agent.device, "verify", "failed", pub.ref.digest)
    assert rej.reason == Reason.EXPIRED.value and rej.desired_seq == sent.seq
    assert "trust root v1 expired at" in rej.detail and f"({expires})" in rej.detail
    _untouched(agent, good, coral_models)
    rotated = seal(
        "root", root_document(2, int(time.time()) + 86400, trust.root_keys, 2, [trust.targets_key]), trust.root_keys[:2]
    ).to_bytes()
    hub._c.publish(str(Topic.root()), rotated, qos=1, retain=True).wait_for_publish(10)
    done = hub.report(agent.device, "commit", "ok", pub.ref.digest)  # the held document, under root v2
    assert done.desired_seq == sent.seq


def test_a_message_over_the_agents_maximum_packet_size_never_reaches_it_and_oversized_chunks_fail_the_download(
    running, tmp_path, coral_models, trust, hub
):
    from protocol.topics import Kind, Topic

    agent, good = running
    # 2 MiB on the agent's own topic: the broker drops it for a client that declared 1 MiB
    hub._c.publish(str(Topic.for_device(Kind.DESIRED, agent.device)), b"x" * (2 << 20), qos=1).wait_for_publish(10)
    hub.chunk_size = 1 << 20  # chunk packets of 1 MiB + topic: more than the agent accepts
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "big", coral_models, MNV2, name="big"))
    big = hub.publish_bundle(env, archive)
    hub.desire(agent.device, big)
    r = hub.report(agent.device, "download", "failed", big.ref.digest)
    assert r.reason == Reason.MALFORMED.value and "at most 1048576 (max_packet_bytes)" in r.detail
    assert [f.stage for f in hub.failures(agent.device)] == ["download"]  # the 2 MiB message never arrived
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == good.ref.digest
