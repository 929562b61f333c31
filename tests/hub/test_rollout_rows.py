"""A rollout's rows kept between runs (hub.rollout_rows.Kept): read again only when
``rollout.rows_version`` moved, so another replica's writes are seen and a rolled-back run
leaves nothing behind. Each scenario compares what the keeping process loads with a fresh read."""

from __future__ import annotations

import pytest

from hub import rollout_rows, rollouts, ticker
from hub.models import Rollout
from hub.rollout import Command
from hub.server import build
from hub.transport import MemoryPublisher

from .conftest import hub_config
from .helpers import report
from .test_rollouts import NOW, fleet_on, push


class _Fresh:
    """A process that kept nothing: its load reads every row."""

    def __init__(self, fleet):
        self.store, self.kept_rows = fleet.store, {}


def _load(fleet, rid):
    with fleet.session() as s:
        r = s.get(Rollout, rid)
        kept, kept_rows = rollout_rows.load(fleet, s, r)
        fresh, fresh_rows = rollout_rows.load(_Fresh(fleet), s, r)
    assert kept_rows == fresh_rows and kept.devices == fresh.devices  # what was kept is what is stored
    return kept


def test_a_rollouts_rows_are_kept_between_runs_and_read_again_after_another_replica_wrote_them(
    client, memhub, bundle_dir, tmp_path, keys_dir, db_url
):
    a, _ = memhub
    fleet_on(a, client, _, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    policy = {**NOW, "soak_s": 3600}
    r = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": policy})
    rid, seqs = r.json()["id"], {d["device_id"]: d["seq"] for d in r.json()["devices"]}
    kept = a.fleet.kept_rows[rid]
    ticker.tick(a.fleet)  # nothing moved: the rows are not read again
    assert a.fleet.kept_rows[rid].rows is kept.rows
    assert {d.state for d in _load(a.fleet, rid).devices} == {"issued"}

    b = build(hub_config(tmp_path / "b", keys_dir, db=db_url), publisher=MemoryPublisher(), with_broker=False)
    try:  # a replica on the same database takes the devices' commit reports
        b.ingest.handle([(f"ef/v1/dev/{d}/report", report(d, 1, q, bundle=v2["digest"])) for d, q in seqs.items()])
    finally:
        b.fleet.engine.dispose()
    assert {d.state for d in _load(a.fleet, rid).devices} == {"installed"}  # a sees what b wrote
    ticker.tick(a.fleet)
    assert client.get(f"/api/v1/rollouts/{rid}").json()["counts"] == {"installed": 3}


def test_a_rolled_back_run_leaves_the_kept_rows_as_they_were(client, memhub, bundle_dir):
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": NOW}).json()[
        "id"
    ]
    kept = hub.fleet.kept_rows[rid]
    with pytest.raises(RuntimeError, match="after the run"):
        with rollouts._exclusive(hub.fleet) as (s, out):
            rollouts._run(hub.fleet, s, s.get(Rollout, rid), [Command("rollback", "test")], out, observe=False)
            raise RuntimeError("the transaction fails after the run")
    assert hub.fleet.kept_rows[rid] is kept
    assert {d.state for d in _load(hub.fleet, rid).devices} == {"issued"}
    back = client.post(f"/api/v1/rollouts/{rid}/rollback").json()  # the same command, committed this time
    assert back["counts"] == {"rolling_back": 3}
    assert {d.state for d in _load(hub.fleet, rid).devices} == {"rolling_back"}


def test_a_newer_rollout_superseding_rows_moves_the_older_ones_version(client, memhub, bundle_dir):
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2, v3 = push(client, bundle_dir(version="2.0.0")), push(client, bundle_dir(version="3.0.0"))
    r1 = client.post("/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": NOW}).json()
    before = hub.fleet.kept_rows[r1["id"]].version
    client.post("/api/v1/rollouts", json={"bundle": v3["digest"], "target": {"all": True}, "policy": NOW})
    assert {d.state for d in _load(hub.fleet, r1["id"]).devices} == {"cancelled"}
    with hub.fleet.session() as s:
        assert s.get(Rollout, r1["id"]).rows_version > before
