"""Telemetry: disk backlog across restarts and outages, acks, shadow stats."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from .bundles import MNV1, MNV2, coral_bundle
from .fakehub import FakeHub

pytestmark = pytest.mark.integration


def _pending(agent) -> set[int]:
    path = agent.state_dir / "backlog.sqlite"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {s for (s,) in db.execute("SELECT seq FROM outbox WHERE kind='telemetry'")}
    except sqlite3.OperationalError:  # the agent has not created its tables yet
        return set()
    finally:
        db.close()


def test_backlog_survives_a_restart_with_the_broker_down_and_drains_when_it_returns(
    tmp_path, trust, hub, mosquitto, make_agent
):
    agent = make_agent().start()
    hub.wait(lambda: [t for t in hub.telemetry if t.device == agent.device], 30, "first telemetry")
    hub.close()
    mosquitto.stop()
    hub.wait(lambda: len(_pending(agent)) >= 2, 30, "windows piling up while the broker is down")
    agent.stop()
    before = _pending(agent)
    assert before
    agent.start()
    hub.wait(lambda: len(_pending(agent) - before) >= 2, 30, "more windows after the restart, broker still down")
    assert before <= _pending(agent)  # nothing written before the restart was lost
    mosquitto.start()
    hub2 = FakeHub(mosquitto.url, trust.targets_key)
    try:
        hub2.wait(
            lambda: before <= {t.seq for t in hub2.telemetry if t.device == agent.device},
            60,
            "every window written while offline",
        )
        hub2.wait(lambda: not (before & _pending(agent)), 30, "acked windows removed from the backlog")
        latest = hub2.wait(
            lambda: [t for t in hub2.telemetry if t.backlog.get("size", 99) <= 2],
            30,
            "a window reporting a drained backlog",
        )
        assert set(latest[-1].backlog) >= {"size", "oldest_age_s", "dropped"} and latest[-1].backlog["dropped"] == 0
        seqs = sorted({t.seq for t in hub2.telemetry if t.device == agent.device})
        assert seqs == list(range(seqs[0], seqs[-1] + 1))  # contiguous: nothing lost in between
    finally:
        hub2.close()


def test_backlog_is_bounded_and_counts_what_it_dropped(tmp_path, mosquitto, make_agent, hub):
    agent = make_agent(backlog_max_rows=3)
    mosquitto.stop()
    agent.start()
    hub.wait(lambda: len(_pending(agent)) == 3 and max(_pending(agent)) >= 6, 60, "backlog at its bound")
    agent.stop()
    db = sqlite3.connect(str(agent.state_dir / "backlog.sqlite"))
    try:
        (dropped,) = db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        (rows,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    finally:
        db.close()
    assert rows == 3 and dropped >= 3


def _top1(model: str, coral_models, size: int) -> int:
    """Top-1 of a model on the cat image, preprocessed the way the agent decodes uploads."""
    from agent.runtime import LiteRTBackend, Model
    from protocol.messages import BundleInfo

    m = Model(
        LiteRTBackend(coral_models / model),
        BundleInfo("0" * 64, "ref", "1"),
        {"kind": "image", "height": size, "width": size, "channels": 3, "scale": 1 / 128, "offset": -1.0},
    )
    return int(np.argmax(m.predict_raw(m.image_to_raw((coral_models / "cat_720p.jpg").read_bytes()))))


def test_shadow_candidate_runs_beside_the_active_model_and_reports_agreement(
    tmp_path, coral_models, trust, hub, make_agent
):
    agent = make_agent().start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "a", coral_models, MNV1))
    active = hub.publish_bundle(env, archive)
    hub.desire(agent.device, active)
    hub.report(agent.device, "commit", "ok", active.ref.digest)
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models, MNV2, name="mnv2", version="2"))
    cand = hub.publish_bundle(env, archive)
    hub.desire(agent.device, active, shadow=cand, shadow_sample=1.0)
    hub.report(agent.device, "shadow", "ok", cand.ref.digest)
    n = 0
    for _ in range(6):
        code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
        assert code == 200 and out["bundle"]["digest"] == active.ref.digest  # never served by the candidate
        n += 1
    tm = hub.wait(lambda: [t for t in hub.telemetry if t.shadow and t.shadow.samples], 30, "shadow stats")
    samples = sum(t.shadow.samples for t in hub.telemetry if t.shadow)
    agree = _top1(MNV1, coral_models, 128) == _top1(MNV2, coral_models, 224)
    assert 1 <= samples <= n
    assert tm[0].shadow.agreement == (1.0 if agree else 0.0)
    assert isinstance(tm[0].shadow.latency_delta_ms, float)
    assert tm[0].shadow.bundle == cand.ref.digest  # the hub counts a stage's windows by the candidate they compare
    hub.desire(agent.device, active)  # no shadow any more
    hub.report(agent.device, "shadow", "ok")
    st = hub.wait(lambda: [r for r in hub.reports if r.stage == "shadow" and "ended" in r.detail], 30, "shadow ended")
    assert st


def test_hub_asked_benchmark_of_a_staged_candidate_is_reported_with_p95_of_both_models(
    tmp_path, coral_models, trust, hub, make_agent
):
    """Issue 18 part 2: a desired doc that stages a candidate as shadow (on no requests) and asks
    for a benchmark gets a shadow report carrying both models' timings; the active model is
    untouched. A request naming another bundle is answered with what is wrong."""
    from protocol.benchmark import BenchmarkReport

    agent = make_agent().start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "a", coral_models, MNV1))
    active = hub.publish_bundle(env, archive)
    hub.desire(agent.device, active)
    hub.report(agent.device, "commit", "ok", active.ref.digest)
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "b", coral_models, MNV2, name="mnv2", version="2"))
    cand = hub.publish_bundle(env, archive)
    ask = {"benchmark": {"bundle": cand.ref.digest, "invokes": 12}}
    d = hub.desire(agent.device, active, shadow=cand, shadow_sample=0.0, extra=ask)

    def benchmarked(seq: int) -> list[BenchmarkReport]:
        return [
            BenchmarkReport.from_dict(r.metrics["benchmark"])
            for r in hub.reports
            if r.stage == "shadow" and r.desired_seq == seq and r.metrics and "benchmark" in r.metrics
        ]

    (got,) = hub.wait(lambda: benchmarked(d.seq), 60, "benchmark report")
    assert got.ok, got.detail
    assert got.bundle == cand.ref.digest and got.candidate and got.current
    assert (got.candidate.n, got.current.n) == (12, 12)
    assert got.p95_ratio is not None and got.p95_ratio > 1.0  # MobileNet v2 @224 beside v1 0.25 @128
    code, out = agent.predict_image((coral_models / "cat_720p.jpg").read_bytes())
    assert code == 200 and out["bundle"]["digest"] == active.ref.digest
    # the candidate is already running as shadow: a re-asked benchmark of another bundle is refused
    d2 = hub.desire(agent.device, active, shadow=cand, extra={"benchmark": {"bundle": "f" * 64, "invokes": 3}})
    (bad,) = hub.wait(lambda: benchmarked(d2.seq), 60, "refused benchmark report")
    assert not bad.ok and "benchmark asks for ffffffffffff" in bad.detail
