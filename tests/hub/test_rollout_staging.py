"""The stages' shell (hub.staging) over a real registry (SQLite and PostgreSQL): the signed
document of each stage, evidence read back from stored reports and telemetry, a staging device
handed over to a newer rollout, and stages on a model channel other than ``default``."""

from __future__ import annotations

from typing import Any

from hub import ticker
from protocol.benchmark import BenchmarkReport, Timing
from protocol.channels import ChannelStatus
from protocol.device import Inventory
from protocol.messages import BundleInfo, Report, Status

from .conftest import TOKEN
from .helpers import telemetry
from .test_api import push
from .test_rollouts import OLD_MS, desired_of, fleet_on
from .web.test_dashboard import session_for

POLICY = {
    "cohorts": ["1", "100%"],
    "stages": {
        "stages": ["benchmark", "shadow"],
        "benchmark": {"invokes": 7},
        "shadow": {"min_inferences": 50, "min_agreement": 0.9, "sample_rate": 0.5},
    },
}


def shadow_report(dev: str, seq: int, desired_seq: int, digest: str, cand_ms: float, cur_ms: float) -> bytes:
    bench = BenchmarkReport(digest, True, "selftest ok", Timing(7, cand_ms, cand_ms), Timing(7, cur_ms, cur_ms))
    return Report(
        device=dev,
        seq=seq,
        ts=1000 + seq,
        stage="shadow",
        status="ok",
        reason="ok",
        desired_seq=desired_seq,
        bundle=digest,
        metrics={"benchmark": bench.to_dict()},
    ).to_bytes()


def rollout(client: Any, rid: str) -> dict[str, Any]:
    out: dict[str, Any] = client.get(f"/api/v1/rollouts/{rid}").json()
    return out


def test_each_stage_document_keeps_the_active_bundle_and_a_good_candidate_goes_from_benchmark_to_shadow_to_install(
    client, memhub, bundle_dir, keys_dir
):
    hub, pub = memhub
    v1 = fleet_on(hub, client, pub, bundle_dir, 2)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": POLICY}
    ).json()["id"]
    st = rollout(client, rid)
    (canary,) = [d for d in st["devices"] if d["state"] == "staging"]
    dev = canary["device_id"]
    assert canary["stage"] == "benchmark" and st["counts"] == {"staging": 1, "pending": 1}
    doc = desired_of(pub, keys_dir, dev)
    assert doc.action == "install" and doc.bundle.digest == v1["digest"]  # nothing switches
    assert doc.shadow.digest == v2["digest"] and doc.shadow_sample == 0.0
    assert doc.extra["benchmark"] == {"bundle": v2["digest"], "invokes": 7}
    # the candidate's chunks are published (retained) for the device to fetch
    assert any(v2["archive_sha256"] in t for t in pub.retained)
    ui = session_for(hub, TOKEN)
    assert 'name="stage_benchmark"' in ui.get("/ui/rollouts").text  # the form offers the stages
    page = ui.get(f"/ui/rollouts/{rid}").text
    assert f'data-device="{dev}" data-stage="benchmark" data-verdict="waiting"' in page

    hub.ingest.handle([(f"ef/v1/dev/{dev}/report", shadow_report(dev, 1, doc.seq, v2["digest"], 11.0, 10.0))])
    canary = next(d for d in rollout(client, rid)["devices"] if d["device_id"] == dev)
    assert canary["stage"] == "shadow" and canary["stages"]["benchmark"]["state"] == "pass"
    assert canary["stages"]["benchmark"]["figures"]["p95_ratio"] == 1.1
    doc2 = desired_of(pub, keys_dir, dev, doc.seq)
    assert doc2.shadow.digest == v2["digest"] and doc2.shadow_sample == 0.5 and "benchmark" not in doc2.extra

    agreeing = {"samples": 60, "errors": 0, "agreement": 1.0, "latency_delta_ms": 0.2}
    hub.ingest.handle(
        [(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 5, v1["digest"], (OLD_MS,) * 60, shadow=agreeing))]
    )
    ticker.tick(hub.fleet)
    canary = next(d for d in rollout(client, rid)["devices"] if d["device_id"] == dev)
    assert canary["state"] == "issued" and canary["stages"]["shadow"]["state"] == "pass"
    assert canary["stages"]["shadow"]["figures"]["samples"] == 60
    doc3 = desired_of(pub, keys_dir, dev, doc2.seq)
    assert doc3.bundle.digest == v2["digest"] and doc3.shadow is None  # the install, the shadow gone


def test_slow_candidate_report_aborts_the_rollout_and_the_device_gets_its_bundle_without_the_candidate(
    client, memhub, bundle_dir, keys_dir
):
    hub, pub = memhub
    v1 = fleet_on(hub, client, pub, bundle_dir, 2)
    v2 = push(client, bundle_dir(version="2.0.0-slow"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": POLICY}
    ).json()["id"]
    dev = next(d["device_id"] for d in rollout(client, rid)["devices"] if d["state"] == "staging")
    doc = desired_of(pub, keys_dir, dev)
    hub.ingest.handle([(f"ef/v1/dev/{dev}/report", shadow_report(dev, 1, doc.seq, v2["digest"], 40.0, 10.0))])
    st = rollout(client, rid)
    assert st["phase"] == "aborted" and st["counts"] == {"failed": 1, "cancelled": 1}
    assert st["reason"].startswith(f"stage failed on {dev}: benchmark: p95 ratio 4.00 (candidate 40.00 ms")
    end = desired_of(pub, keys_dir, dev, doc.seq)
    assert end.bundle.digest == v1["digest"] and end.shadow is None


def test_newer_rollout_takes_over_a_staging_device_and_the_old_one_never_touches_it_again(
    client, memhub, bundle_dir, keys_dir
):
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 1)
    v2 = push(client, bundle_dir(version="2.0.0"))
    v3 = push(client, bundle_dir(version="3.0.0"))
    policy = {**POLICY, "stages": {**POLICY["stages"], "timeout_s": 1}}  # type: ignore[dict-item]
    old = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": policy}
    ).json()["id"]
    assert rollout(client, old)["counts"] == {"staging": 1}
    client.post("/api/v1/rollouts", json={"bundle": v3["digest"], "target": {"all": True}})
    newest = desired_of(pub, keys_dir, "d0")
    assert newest.bundle.digest == v3["digest"]
    assert rollout(client, old)["counts"] == {"cancelled": 1}
    real = hub.fleet.clock
    hub.fleet.clock = lambda: real() + 30  # past the old stage's timeout, within the new install's
    ticker.tick(hub.fleet)
    assert desired_of(pub, keys_dir, "d0").seq == newest.seq  # the old rollout sent nothing more
    # nothing left to install or judge: it ends rather than running forever (hub.rollout rule 6b)
    assert rollout(client, old)["phase"] == "completed" and rollout(client, old)["counts"] == {"cancelled": 1}


def test_shadow_windows_of_another_candidate_are_not_counted_in_the_stage(client, memhub, bundle_dir, keys_dir):
    hub, pub = memhub
    v1 = fleet_on(hub, client, pub, bundle_dir, 2)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": POLICY}
    ).json()["id"]
    dev = next(d["device_id"] for d in rollout(client, rid)["devices"] if d["state"] == "staging")
    doc = desired_of(pub, keys_dir, dev)
    hub.ingest.handle([(f"ef/v1/dev/{dev}/report", shadow_report(dev, 1, doc.seq, v2["digest"], 11.0, 10.0))])
    assert next(d for d in rollout(client, rid)["devices"] if d["device_id"] == dev)["stage"] == "shadow"

    # a window still comparing an earlier candidate: enough samples, all disagreeing; not this stage's
    other = {"samples": 60, "errors": 0, "agreement": 0.0, "latency_delta_ms": 0.2, "bundle": "f" * 64}
    hub.ingest.handle([(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 5, v1["digest"], (OLD_MS,) * 60, shadow=other))])
    ticker.tick(hub.fleet)
    canary = next(d for d in rollout(client, rid)["devices"] if d["device_id"] == dev)
    assert canary["state"] == "staging" and canary["stage"] == "shadow"  # waiting, not failed on 0 % agreement

    mine = {"samples": 60, "errors": 0, "agreement": 1.0, "latency_delta_ms": 0.2, "bundle": v2["digest"]}
    hub.ingest.handle([(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 6, v1["digest"], (OLD_MS,) * 60, shadow=mine))])
    ticker.tick(hub.fleet)
    canary = next(d for d in rollout(client, rid)["devices"] if d["device_id"] == dev)
    assert canary["state"] == "issued" and canary["stages"]["shadow"]["state"] == "pass"
    assert canary["stages"]["shadow"]["figures"]["samples"] == 60  # the other candidate's 60 not added


def test_stages_on_a_model_channel_run_in_its_entry_and_leave_the_default_channel_alone(
    client, memhub, bundle_dir, keys_dir
):
    hub, pub = memhub
    base = push(client, bundle_dir(version="1.0.0"))  # what d0 serves on its default channel
    v1 = push(client, bundle_dir(version="1.1.0"))  # ... and on "second"
    v2 = push(client, bundle_dir(version="2.0.0"))
    second = {"second": ChannelStatus(active={"digest": v1["digest"], "name": "digits", "version": "1.1.0"})}
    st = Status(
        device="d0",
        online=True,
        ts=1000,
        agent_version="0.1.0",
        inventory=Inventory.from_dict({"board": "rpi4", "edgetpu": False}),
        active=BundleInfo(base["digest"], "digits", "1.0.0"),
        state="idle",
        channels=second,
    )
    hub.ingest.handle([("ef/v1/dev/d0/status", st.to_bytes())])
    body = {"bundle": v2["digest"], "target": {"devices": ["d0"]}, "policy": POLICY, "channel": "second"}
    r = client.post("/api/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert next(d for d in rollout(client, rid)["devices"])["stage"] == "benchmark"
    doc = desired_of(pub, keys_dir, "d0")
    # the stage is in the channel's entry, against what the device serves there; no default entry
    entry = doc.channels["second"]
    assert (entry.action, entry.bundle.digest, entry.shadow.digest) == ("install", v1["digest"], v2["digest"])
    assert entry.extra["benchmark"] == {"bundle": v2["digest"], "invokes": 7} and doc.channel("default") is None

    hub.ingest.handle([("ef/v1/dev/d0/report", shadow_report("d0", 1, doc.seq, v2["digest"], 11.0, 10.0))])
    doc2 = desired_of(pub, keys_dir, "d0", doc.seq)
    entry2 = doc2.channels["second"]
    assert entry2.shadow.digest == v2["digest"] and entry2.shadow_sample == 0.5 and "benchmark" not in entry2.extra
    assert rollout(client, rid)["devices"][0]["stage"] == "shadow"

    # a window of the default channel comparing the same candidate, all disagreeing: not this stage's
    mine = {"samples": 60, "errors": 0, "agreement": 1.0, "latency_delta_ms": 0.2, "bundle": v2["digest"]}
    other = {**mine, "agreement": 0.0}
    hub.ingest.handle([("ef/v1/dev/d0/telemetry", telemetry("d0", 4, base["digest"], (OLD_MS,) * 60, shadow=other))])
    ticker.tick(hub.fleet)
    assert rollout(client, rid)["devices"][0]["state"] == "staging"
    window = telemetry("d0", 5, v1["digest"], (OLD_MS,) * 60, shadow=mine, channel="second")
    hub.ingest.handle([("ef/v1/dev/d0/telemetry", window)])
    ticker.tick(hub.fleet)
    assert rollout(client, rid)["devices"][0]["state"] == "issued"
    doc3 = desired_of(pub, keys_dir, "d0", doc2.seq)
    entry3 = doc3.channels["second"]
    assert entry3.bundle.digest == v2["digest"] and entry3.shadow is None  # the install on "second" only
    assert doc3.channel("default") is None
