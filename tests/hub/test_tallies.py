"""hub.tallies: counts under LARGE rows are exact on every call; from LARGE up the last count is
served (with when it was made) and refreshed off the caller's thread once it is MAX_AGE_S old."""

from __future__ import annotations

import threading
import time

from hub import tallies


class Owner:  # a fleet stand-in: tallies keys its entries by the (weakly held) owner
    pass


def test_small_counts_are_counted_on_every_call():
    owner, n = Owner(), [0]

    def count() -> int:
        n[0] += 1
        return 5

    for _ in range(3):
        t = tallies.tally(owner, "k", count, lambda v: v)
        assert t.value == 5 and t.fresh
    assert n[0] == 3


def test_a_large_count_is_kept_then_refreshed_in_the_background_once_stale(monkeypatch):
    monkeypatch.setattr(tallies, "LARGE", 10)
    owner, values = Owner(), iter([100, 200])
    started, release = threading.Event(), threading.Event()

    def count() -> int:
        v = next(values)
        if v == 200:  # the refresh: hold it until the stale answer has been checked
            started.set()
            assert release.wait(10)
        return v

    first = tallies.tally(owner, "k", count, lambda v: v)
    assert (first.value, first.fresh) == (100, True)
    kept = tallies.tally(owner, "k", count, lambda v: v)
    assert (kept.value, kept.fresh, kept.counted_at) == (100, False, first.counted_at)

    monkeypatch.setattr(tallies, "MAX_AGE_S", 0.0)
    time.sleep(0.01)
    stale = tallies.tally(owner, "k", count, lambda v: v)  # served at once, refresh started
    assert stale.value == 100 and not stale.fresh
    assert started.wait(10)
    again = tallies.tally(owner, "k", count, lambda v: v)  # one refresh at a time: no second count
    assert again.value == 100
    release.set()
    deadline = time.monotonic() + 10
    while tallies.tally(owner, "k", count, lambda v: v).value != 200:
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.01)


def test_a_count_that_shrinks_below_large_is_counted_exactly_again(monkeypatch):
    monkeypatch.setattr(tallies, "LARGE", 10)
    owner, values = Owner(), iter([50, 3, 4])
    assert tallies.tally(owner, "k", lambda: next(values), lambda v: v).value == 50
    monkeypatch.setattr(tallies, "MAX_AGE_S", 0.0)
    time.sleep(0.01)
    tallies.tally(owner, "k", lambda: next(values), lambda v: v)  # stale 50, refresh counts 3
    deadline = time.monotonic() + 10
    while True:
        t = tallies.tally(owner, "k", lambda: next(values), lambda v: v)
        if t.fresh:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert t.value == 4  # dropped once small: this call counted


def test_a_failed_refresh_keeps_the_old_figure(monkeypatch):
    monkeypatch.setattr(tallies, "LARGE", 10)
    owner, calls = Owner(), [0]

    def count() -> int:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("database gone")
        return 42

    assert tallies.tally(owner, "k", count, lambda v: v).value == 42
    monkeypatch.setattr(tallies, "MAX_AGE_S", 0.0)
    time.sleep(0.01)
    assert tallies.tally(owner, "k", count, lambda v: v).value == 42
    deadline = time.monotonic() + 10
    while calls[0] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert tallies.tally(owner, "k", count, lambda v: v).value == 42
