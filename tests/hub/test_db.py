"""Two hub processes on one PostgreSQL database: rollout work and desired-seq allocation are
serialized by ``hub.db.rollout_section`` (a transaction-level advisory lock), not only by one
process's ``Fleet.rollout_lock``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hub import desired
from hub.db import rollout_section
from hub.models import Device
from hub.server import Hub, build
from hub.transport import MemoryPublisher

from .conftest import hub_config

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("db_url", ["postgres"], indirect=True)]


def two_hubs(tmp_path: Path, keys_dir: Path, db_url: str) -> list[Hub]:
    """Two hubs on one database, as two replicas are: each its own engine and rollout_lock."""
    return [
        build(hub_config(tmp_path / name, keys_dir, db=db_url), publisher=MemoryPublisher(), with_broker=False)
        for name in ("a", "b")
    ]


def test_a_second_transaction_waits_in_the_rollout_section_until_the_first_commits(tmp_path, keys_dir, db_url):
    a, b = two_hubs(tmp_path, keys_dir, db_url)
    inside = threading.Event()
    times: dict[str, float] = {}

    def first() -> None:
        with a.fleet.session() as s:
            rollout_section(s)
            inside.set()
            time.sleep(0.5)
            times["first_commit"] = time.monotonic()
            s.commit()

    t = threading.Thread(target=first)
    t.start()
    try:
        assert inside.wait(10)
        with b.fleet.session() as s:
            rollout_section(s)
            times["second_in"] = time.monotonic()
            s.commit()
    finally:
        t.join(10)
        for h in (a, b):
            h.fleet.engine.dispose()
    assert times["second_in"] >= times["first_commit"]


def test_two_hubs_issuing_desired_documents_to_one_device_never_issue_one_seq_twice(tmp_path, keys_dir, db_url):
    """The next seq is one past the device row's: read-modify-write. Without the advisory lock
    the two hubs read the same row and both issue it (each has its own rollout_lock)."""
    hubs = two_hubs(tmp_path, keys_dir, db_url)
    with hubs[0].fleet.session() as s:
        s.add(Device(id="cam-1", created=1))
        s.commit()
    per_hub = 40
    issued: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def allocate(hub: Hub) -> None:
        fleet = hub.fleet
        try:
            start.wait(10)
            for _ in range(per_hub):
                with fleet.rollout_lock, fleet.session() as s:  # as hub.rollouts and hub.rotation do
                    rollout_section(s)
                    d = s.get(Device, "cam-1")
                    assert d is not None
                    desired.issue(fleet, s, d, None, "idle", None)
                    s.commit()
                    issued.append(d.desired_seq)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(h,)) for h in hubs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors[:3]
        assert sorted(issued) == list(range(1, 2 * per_hub + 1))
        with hubs[1].fleet.session() as s:
            d = s.get(Device, "cam-1")
            assert d is not None and d.desired_seq == 2 * per_hub
    finally:
        for h in hubs:
            h.fleet.engine.dispose()
