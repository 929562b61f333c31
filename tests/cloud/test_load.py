"""The in-flight counts shared by the server processes of one ``serve --processes N``
(cloud/load.py): slots, the lock, a dead holder, and two services admitting against one bound."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cloud import config as cfg
from cloud.load import SLOT_BYTES, SharedLoad
from cloud.service import Service

from .conftest import Setup


def test_each_process_sees_the_others_counts_and_the_summed_rate(tmp_path: Path) -> None:
    a = SharedLoad.create(3, tmp_path)
    b = SharedLoad(a.path, 3)  # another process maps the same file
    try:
        with a.locked():
            a.publish(0, 5, 30.0)
            assert a.rate(0, 30.0) == 30.0 and a.others(0) == (0, 0)
        with b.locked():
            b.publish(2, 7, None)  # not measured yet: adds nothing to the rate
            assert b.others(2) == (5, 0) and b.rate(2, None) == 30.0
        with a.locked():
            assert a.others(1) == (5, 7) and a.rate(1, 10.0) == 40.0
        assert a.total() == 12
        a.reset(0)
        assert b.total() == 7 and b.rate(1, None) is None
    finally:
        b.close()
        a.remove()
    assert not a.path.exists()


def test_a_file_of_the_wrong_size_or_a_slot_out_of_range_is_refused_naming_it(tmp_path: Path) -> None:
    load = SharedLoad.create(2, tmp_path)
    try:
        with pytest.raises(ValueError, match=f"{2 * SLOT_BYTES} bytes, expected 3 x {SLOT_BYTES}"):
            SharedLoad(load.path, 3)
        with pytest.raises(ValueError, match="slot 2 out of range 0..1"):
            load.reset(2)
    finally:
        load.remove()


def _hold_the_lock_and_die(path: str, ready: Any) -> None:
    load = SharedLoad(Path(path), 2)
    with load.locked():
        load.publish(1, 9, 50.0)
        ready.set()
        signal.pause()  # killed here, lock held


def test_a_process_killed_holding_the_lock_does_not_wedge_the_others_and_its_slot_is_freed(tmp_path: Path) -> None:
    load = SharedLoad.create(2, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_the_lock_and_die, args=(str(load.path), ready))
    child.start()
    try:
        assert ready.wait(60)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(60)
        # the kernel dropped its flock: this does not block; what it held stays until reset
        assert load.total() == 9
        load.reset(1)  # what the supervisor does when it sees the process gone
        assert load.total() == 0
    finally:
        if child.is_alive():
            child.kill()
        load.remove()


def test_two_services_on_one_shared_load_admit_at_most_max_inflight_between_them(
    setup: Setup, trust: Any, tmp_path: Path
) -> None:
    # 2 processes x 1 worker x batch 2: floor 2 each, at most 6 in flight across both
    config = cfg.build(
        bundles=str(setup.bundles),
        root=str(setup.root),
        environ={},
        poll_s=0,
        processes=2,
        workers=1,
        max_batch=2,
        max_inflight=6,
    )
    shared = SharedLoad.create(2, tmp_path)
    a, b = Service(config, trust.root, shared=shared, slot=0), Service(config, trust.root, shared=shared, slot=1)
    try:
        # a gets every connection: it stops at 4, leaving b's floor of 2
        assert [a.enter_prediction(0.0).admitted for _ in range(6)] == [True] * 4 + [False] * 2
        refused = a.enter_prediction(0.0)
        assert refused.bound == "max_inflight" and "4 requests in flight across 2 processes" in refused.reason
        assert [b.enter_prediction(0.0).admitted for _ in range(3)] == [True, True, False]
        assert shared.total() == 6
        a.leave_prediction(0.1)  # a place frees: either may take it, once
        assert b.enter_prediction(0.1).admitted and not a.enter_prediction(0.1).admitted
        assert shared.total() == 6 and (a.load.inflight, b.load.inflight) == (3, 3)
        # b's process dies: its slot is reset, and its places are a's (minus b's floor) again
        shared.reset(1)
        assert [a.enter_prediction(0.2).admitted for _ in range(2)] == [True, False]
        assert shared.total() == 4
    finally:
        shared.remove()


def test_one_process_needs_no_shared_load(setup: Setup, trust: Any) -> None:
    config = cfg.build(
        bundles=str(setup.bundles), root=str(setup.root), environ={}, poll_s=0, workers=1, max_batch=2, max_inflight=3
    )
    s = Service(config, trust.root)
    assert s.shared is None
    assert [s.enter_prediction(0.0).admitted for _ in range(4)] == [True, True, True, False]
    s.leave_prediction(0.1)
    assert s.load.inflight == 2 and s.enter_prediction(0.1).admitted
