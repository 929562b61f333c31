"""Metered links: a daily byte budget for bundle downloads and telemetry, and a download rate cap.

A Pi on a cellular plan pays per byte. ``daily_byte_budget`` caps the bytes the agent spends per
UTC day on bundle chunks and telemetry together; ``download_rate_bytes_s`` caps how fast chunks
come in. Install reports are never held back (the hub must learn what the device did) but are
counted, so the budget says what the link really carried.

Rules (the pure core; ``now`` is epoch seconds, a simulated clock in the tests)::

    ledger     the day (UTC day number) and the bytes spent that day per kind
               (bundle, telemetry, report); a new day starts from zero
    report     always sent
    telemetry  sent while today's total + its size <= budget; else it waits in the backlog
               (bounded, agent.backlog) until the next UTC midnight
    samples    hard-example chunks: the same rule as telemetry; they wait on disk
    bundle     a download starts (or resumes) only if the bytes still to fetch fit in what is
               left of today; else it is deferred to the next UTC midnight (and reported)
    rate       a token bucket of ``rate`` bytes/s holding at most ``burst`` bytes: a chunk of
               n bytes waits until the bucket holds n (an empty bucket: n / rate seconds)

The shell, :class:`Meter`, keeps the ledger across restarts in ``state_dir/budget.json`` (saved
at most once a minute: a power cut forgets at most that much spending) and paces chunks by
sleeping in the MQTT network thread before the chunk is acknowledged: the agent stops reading
the socket, TCP's window closes and the broker sends no faster than the cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .durable import read_json, write_json

KINDS = ("bundle", "telemetry", "report", "samples")
DAY_S = 86400


def day_of(now: float) -> int:
    return int(now // DAY_S)


def next_midnight(now: float) -> float:
    return float((day_of(now) + 1) * DAY_S)


@dataclass(frozen=True)
class Ledger:
    day: int = 0
    bundle: int = 0
    telemetry: int = 0
    report: int = 0
    samples: int = 0  # hard examples uploaded (agent.hardexamples): they wait like telemetry

    @property
    def total(self) -> int:
        return self.bundle + self.telemetry + self.report + self.samples

    def on(self, now: float) -> Ledger:
        """This ledger as of ``now``: a new UTC day starts from zero."""
        return self if day_of(now) == self.day else Ledger(day_of(now))

    def to_dict(self) -> dict[str, int]:
        return {
            "day": self.day,
            "bundle": self.bundle,
            "telemetry": self.telemetry,
            "report": self.report,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, obj: Any) -> Ledger:
        if not isinstance(obj, dict):
            return cls()
        vals = [obj.get(k, 0) for k in ("day", *KINDS)]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals):
            return cls()
        return cls(*vals)


def spend(ledger: Ledger, kind: str, n: int, now: float) -> Ledger:
    if kind not in KINDS:
        raise ValueError(f"budget kind must be one of {KINDS}, got {kind!r}")
    led = ledger.on(now)
    return replace(led, **{kind: getattr(led, kind) + n})


@dataclass(frozen=True)
class Verdict:
    send: bool
    retry_at: float | None = None  # when the budget has room again (the next UTC midnight)
    why: str = ""


def verdict(ledger: Ledger, kind: str, n: int, now: float, daily: int | None) -> Verdict:
    """May ``n`` bytes of ``kind`` go now?"""
    if kind == "report" or daily is None:
        return Verdict(True)
    used = ledger.on(now).total
    if used + n <= daily:
        return Verdict(True)
    why = f"{n} bytes of {kind} do not fit today's byte budget: {used} of {daily} used"
    if n > daily:
        why += f" (more than a whole day's budget: it will take {-(-n // daily)} days' budgets)"
    return Verdict(False, next_midnight(now), why)


def download_verdict(ledger: Ledger, remaining: int, now: float, daily: int | None) -> Verdict:
    """May a download of ``remaining`` more bytes start? One bigger than a whole day's budget
    starts on a fresh day (it then runs past the budget, reported: refusing it forever would
    leave the device on an old model with no way forward)."""
    if daily is None:
        return Verdict(True)
    led = ledger.on(now)
    if led.total + remaining <= daily or (remaining > daily and led.total == 0):
        return Verdict(True)
    return verdict(ledger, "bundle", remaining, now, daily)


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float


def pace(bucket: Bucket, n: int, now: float, rate: float, burst: float) -> tuple[Bucket, float]:
    """Take ``n`` bytes from the bucket: (the bucket after, seconds to wait before sending)."""
    tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
    wait = max(0.0, (n - tokens) / rate)
    return Bucket(tokens + wait * rate - n, now + wait), wait


# the shell -------------------------------------------------------------------------------------


class Meter:
    """The agent's byte accounting (thread-safe): the daemon's flush and the MQTT thread use it."""

    SAVE_EVERY_S = 60.0

    def __init__(
        self,
        path: Path,
        daily: int | None,
        rate: int | None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path, self.daily, self.rate = path, daily, rate
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._ledger = Ledger.from_dict(read_json(path, {})).on(clock())
        self._bucket = Bucket(float(rate or 0), clock())
        self._saved = 0.0

    def allows(self, kind: str, n: int) -> Verdict:
        with self._lock:
            return verdict(self._ledger, kind, n, self._clock(), self.daily)

    def allows_download(self, remaining: int) -> Verdict:
        with self._lock:
            return download_verdict(self._ledger, remaining, self._clock(), self.daily)

    def spend(self, kind: str, n: int) -> None:
        with self._lock:
            now = self._clock()
            self._ledger = spend(self._ledger, kind, n, now)
            due = now - self._saved >= self.SAVE_EVERY_S
        if due:
            self.save()

    def chunk(self, n: int) -> None:
        """A chunk of ``n`` bytes arrived: count it, and hold the link back to the rate cap."""
        self.spend("bundle", n)
        if self.rate is None:
            return
        with self._lock:
            self._bucket, wait = pace(self._bucket, n, self._clock(), self.rate, max(self.rate, n))
        if wait > 0:
            self._sleep(wait)

    def usage(self) -> dict[str, Any]:
        """Today's bytes for telemetry: per kind, the budget and what is left of it."""
        with self._lock:
            led = self._ledger.on(self._clock())
        out: dict[str, Any] = {**led.to_dict(), "budget": self.daily, "rate_bytes_s": self.rate}
        out["left"] = max(0, self.daily - led.total) if self.daily is not None else None
        return out

    def save(self) -> None:
        with self._lock:
            doc, self._saved = self._ledger.to_dict(), self._clock()
        write_json(self.path, doc)
