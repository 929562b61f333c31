"""Hard examples: which low-confidence inputs to keep for relabelling, the pure rules (issue 18 part 4).

Off unless a policy turns it on: the agent config's ``[hard_examples]`` (``enabled = true``),
else the active bundle's signature field ``hard_examples`` (a table of the same keys, signed with
the bundle). ``models`` (a list of bundle names) limits a config policy to those models.

Confidence is :func:`agent.escalation.confidence` of the local answer (``measure``: max_score,
entropy, mean_score; ``score_threshold``, ``no_detections`` as there). A classifier answering a
batch ([N, K] scores) is as unsure as its least sure row.

Decision (:func:`decide`), in this order; ``now`` is epoch seconds::

    confidence >= threshold                      -> "confident"   (nothing kept)
    input larger than max_input_bytes            -> "too_big"
    this UTC minute already holds per_minute     -> "minute_cap"
    this UTC hour already holds per_hour         -> "hour_cap"
    this UTC day already holds per_day           -> "day_cap"
    disk_used + size > disk_bytes                -> "disk_cap"    (the oldest are kept: they are
                                                                   on their way to the hub)
    otherwise                                    -> "sample"      (counted in all three windows)

Windows are calendar windows (minute, hour, day of UTC): a cap of N per hour keeps at most N in
any clock hour, and the counts survive restarts (the shell saves :class:`Caps` with each sample).
``disk_used`` is what the kept-but-not-yet-uploaded examples take; an example leaves the disk when
the hub confirms it stored the whole of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import escalation
from .errors import ConfigError

DECISIONS = ("confident", "too_big", "minute_cap", "hour_cap", "day_cap", "disk_cap", "sample")
MAX_INPUT_BYTES = 8 * 2**20  # protocol.samples.MAX_SAMPLE_BYTES


@dataclass(frozen=True)
class Policy:
    enabled: bool = False
    measure: str = "max_score"
    threshold: float = 0.5  # keep when confidence < threshold
    score_threshold: float = 0.5
    no_detections: str = "escalate"  # mean_score with no detection: "escalate" = unsure, "keep" = sure
    per_minute: int = 2
    per_hour: int = 20
    per_day: int = 100
    disk_bytes: int = 50 * 2**20
    max_input_bytes: int = 2 * 2**20
    models: tuple[str, ...] | None = None  # bundle names this policy applies to (None: any)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "hard_examples") -> Policy:
        """Validate a policy table; unknown keys kept in ``extra``. Errors name the key and value."""
        d = dict(doc)
        enabled = d.pop("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}.enabled: expected true or false, got {enabled!r}")
        measure = d.pop("measure", "max_score")
        if measure not in escalation.MEASURES:
            raise ConfigError(f"{where}.measure: expected one of {escalation.MEASURES}, got {measure!r}")
        no_det = d.pop("no_detections", "escalate")
        if no_det not in ("escalate", "keep"):
            raise ConfigError(f"{where}.no_detections: expected 'escalate' or 'keep', got {no_det!r}")

        def num(key: str, default: float) -> float:
            v = d.pop(key, default)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0 or math.isnan(v):
                raise ConfigError(f"{where}.{key}: expected a number in 0..1, got {v!r}")
            return float(v)

        def count(key: str, default: int, hi: int) -> int:
            v = d.pop(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                raise ConfigError(f"{where}.{key}: expected a whole number in 0..{hi}, got {v!r}")
            return v

        models = d.pop("models", None)
        if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
            raise ConfigError(f"{where}.models: expected a list of bundle names, got {models!r:.80}")
        return cls(
            enabled=enabled,
            measure=measure,
            threshold=num("threshold", 0.5),
            score_threshold=num("score_threshold", 0.5),
            no_detections=no_det,
            per_minute=count("per_minute", 2, 10_000),
            per_hour=count("per_hour", 20, 1_000_000),
            per_day=count("per_day", 100, 10_000_000),
            disk_bytes=count("disk_bytes", 50 * 2**20, 2**40),
            max_input_bytes=count("max_input_bytes", 2 * 2**20, MAX_INPUT_BYTES),
            models=tuple(models) if models is not None else None,
            extra=d,
        )

    def applies_to(self, model_name: str) -> bool:
        return self.enabled and (self.models is None or model_name in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "measure": self.measure,
            "threshold": self.threshold,
            "per_minute": self.per_minute,
            "per_hour": self.per_hour,
            "per_day": self.per_day,
            "disk_bytes": self.disk_bytes,
            "max_input_bytes": self.max_input_bytes,
            "models": list(self.models) if self.models is not None else None,
        }


def confidence(policy: Policy, doc: Mapping[str, Any], scores: np.ndarray | None) -> float:
    """The local answer's confidence by the policy's measure (:func:`agent.escalation.confidence`);
    a batch of class scores ([N, K], N > 1): its least confident row. Raises ConfigError when the
    measure does not fit the answer."""
    as_esc = escalation.Policy(
        escalate_to="hard_examples",
        measure=policy.measure,
        score_threshold=policy.score_threshold,
        no_detections=policy.no_detections,
    )
    if scores is not None and np.ndim(scores) == 2 and np.shape(scores)[0] > 1:
        return min(escalation.confidence(as_esc, doc, row) for row in np.asarray(scores))
    return escalation.confidence(as_esc, doc, scores)


@dataclass(frozen=True)
class Caps:
    """Samples kept in the current UTC minute, hour and day (each keyed by its window number)."""

    minute: tuple[int, int] = (0, 0)  # (window number, count)
    hour: tuple[int, int] = (0, 0)
    day: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, list[int]]:
        return {"minute": list(self.minute), "hour": list(self.hour), "day": list(self.day)}

    @classmethod
    def from_dict(cls, obj: Any) -> Caps:
        try:
            return cls(*(tuple(int(x) for x in obj[k])[:2] for k in ("minute", "hour", "day")))  # type: ignore[arg-type]
        except (TypeError, KeyError, ValueError):
            return cls()


_SPANS = (("minute", 60), ("hour", 3600), ("day", 86400))


def _count(window: tuple[int, int], number: int) -> int:
    return window[1] if window[0] == number else 0


def decide(policy: Policy, caps: Caps, conf: float, size: int, disk_used: int, now: float) -> tuple[Caps, str]:
    """(caps after, one of :data:`DECISIONS`); rules in the module docstring."""
    if conf >= policy.threshold:
        return caps, "confident"
    if size > policy.max_input_bytes:
        return caps, "too_big"
    limits = {"minute": policy.per_minute, "hour": policy.per_hour, "day": policy.per_day}
    for name, span in _SPANS:
        if _count(getattr(caps, name), int(now // span)) >= limits[name]:
            return caps, f"{name}_cap"
    if disk_used + size > policy.disk_bytes:
        return caps, "disk_cap"
    after = caps
    for name, span in _SPANS:
        number = int(now // span)
        after = replace(after, **{name: (number, _count(getattr(caps, name), number) + 1)})
    return after, "sample"
