"""Never without a working model: bad bundles, crashes at every install stage, broker restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from protocol.errors import Reason

from .bundles import BROKEN, MNV1, MNV2, coral_bundle

pytestmark = pytest.mark.integration


def _install_first(tmp_path: Path, coral_models, trust, hub, agent, version: str = "1"):
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / f"v{version}", coral_models, MNV1, version=version))
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    return pub


def _active(agent) -> str | None:
    doc = json.loads((agent.state_dir / "slots.json").read_text())
    return doc["active"]["digest"] if doc.get("active") else None


def _serves(agent, coral_models, digest: str) -> None:
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200, out
    assert out["bundle"]["digest"] == digest and "cat" in out["top"][0]["label"]


def test_validly_signed_bundle_failing_its_selftest_is_rolled_back(tmp_path, coral_models, trust, hub, make_agent):
    agent = make_agent().start()
    good = _install_first(tmp_path, coral_models, trust, hub, agent)
    env, _, archive = trust.sign_dir(
        coral_bundle(tmp_path / "broken", coral_models, BROKEN, name="broken", version="2")
    )
    bad = hub.publish_bundle(env, archive)
    hub.desire(agent.device, bad)
    failed = hub.report(agent.device, "selftest", "failed", bad.ref.digest)
    assert failed.reason == Reason.SELFTEST_FAILED.value and "fake-op-double" in failed.detail
    rb = hub.report(agent.device, "rollback", "ok", bad.ref.digest)
    assert good.ref.digest[:12] in rb.detail
    assert _active(agent) == good.ref.digest
    _serves(agent, coral_models, good.ref.digest)
    assert not (agent.state_dir / "slots" / bad.ref.digest).exists()


@pytest.mark.parametrize("stage", ["download", "verify", "stage", "switch", "commit"])
def test_kill_at_install_stage_then_restart_leaves_a_working_model(
    stage, tmp_path, coral_models, trust, hub, make_agent
):
    agent = make_agent().start()
    first = _install_first(tmp_path, coral_models, trust, hub, agent)
    agent.stop()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "v2", coral_models, MNV2, name="mnv2", version="2"))
    second = hub.publish_bundle(env, archive)
    hub.desire(agent.device, second)
    agent.start(EDGEFLEET_AGENT_CRASH_AT=stage)
    assert agent.wait_exit(120) == 137, agent.log_text()
    # whatever the crash point, the slot record names a complete, verified bundle
    assert _active(agent) in (first.ref.digest, second.ref.digest)
    assert (agent.state_dir / "slots" / _active(agent) / "manifest.json").exists()
    agent.start()
    hub.wait(
        lambda: [r for r in hub.reports if r.stage == "commit" and r.status == "ok" and r.bundle == second.ref.digest],
        120,
        f"commit of v2 after a crash at {stage}",
    )
    st = hub.wait(
        lambda: (
            (s := hub.status.get(agent.device))
            and s.active
            and s.active.digest == second.ref.digest
            and s.state == "serving"
            and s
        ),
        60,
        "status naming v2 as active",
    )
    assert st.online
    assert _active(agent) == second.ref.digest
    _serves(agent, coral_models, second.ref.digest)
    assert not hub.failures(agent.device)


def test_broker_restart_mid_transfer_resumes_from_the_bitmap(tmp_path, coral_models, trust, hub, mosquitto, make_agent):
    agent = make_agent().start()
    hub.wait(lambda: agent.device in hub.status, 30, "agent online")
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "v2", coral_models, MNV2, name="mnv2"))
    n = -(-len(archive) // hub.chunk_size)
    first_half = set(range(n // 2, n))
    hub.serve_fetch = False
    pub = hub.publish_bundle(env, archive, skip=first_half)  # only the first half is on the broker
    hub.desire(agent.device, pub)
    hub.wait(lambda: [f for f in hub.fetches if f.archive == pub.plan.sha256], 60, "a fetch request for the rest")
    asked = [f for f in hub.fetches if f.archive == pub.plan.sha256][-1]
    assert set(asked.missing) == first_half
    hub.close()
    mosquitto.stop()
    mosquitto.start()
    from .fakehub import FakeHub

    hub2 = FakeHub(mosquitto.url, trust.targets_key)
    try:
        hub2.chunks[pub.plan.sha256] = [archive[i : i + hub.chunk_size] for i in range(0, len(archive), hub.chunk_size)]
        hub2.wait(lambda: [f for f in hub2.fetches if f.archive == pub.plan.sha256], 60, "fetch after broker restart")
        again = [f for f in hub2.fetches if f.archive == pub.plan.sha256][-1]
        assert set(again.missing) == first_half  # nothing already held is asked for again
        hub2.report(agent.device, "commit", "ok", pub.ref.digest, timeout=120)
        _serves(agent, coral_models, pub.ref.digest)
    finally:
        hub2.close()


def test_bundle_whose_preprocess_cannot_feed_its_model_fails_selftest(tmp_path, coral_models, trust, hub, make_agent):
    agent = make_agent().start()
    good = _install_first(tmp_path, coral_models, trust, hub, agent)
    env, _, archive = trust.sign_dir(
        coral_bundle(tmp_path / "odd", coral_models, MNV1, version="2", preprocess_size=100)
    )
    bad = hub.publish_bundle(env, archive)
    hub.desire(agent.device, bad)
    r = hub.report(agent.device, "selftest", "failed", bad.ref.digest)
    assert r.reason == Reason.SELFTEST_FAILED.value and "preprocess 100x100x3" in r.detail
    _serves(agent, coral_models, good.ref.digest)


def test_operator_rollback_command_switches_to_the_kept_slot_after_a_selftest(
    tmp_path, coral_models, trust, hub, make_agent
):
    import subprocess
    import sys

    from tests.conftest import REPO

    agent = make_agent().start()
    first = _install_first(tmp_path, coral_models, trust, hub, agent)
    second = _install_first(tmp_path, coral_models, trust, hub, agent, version="2")
    refused = subprocess.run(
        [sys.executable, "-m", "agent", "rollback", "--config", str(agent.config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "daemon is running" in refused.stderr
    agent.stop()
    done = subprocess.run(
        [sys.executable, "-m", "agent", "rollback", "--config", str(agent.config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    test = subprocess.run(
        [sys.executable, "-m", "agent", "selftest", "--config", str(agent.config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert test.returncode == 0 and json.loads(test.stdout)["bundle"]["digest"] == first.ref.digest
    agent.start()
    hub.wait(
        lambda: [
            r
            for r in hub.reports
            if r.stage == "commit" and r.bundle == first.ref.digest and "after a restart" in r.detail
        ],
        60,
        "v1 committed again after the rollback",
    )
    _serves(agent, coral_models, first.ref.digest)
    assert second.ref.digest != first.ref.digest


def test_model_whose_first_live_inferences_fail_is_rolled_back(tmp_path, coral_models, trust, hub, make_agent):
    import io

    from PIL import Image

    from .bundles import gather_bundle

    agent = make_agent(probation_inferences=10, probation_max_errors=3).start()
    good = _install_first(tmp_path, coral_models, trust, hub, agent)
    env, _, archive = trust.sign_dir(gather_bundle(tmp_path / "gather"))
    fragile = hub.publish_bundle(env, archive)
    fragile_doc = hub.desire(agent.device, fragile)
    hub.report(agent.device, "commit", "ok", fragile.ref.digest)  # its self-test passed
    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, "PNG")
    codes = [agent.predict_image(buf.getvalue())[0] for _ in range(3)]
    assert codes == [503, 503, 503]  # no cloud fallback configured: the errors reach the app
    rb = hub.report(agent.device, "rollback", "ok", good.ref.digest)
    assert rb.reason == Reason.INFERENCE_FAILED.value and "3 of the first 3" in rb.detail
    assert rb.desired_seq == fragile_doc.seq  # names the abandoned install, so the hub fails it
    assert _active(agent) == good.ref.digest
    _serves(agent, coral_models, good.ref.digest)
    st = hub.wait(
        lambda: (s := hub.status.get(agent.device)) and s.active and s.active.digest == good.ref.digest and s,
        30,
        "status back on v1",
    )
    assert st.state == "serving"


def test_crash_between_trusting_a_seq_and_saving_its_job_still_installs(tmp_path, coral_models, trust, hub, make_agent):
    agent = make_agent()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "v1", coral_models, MNV1))
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub, seq=1)
    (agent.state_dir / "trust.json").write_text(json.dumps({"desired_seq": 1}))  # seq persisted, no job.json
    agent.start()
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    _serves(agent, coral_models, pub.ref.digest)


def test_model_on_probation_that_keeps_crashing_the_agent_is_rolled_back(
    tmp_path, coral_models, trust, hub, make_agent
):
    agent = make_agent(probation_inferences=5, probation_max_crashes=2).start()
    first = _install_first(tmp_path, coral_models, trust, hub, agent)
    second = _install_first(tmp_path, coral_models, trust, hub, agent, version="2")
    for _ in range(2):  # clean restarts are not crashes
        agent.stop()
        agent.start()
        _ = agent.port  # waits until the restarted agent serves
    assert _active(agent) == second.ref.digest
    for _ in range(3):  # as if the new model took the process down (kill -9 = segfault, power cut)
        _ = agent.port  # waits until the restarted agent serves
        agent.kill()
        agent.start()
    rb = hub.report(agent.device, "rollback", "ok", first.ref.digest)
    assert rb.reason == Reason.INFERENCE_FAILED.value and "restarted 3 times" in rb.detail
    _serves(agent, coral_models, first.ref.digest)


def test_model_that_passed_probation_is_kept_through_crashes(tmp_path, coral_models, trust, hub, make_agent):
    agent = make_agent(probation_inferences=2, probation_max_crashes=1).start()
    _install_first(tmp_path, coral_models, trust, hub, agent)
    second = _install_first(tmp_path, coral_models, trust, hub, agent, version="2")
    for _ in range(2):
        _serves(agent, coral_models, second.ref.digest)
    hub.wait(
        lambda: json.loads((agent.state_dir / "slots.json").read_text())["probation"] is None,
        30,
        "probation passed and persisted",
    )
    for _ in range(3):
        agent.kill()
        agent.start()
        _ = agent.port  # waits until the restarted agent serves
    _serves(agent, coral_models, second.ref.digest)
    assert not [r for r in hub.reports if r.stage == "rollback"]


def test_an_agent_killed_mid_download_resumes_from_its_bitmap_and_receives_at_most_5_percent_again(
    tmp_path, coral_models, trust, hub, make_agent
):
    agent = make_agent().start()
    hub.wait(lambda: (s := hub.status.get(agent.device)) and s.online, 30, "agent online")
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "v2", coral_models, MNV2, name="mnv2"))
    size, cs = len(archive), hub.chunk_size
    n = -(-size // cs)
    first, second = set(range(n // 2)), set(range(n // 2, n))
    hub.serve_fetch = False  # the second half reaches the broker only when the hub publishes it
    pub = hub.publish_bundle(env, archive, skip=second)
    hub.desire(agent.device, pub)
    bitmap = agent.state_dir / "downloads" / f"{pub.plan.sha256}.bitmap"
    hub.wait(lambda: bitmap.exists() and bitmap.read_bytes().count(1) == len(first), 120, "the first half on disk")
    agent.kill()  # kill -9 with half of the bundle verified on disk
    hub.publish_bundle(env, archive, skip=first)  # the rest is published while the device is down
    hub.serve_fetch = True
    fetches_before = len(hub.fetches)
    agent.start()
    hub.report(agent.device, "commit", "ok", pub.ref.digest, timeout=120)
    # at least once: a report whose ack raced the agent's resend arrives twice under one seq (the
    # hub stores it once, by device and seq), so count distinct reports
    done = list(
        {
            r.seq: r for r in hub.reports if r.stage == "download" and r.status == "ok" and r.bundle == pub.ref.digest
        }.values()
    )
    assert len(done) == 1, done
    m = done[0].metrics
    missing = sum(min(cs, size - i * cs) for i in second)
    assert m["resumed_chunks"] == len(first)
    time.sleep(2)  # anything the broker still replays after the download counts too
    code, st = agent.http("GET", "/v1/status")
    received = st["chunks_received"]["bytes"]
    print(f"restarted agent received {received} chunk bytes; {missing} were missing of {size}; {m}")
    # what the restarted agent received: the missing half, and at most 5 % of the bundle again
    assert code == 200 and received <= missing + 0.05 * size, (received, missing, size, m)
    assert m["duplicate_bytes"] <= 0.05 * size, m
    assert f"{m['received_bytes']} bytes received" in agent.log_text()
    asked = {i for f in hub.fetches[fetches_before:] if f.archive == pub.plan.sha256 for i in f.missing}
    assert not asked & first  # nothing already on disk is asked for again
    _serves(agent, coral_models, pub.ref.digest)
    assert not hub.failures(agent.device)


def test_after_asking_for_a_repair_an_agent_no_longer_hears_other_devices_repairs(
    tmp_path, coral_models, trust, hub, make_agent
):
    # docs/scale.md: devices holding the wildcard received every repair the hub re-published for
    # others, so a fleet falling behind at once multiplied the repair traffic by its size
    agent = make_agent().start()
    hub.wait(lambda: (s := hub.status.get(agent.device)) and s.online, 30, "agent online")
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "v2", coral_models, MNV2, name="mnv2"))
    n = -(-len(archive) // hub.chunk_size)
    lacking = n - 1
    hub.serve_fetch = False
    pub = hub.publish_bundle(env, archive, skip={lacking})  # every chunk on the broker but the last
    hub.desire(agent.device, pub)
    hub.wait(lambda: [f for f in hub.fetches if f.archive == pub.plan.sha256], 60, "a repair request")
    asked = [f for f in hub.fetches if f.archive == pub.plan.sha256][-1]
    assert list(asked.missing) == [lacking]
    hub.wait(lambda: "by index" in agent.log_text(), 10, "the agent narrowing its subscription")
    hub.repair(pub.plan.sha256, [0, 1, 2])  # another device's repair: chunks this agent has
    hub.repair(pub.plan.sha256, [lacking])  # then the one it lacks
    hub.report(agent.device, "commit", "ok", pub.ref.digest, timeout=120)
    (done,) = {r.seq: r for r in hub.reports if r.stage == "download" and r.status == "ok"}.values()
    assert done.metrics["duplicate_chunks"] == 0, done.metrics  # chunks 0-2 never reached it again
    code, st = agent.http("GET", "/v1/status")
    assert code == 200 and st["chunks_received"]["messages"] == n, st["chunks_received"]
    _serves(agent, coral_models, pub.ref.digest)
