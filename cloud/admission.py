"""Load shedding at the front door: bounded queueing, whatever the load
(:class:`cloud.config.Admission`).

Rules (:func:`decide` is the whole decision, a pure function; :class:`ServiceRate` measures the
one figure it needs; :class:`cloud.guard.Guard` applies both to every prediction request, before
its body is read):

* up to ``floor`` requests in flight are always admitted (by default workers x max batch: enough
  to fill every worker's batch) - shedding below that would idle a core without shortening
  anyone's wait;
* beyond it a request is refused when ``max_inflight`` requests are in flight already (default
  6 x workers x max batch). Requests in flight is what every admitted request waits behind -
  the event loop (HTTP, multipart, JSON) as well as the batch queue - so the bound holds for
  HTTP-bound models (digits) as for compute-bound ones, and admitted requests wait about
  ``max_inflight`` / the service rate whatever the offered load;
* or when the latency it can expect is over ``latency_budget_s``: the requests in flight, itself
  included, over the rate at which the service completes requests **while busy** (Little's law,
  L = lambda x W). Only completions while at least ``floor`` requests are in flight count
  towards the rate, so it is the service's capacity, not the arrival rate of a quiet moment; it
  is measured over windows of ``WINDOW_S`` busy seconds, smoothed (``ALPHA``) and kept while the
  service is quiet. This bound is the one that tightens when the machine slows down (other
  work on the cores), where a fixed count would let waits grow; before the first busy window
  the rate is unknown and only ``max_inflight`` applies;
* a refused request is answered at once (503, ``Retry-After``: the expected latency rounded up,
  at least 1 s), names the bound it hit, never reaches a queue and never counts towards the rate;
* 0 disables ``max_inflight`` or ``latency_budget_s``; the service's default leaves the budget off
  (:func:`cloud.config.build` says why).

Several server processes (``--processes N``, :mod:`cloud.load`): ``max_inflight`` and the
latency budget are machine-wide, ``floor`` stays per process. A process admits while it has
fewer than ``floor`` of its own in flight, whatever the others hold (so no process idles its
cores because the kernel handed the other more connections); beyond that it counts every other
process at least at its floor - the others' unused floors are reserved for them - so the
requests in flight across the processes never exceed ``max_inflight`` (which
:func:`cloud.config.build` keeps >= processes x floor). The latency rule uses every process's
requests in flight over the sum of their busy rates: each process measures the rate of its own
workers, and the machine's capacity is their sum. With one process there are no others and the
rules are the one-process rules above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Admission

WINDOW_S = 0.25  # busy seconds per rate sample: short, so a burst is measured within a second
ALPHA = 0.5  # weight of the newest sample


@dataclass(frozen=True)
class Verdict:
    """Admitted or not, and why: ``bound`` is the bound a refused request hit (``max_inflight``
    or ``latency_budget``, the metric's label), ``expected_s`` the latency the request could
    expect (None before the rate is measured), ``retry_after_s`` the hint for a refused one."""

    admitted: bool
    reason: str
    expected_s: float | None = None
    retry_after_s: float = 0.0
    bound: str | None = None


def decide(inflight: int, rate: float | None, policy: Admission, others: tuple[int, ...] = ()) -> Verdict:
    """Admit a new request with ``inflight`` others in flight in this process, ``others`` the
    requests in flight in each other process of the same ``serve`` (none with one process) and
    ``rate`` the busy rate of all of them together (requests/s, None before the first
    measurement)?"""
    total = inflight + sum(others)
    expected = (total + 1) / rate if rate else None
    if inflight < policy.floor:
        return Verdict(True, f"{inflight} in flight, under the floor of {policy.floor}", expected)
    retry = float(max(1, math.ceil(expected))) if expected is not None else 1.0
    # every other process holds at least its floor: it may still fill its workers' batches
    held = inflight + sum(max(n, policy.floor) for n in others)
    if policy.max_inflight and held >= policy.max_inflight:
        where = (
            f"{total} requests in flight across {len(others) + 1} processes ({held} counting each "
            f"process's floor of {policy.floor})"
            if others
            else f"{inflight} requests in flight"
        )
        return Verdict(
            False,
            f"{where}, the most admitted at once is {policy.max_inflight} (--max-inflight)",
            expected,
            retry,
            "max_inflight",
        )
    budget = policy.latency_budget_s
    if budget and expected is not None and expected > budget:
        return Verdict(
            False,
            f"{total} requests in flight at {rate:.0f} req/s: expected latency {expected * 1e3:.0f} ms "
            f"is over the latency budget of {budget * 1e3:.0f} ms (--latency-budget-ms)",
            expected,
            retry,
            "latency_budget",
        )
    return Verdict(True, "within the bounds", expected)


class ServiceRate:
    """Requests in flight, and the rate they complete while at least ``floor`` are in flight.
    Not thread-safe: the guard calls it from the event loop only. Times come from the caller."""

    def __init__(self, floor: int, window_s: float = WINDOW_S, alpha: float = ALPHA) -> None:
        self.floor = floor
        self.window_s = window_s
        self.alpha = alpha
        self.inflight = 0
        self.rate: float | None = None
        self._busy_s = 0.0
        self._done = 0
        self._last: float | None = None

    def _advance(self, now: float) -> None:
        if self._last is not None and self.inflight >= self.floor:
            self._busy_s += max(0.0, now - self._last)
        self._last = now

    def enter(self, now: float) -> None:
        self._advance(now)
        self.inflight += 1

    def leave(self, now: float) -> None:
        busy = self.inflight >= self.floor
        self._advance(now)
        self.inflight -= 1
        if busy:
            self._done += 1
        if self._busy_s >= self.window_s:
            sample = self._done / self._busy_s
            self.rate = sample if self.rate is None else self.alpha * sample + (1 - self.alpha) * self.rate
            self._busy_s, self._done = 0.0, 0
