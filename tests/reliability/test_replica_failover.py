"""Issue 15 part 3: two hub replicas on one PostgreSQL, one broker and one bundle store, and
simulated devices; the replica the rollout was created on is killed -9 once the first cohort has
installed. The survivor finishes the rollout, no telemetry window a device sent is lost, and no
two desired documents ever carry one sequence number (bench/failover.py is the scenario; here
with 40 devices, ``python -m bench failover`` runs it with 1,000)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import failover

from ..hub.conftest import _pg_reachable

pytestmark = [pytest.mark.integration, pytest.mark.postgres]  # not slow: it runs in make test (issue 15)


def test_a_replica_killed_mid_rollout_the_other_finishes_it_losing_no_window_and_no_seq_twice(tmp_path: Path):
    why = _pg_reachable()
    if why:
        pytest.skip(why)
    import psycopg

    db, schema = failover._schema()
    try:
        o = failover.run(tmp_path, 40, db, schema)
    finally:
        with psycopg.connect(failover.PG, autocommit=True) as con:
            con.execute(f"drop schema if exists {schema} cascade")
    print("\n" + failover._line(o))
    assert o["installed_at_kill"] < 40, o  # killed mid-way, not after the end
    assert o["completed"] and o["installed"] == 40, o.get("final")
    assert o["telemetry_drained"] and o["telemetry_sent"] > 0, o
    assert o["telemetry_lost"] == 0, o
    assert o["duplicate_seqs"] == 0 and o["unreadable_documents"] == 0, o["duplicate_examples"]
    assert o["desired_documents_seen"] >= 40, o  # the observer saw every device's documents
