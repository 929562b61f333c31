"""Escalation to the cloud by confidence: the pure rules (issue 18 part 3).

The device answers every request locally first. A low-confidence answer may be sent on to the
cloud fallback's bigger model (``policy.escalate_to``), within an upload budget and behind a
circuit breaker, so that a down cloud costs the device nothing but a flag check.

Confidence of a local answer (:func:`confidence`, in 0..1, higher is surer)::

    max_score   a classifier's top score (scores that are not a distribution, e.g. logits, are
                softmaxed first)
    entropy     1 - H(p) / log(n) of the classifier's distribution (1: one class, 0: uniform)
    mean_score  a detector's mean score of the detections at or above ``score_threshold``;
                no detection there: ``policy.no_detections`` ("escalate" -> 0.0, "keep" -> 1.0)

A measure that does not fit the answer (mean_score of a classifier, max_score of a detector)
raises :class:`~agent.errors.ConfigError` naming both: never a silently wrong confidence.

Decision (:func:`decide`), in this order::

    confidence >= threshold                  -> "confident"     (no escalation)
    breaker open (or its probe in flight)    -> "breaker_open"  (no network attempt at all)
    budget refuses (requests/min, bytes/day) -> "budget"
    otherwise                                -> "escalate"

Budget (:class:`Budget`, :func:`take`): a token bucket of ``requests_per_minute`` tokens (refilled
continuously, holding at most one minute's worth) and a UTC-day byte ledger of uploaded request
bytes capped at ``bytes_per_day`` (None: no cap). An escalation takes one token and its bytes.

Circuit breaker (:class:`Breaker`, :func:`allow`, :func:`settle`); ``now`` is monotonic seconds::

    closed     every escalation may go. A failure (error or timeout) is kept with its time;
               ``failures`` of them within ``window_s`` -> open (cool-down ``cooldown_s``)
    open       no attempt. At ``opened_at + cooldown`` the next escalation is the probe ->
               half_open
    half_open  only the probe is in flight; others are refused as breaker_open.
               probe succeeds -> closed (failures forgotten, cool-down back to ``cooldown_s``)
               probe fails    -> open again, cool-down doubled (at most ``max_cooldown_s``)
    success    in closed: clears the failures kept (they must be consecutive)

:class:`Escalator` holds the state under a lock with the counts (no I/O); :mod:`agent.serve` is
the shell that calls it around the cloud request (timeout ``timeout_ms``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import ConfigError

MEASURES = ("max_score", "mean_score", "entropy")
DECISIONS = ("confident", "breaker_open", "budget", "escalate")
DAY_S = 86400


@dataclass(frozen=True)
class Policy:
    """Per-model escalation policy (agent config ``[escalation]``)."""

    escalate_to: str
    measure: str = "max_score"
    threshold: float = 0.5  # escalate when confidence < threshold
    score_threshold: float = 0.5  # mean_score: detections counted at or above this
    no_detections: str = "escalate"  # mean_score with no detection: escalate | keep
    timeout_ms: float = 300.0
    requests_per_minute: float = 60.0
    bytes_per_day: int | None = None
    failures: int = 3
    window_s: float = 30.0
    cooldown_s: float = 5.0
    max_cooldown_s: float = 300.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "escalation") -> Policy:
        """Validate a policy table; unknown keys are kept in ``extra``. Errors name the key and value."""
        d = dict(doc)
        to = d.pop("escalate_to", None)
        if not isinstance(to, str) or not to:
            raise ConfigError(f"{where}.escalate_to: expected the cloud model's name, got {to!r}")
        measure = d.pop("measure", "max_score")
        if measure not in MEASURES:
            raise ConfigError(f"{where}.measure: expected one of {MEASURES}, got {measure!r}")
        no_det = d.pop("no_detections", "escalate")
        if no_det not in ("escalate", "keep"):
            raise ConfigError(f"{where}.no_detections: expected 'escalate' or 'keep', got {no_det!r}")

        def num(key: str, default: float, lo: float, hi: float = math.inf) -> float:
            v = d.pop(key, default)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi or math.isnan(v):
                raise ConfigError(f"{where}.{key}: expected a number in {lo}..{hi}, got {v!r}")
            return float(v)

        threshold = num("threshold", 0.5, 0.0, 1.0)
        score_threshold = num("score_threshold", 0.5, 0.0, 1.0)
        timeout_ms = num("timeout_ms", 300.0, 1.0, 60_000.0)
        rpm = num("requests_per_minute", 60.0, 0.0)
        bpd = d.pop("bytes_per_day", None)
        if bpd is not None and (isinstance(bpd, bool) or not isinstance(bpd, int) or bpd < 0):
            raise ConfigError(f"{where}.bytes_per_day: expected a byte count >= 0, got {bpd!r}")
        failures = num("failures", 3, 1, 1000)
        if failures != int(failures):
            raise ConfigError(f"{where}.failures: expected a whole number, got {failures!r}")
        window = num("window_s", 30.0, 0.001)
        cooldown = num("cooldown_s", 5.0, 0.001)
        max_cooldown = num("max_cooldown_s", max(300.0, cooldown), cooldown)
        return cls(
            escalate_to=to,
            measure=measure,
            threshold=threshold,
            score_threshold=score_threshold,
            no_detections=no_det,
            timeout_ms=timeout_ms,
            requests_per_minute=rpm,
            bytes_per_day=bpd,
            failures=int(failures),
            window_s=window,
            cooldown_s=cooldown,
            max_cooldown_s=max_cooldown,
            extra=d,
        )


# confidence ------------------------------------------------------------------------------
def _distribution(scores: np.ndarray) -> np.ndarray:
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ConfigError("escalation: a classifier answered no scores")
    if p.min() < 0 or p.max() > 1 or abs(p.sum() - 1.0) > 0.05:
        e = np.exp(p - p.max())  # logits or unnormalised scores: softmax
        p = e / e.sum()
    else:
        p = p / p.sum() if p.sum() > 0 else np.full_like(p, 1.0 / p.size)
    return p


def confidence(policy: Policy, doc: Mapping[str, Any], scores: np.ndarray | None) -> float:
    """The local answer's confidence in 0..1 by ``policy.measure`` (rules in the module docstring)."""
    task = doc.get("task", "classification")
    if policy.measure in ("max_score", "entropy"):
        if scores is None:
            raise ConfigError(f"escalation: measure {policy.measure!r} needs class scores, the model answers {task!r}")
        p = _distribution(scores)
        if policy.measure == "max_score":
            return float(p.max())
        if p.size == 1:
            return 1.0
        nz = p[p > 0]
        return float(1.0 - (-(nz * np.log(nz)).sum()) / math.log(p.size))
    if task != "detection":
        raise ConfigError(f"escalation: measure 'mean_score' is for detection, the model answers {task!r}")
    kept = [float(d["score"]) for d in doc.get("detections", []) if float(d["score"]) >= policy.score_threshold]
    if not kept:
        return 0.0 if policy.no_detections == "escalate" else 1.0
    return sum(kept) / len(kept)


# budget ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    tokens: float
    stamp: float  # when ``tokens`` was last refilled (seconds)
    day: int = 0  # UTC day number of ``bytes_today``
    bytes_today: int = 0


def full_budget(policy: Policy, now: float) -> Budget:
    return Budget(tokens=policy.requests_per_minute, stamp=now, day=int(now // DAY_S))


def take(policy: Policy, budget: Budget, now: float, wall: float, size: int) -> tuple[Budget, bool]:
    """Spend one request and ``size`` bytes if both fit: (new budget, True); else (refilled, False).
    ``now`` paces the bucket (monotonic), ``wall`` (epoch seconds) names the UTC day."""
    cap = policy.requests_per_minute
    tokens = min(cap, budget.tokens + max(0.0, now - budget.stamp) * cap / 60.0)
    day = int(wall // DAY_S)
    spent = budget.bytes_today if day == budget.day else 0
    b = Budget(tokens, now, day, spent)
    if tokens < 1.0:
        return b, False
    if policy.bytes_per_day is not None and spent + size > policy.bytes_per_day:
        return b, False
    return replace(b, tokens=tokens - 1.0, bytes_today=spent + size), True


# circuit breaker -------------------------------------------------------------------------
@dataclass(frozen=True)
class Breaker:
    state: str = "closed"  # closed | open | half_open
    failed_at: tuple[float, ...] = ()
    opened_at: float = 0.0
    cooldown_s: float = 0.0  # the current cool-down (0: not yet opened)


def allow(policy: Policy, b: Breaker, now: float) -> tuple[Breaker, bool]:
    """May an escalation go now? In open, the first one after the cool-down is the probe."""
    if b.state == "closed":
        return b, True
    if b.state == "open" and now >= b.opened_at + b.cooldown_s:
        return replace(b, state="half_open"), True
    return b, False


def settle(policy: Policy, b: Breaker, now: float, ok: bool) -> Breaker:
    """The outcome of an escalation that was allowed."""
    if ok:
        return Breaker()
    if b.state == "half_open":
        return Breaker("open", (), now, min(policy.max_cooldown_s, max(b.cooldown_s, policy.cooldown_s) * 2))
    if b.state == "open":  # an attempt allowed before another thread opened it: already open
        return b
    recent = tuple(t for t in b.failed_at if now - t < policy.window_s) + (now,)
    if len(recent) >= policy.failures:
        return Breaker("open", (), now, policy.cooldown_s)
    return replace(b, failed_at=recent)


def decide(conf: float, policy: Policy, breaker_allows: bool, budget_allows: bool) -> str:
    """One of :data:`DECISIONS` (order in the module docstring)."""
    if conf >= policy.threshold:
        return "confident"
    if not breaker_allows:
        return "breaker_open"
    if not budget_allows:
        return "budget"
    return "escalate"


# the stateful holder (thread-safe; no I/O) -----------------------------------------------
COUNTS = ("escalated", "escalation_failed", "breaker_open", "budget")


class Escalator:
    """The policy, budget and breaker state behind one lock, and the counts since start.

    ``ask`` decides (taking the budget and, in open, the probe slot); after an "escalate" the
    caller makes the request and reports it with ``done``."""

    def __init__(self, policy: Policy, now: float, wall: float) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._budget = full_budget(policy, now)
        self._budget = replace(self._budget, day=int(wall // DAY_S))
        self.breaker = Breaker()
        self.counts = dict.fromkeys(COUNTS, 0)

    def ask(self, conf: float, size: int, now: float, wall: float) -> str:
        if conf >= self.policy.threshold:
            return "confident"
        with self._lock:
            breaker, may = allow(self.policy, self.breaker, now)
            if not may:
                self.counts["breaker_open"] += 1
                return "breaker_open"
            budget, fits = take(self.policy, self._budget, now, wall, size)
            self._budget = budget
            if not fits:
                self.counts["budget"] += 1
                return "budget"  # a probe slot not taken: the breaker is left as it was
            self.breaker = breaker
            return "escalate"

    def done(self, ok: bool, now: float) -> None:
        with self._lock:
            self.breaker = settle(self.policy, self.breaker, now, ok)
            self.counts["escalated" if ok else "escalation_failed"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
