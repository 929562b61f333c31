"""The bridge's bounded queue of received messages, handed to the ingest worker in batches.

paho's network thread puts; one worker takes. The worker is woken twice a batch at most: when
the first message arrives in an empty inbox and when a batch is full (or at ``stop``), not once
a message. A ``queue.Queue`` read item by item woke the worker for every message while it
gathered a batch, and each wake took the interpreter from paho's thread (one GIL): at 7,000
messages/s a batch of 20 ms was ~140 wakes (docs/scale.md, "the inbox, and the ack watcher").

Only the worker removes items, so the count can only grow while it waits: a ``put`` that makes
the count 1 or ``batch_max`` is the one that must wake it. ``deque.append`` and ``popleft`` are
atomic under the GIL; the bound is checked before the append (one producer), so the inbox never
holds more than ``maxsize``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, maxsize: int, batch_max: int) -> None:
        if maxsize < 1 or batch_max < 1:
            raise ValueError(f"inbox sizes must be >= 1, got maxsize={maxsize} batch_max={batch_max}")
        self.maxsize = maxsize
        self.batch_max = batch_max
        self._items: deque[T] = deque()
        self._ready = threading.Event()
        self._stopped = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Adds ``item``; False (nothing added) when the inbox is full."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        n = len(self._items)
        if n == 1 or n == self.batch_max:
            self._ready.set()
        return True

    def stop(self) -> None:
        """What is in the inbox is still handed out; then ``take`` returns None."""
        self._stopped = True
        self._ready.set()

    def take(self, wait: float) -> list[T] | None:
        """Blocks until there is a message; then gathers up to ``batch_max`` of them for at most
        ``wait`` seconds more. None once stopped and empty."""
        while True:
            self._ready.clear()
            if self._items:
                break
            if self._stopped:
                return None
            self._ready.wait()
        deadline = time.monotonic() + wait
        while len(self._items) < self.batch_max and not self._stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._ready.clear()
            if len(self._items) >= self.batch_max:
                break
            self._ready.wait(left)
        pop = self._items.popleft
        return [pop() for _ in range(min(len(self._items), self.batch_max))]
