"""hub.followups: while more messages wait in the ingest queue, the install reports and device
changes of several batches reach the rollouts in one run (its cost grows with the rollout, not
the batch); never later than ``hold_s`` after the first; at once when nothing waits."""

from __future__ import annotations

from hub import followups

from .helpers import report, status
from .test_api import push


def _rollout(client, memhub, bundle_dir, n: int = 3):
    hub, pub = memhub
    hub.ingest.handle([(f"ef/v1/dev/d{i}/status", status(f"d{i}")) for i in range(n)])
    b = push(client, bundle_dir())
    rid = client.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}}).json()["id"]
    rows = client.get(f"/api/v1/rollouts/{rid}").json()["devices"]
    return hub, rid, {r["device_id"]: r["seq"] for r in rows}, b["digest"]


def _states(client, rid: str) -> dict[str, str]:
    return {r["device_id"]: r["state"] for r in client.get(f"/api/v1/rollouts/{rid}").json()["devices"]}


def test_reports_of_batches_that_arrive_while_the_queue_is_full_reach_the_rollout_in_one_run(
    client, memhub, bundle_dir, monkeypatch
):
    hub, rid, seqs, digest = _rollout(client, memhub, bundle_dir)
    runs: list[tuple[int, int]] = []
    real = followups.rollouts.follow_up

    def counted(fleet, reports, touched):
        runs.append((len(reports), len(touched)))
        real(fleet, reports, touched)

    monkeypatch.setattr(followups.rollouts, "follow_up", counted)
    fu = hub.ingest.followups
    fu.hold_s = 60.0
    fu.behind = lambda: True  # more batches waiting
    for i in range(3):
        hub.ingest.handle([(f"ef/v1/dev/d{i}/report", report(f"d{i}", 1, seqs[f"d{i}"], "download", "progress"))])
    assert runs == [] and fu.held == 3 and set(_states(client, rid).values()) == {"issued"}

    fu.behind = lambda: False  # the queue drained: the next batch, even one with nothing to store, tells all
    hub.ingest.handle([("ef/v1/dev/d0/report", b"not json")])
    assert runs == [(3, 0)] and fu.held == 0
    assert set(_states(client, rid).values()) == {"installing"}


def test_a_hub_that_stays_behind_still_tells_the_rollout_after_hold_s(client, memhub, bundle_dir, monkeypatch):
    hub, rid, seqs, digest = _rollout(client, memhub, bundle_dir, n=2)
    fu = hub.ingest.followups
    fu.behind = lambda: True
    fu.hold_s = 60.0
    hub.ingest.handle([("ef/v1/dev/d0/report", report("d0", 1, seqs["d0"], "commit", bundle=digest))])
    assert _states(client, rid)["d0"] == "issued"
    fu.hold_s = 0.0  # the hold has run out
    hub.ingest.handle([("ef/v1/dev/d1/report", report("d1", 1, seqs["d1"], "download", "progress"))])
    assert _states(client, rid) == {"d0": "installed", "d1": "installing"}
    assert followups.MIN_HOLD_S <= fu.hold_s <= followups.MAX_HOLD_S  # set from the run it just made


def test_with_no_queue_every_batch_is_told_at_once(client, memhub, bundle_dir):
    hub, rid, seqs, digest = _rollout(client, memhub, bundle_dir, n=1)
    hub.ingest.handle([("ef/v1/dev/d0/report", report("d0", 1, seqs["d0"], "commit", bundle=digest))])
    assert _states(client, rid) == {"d0": "installed"} and hub.ingest.followups.held == 0
