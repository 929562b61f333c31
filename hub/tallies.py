"""Fleet-wide counts that a large fleet cannot afford on every request, kept a few seconds.

A count over a listing, a rollout's devices by state, the fleet page's devices by version and
board: each reads every row it counts. Under :data:`LARGE` rows that is cheap (a few ms) and
stays exact and synchronous, counted on each request. From :data:`LARGE` rows up (100,000
devices: 100-200 ms a count on a loaded 2-core machine) the last count is served while it is at
most :data:`MAX_AGE_S` old; an older one is still served (with its age) while one background
thread counts again, so no request but a cold one waits for a count. Callers say how old their
figure is (``counted_at``), never pass a stale count off as fresh.

Rules: one entry per (fleet, key); a size under :data:`LARGE` is never kept (the next request
counts again); at most one refresh per entry runs at a time; a refresh that fails keeps the old
figure and logs, the next stale request tries again.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

LARGE = 5_000  # rows counted: from here a count is kept, below it is counted on each request
MAX_AGE_S = 5.0  # a kept count older than this is refreshed in the background
MAX_KEPT = 256  # entries per owner (each filter of a listing is one); the oldest go first

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    value: T
    at: float  # time.time() of the count
    refreshing: bool = False


@dataclass(frozen=True)
class Tally(Generic[T]):
    """A count and when it was made (``counted_at``, unix seconds; ``fresh``: on this request)."""

    value: T
    counted_at: float
    fresh: bool


_kept: weakref.WeakKeyDictionary[Any, dict[Hashable, _Entry[Any]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def tally(owner: Any, key: Hashable, count: Callable[[], T], size: Callable[[T], int]) -> Tally[T]:
    """``count()`` now, or the kept figure for ``key`` when the last one covered :data:`LARGE`
    rows or more (``size(value)``). ``count`` opens its own session: it may run on a thread."""
    with _lock:
        entries = _kept.setdefault(owner, {})
        e = entries.get(key)
        now = time.time()
        if e is not None and now - e.at > MAX_AGE_S and not e.refreshing:
            e.refreshing = True
            threading.Thread(target=_refresh, args=(owner, key, count, size), daemon=True).start()
    if e is not None:
        return Tally(e.value, e.at, False)
    at = time.time()
    value = count()
    if size(value) >= LARGE:
        with _lock:
            entries = _kept.setdefault(owner, {})
            entries[key] = _Entry(value, at)
            while len(entries) > MAX_KEPT:
                entries.pop(min(entries, key=lambda k: entries[k].at))
    return Tally(value, at, True)


def _refresh(owner: Any, key: Hashable, count: Callable[[], T], size: Callable[[T], int]) -> None:
    at = time.time()
    try:
        value = count()
    except Exception:  # the old figure stays; the next stale request tries again
        log.exception("refreshing the count %r failed", key)
        with _lock:
            e = _kept.get(owner, {}).get(key)
            if e is not None:
                e.refreshing = False
        return
    with _lock:
        entries = _kept.get(owner)
        if entries is None:
            return
        if size(value) >= LARGE:
            entries[key] = _Entry(value, at)
        else:
            entries.pop(key, None)


def forget(owner: Any) -> None:
    """Drop every kept count of ``owner`` (after a change a caller must see at once)."""
    with _lock:
        _kept.pop(owner, None)
