"""The bridge's inbox: bounded, in order, nothing lost between paho's thread and the worker, and
the worker woken at the first message and at a full batch, not once a message."""

from __future__ import annotations

import threading

import pytest

from hub.inbox import Inbox


class CountingEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


def _taking(inbox: Inbox[int], wait: float) -> tuple[threading.Thread, list[list[int] | None]]:
    got: list[list[int] | None] = []
    t = threading.Thread(target=lambda: got.append(inbox.take(wait)), daemon=True)
    t.start()
    return t, got


def test_a_full_batch_is_handed_over_without_waiting_out_the_gather_time():
    inbox: Inbox[int] = Inbox(maxsize=100, batch_max=5)
    for i in range(7):
        assert inbox.put(i)
    t, got = _taking(inbox, wait=3600.0)  # an hour: only a full batch lets it return
    t.join(10)
    assert not t.is_alive()
    assert got == [[0, 1, 2, 3, 4]]
    assert len(inbox) == 2


def test_a_worker_waiting_on_an_empty_inbox_wakes_for_the_first_message_and_the_batch_filling():
    inbox: Inbox[int] = Inbox(maxsize=100, batch_max=3)
    t, got = _taking(inbox, wait=3600.0)
    for i in range(3):
        inbox.put(i)
    t.join(10)
    assert not t.is_alive()
    assert got == [[0, 1, 2]]


def test_a_short_gather_time_hands_over_a_partial_batch():
    inbox: Inbox[int] = Inbox(maxsize=100, batch_max=500)
    inbox.put(1)
    inbox.put(2)
    assert inbox.take(0.01) == [1, 2]


def test_puts_signal_the_worker_only_at_the_first_message_and_at_a_full_batch():
    # the point of the inbox: a queue.Queue woke the worker once a message while it gathered
    inbox: Inbox[int] = Inbox(maxsize=10_000, batch_max=500)
    inbox._ready = CountingEvent()
    for i in range(1_200):
        inbox.put(i)
    assert inbox._ready.sets == 2  # the 1st and the 500th
    assert inbox.take(0.0) == list(range(500))
    assert inbox.take(0.0) == list(range(500, 1_000))
    assert inbox.take(0.0) == list(range(1_000, 1_200))


def test_a_full_inbox_refuses_the_message_and_keeps_what_it_holds():
    inbox: Inbox[str] = Inbox(maxsize=2, batch_max=10)
    assert inbox.put("a") and inbox.put("b")
    assert not inbox.put("c")
    assert len(inbox) == 2
    assert inbox.take(0.0) == ["a", "b"]


def test_stop_hands_out_what_is_left_then_ends_the_worker():
    inbox: Inbox[int] = Inbox(maxsize=100, batch_max=2)
    for i in range(3):
        inbox.put(i)
    inbox.stop()
    assert inbox.take(3600.0) == [0, 1]
    assert inbox.take(3600.0) == [2]
    assert inbox.take(3600.0) is None


def test_stop_wakes_a_worker_waiting_on_an_empty_inbox():
    inbox: Inbox[int] = Inbox(maxsize=100, batch_max=2)
    t, got = _taking(inbox, wait=3600.0)
    inbox.stop()
    t.join(10)
    assert not t.is_alive()
    assert got == [None]


def test_every_message_from_a_busy_producer_reaches_the_worker_once_and_in_order():
    inbox: Inbox[int] = Inbox(maxsize=1_000_000, batch_max=64)
    n = 200_000
    received: list[int] = []

    def worker() -> None:
        while (batch := inbox.take(0.001)) is not None:
            received.extend(batch)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    for i in range(n):
        assert inbox.put(i)
    inbox.stop()
    t.join(60)
    assert not t.is_alive()
    assert received == list(range(n))


@pytest.mark.parametrize("maxsize,batch_max", [(0, 10), (10, 0)])
def test_sizes_below_one_are_refused(maxsize: int, batch_max: int):
    with pytest.raises(ValueError, match=f"maxsize={maxsize} batch_max={batch_max}"):
        Inbox(maxsize, batch_max)
