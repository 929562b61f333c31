"""The benchmark stage's wire formats (issue 18 part 2): the hub asks a device to time a staged
candidate beside the model it serves, the device answers with the figures.

- :class:`BenchmarkRequest` rides in a desired document under the key ``"benchmark"``. It is not
  a field of :class:`protocol.messages.Desired` on purpose: an agent older than stages keeps it
  among the document's unknown fields and ignores it, so the hub must (and does) time the stage
  out with a reason rather than wait forever. :func:`request_of` parses it from a desired
  document's ``extra`` once, at the edge.
- :class:`BenchmarkReport` is what the agent sends back (``extra`` of a report, key
  ``"benchmark"``): self-test verdict, then p50/p95 of N timed invokes of the candidate and of
  the current model on the same inputs. Unknown fields are kept.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field as dc_field
from typing import Any

from .errors import BadPayload

KEY = "benchmark"  # the key in a desired document's and a report's extra fields
MAX_INVOKES = 10_000  # a request for more is refused: a benchmark must not starve serving


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sample."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _int(obj: Mapping[str, Any], key: str, what: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadPayload(what, f"{key} must be an integer, got {v!r:.60}")
    return v


def _str(obj: Mapping[str, Any], key: str, what: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise BadPayload(what, f"{key} must be a non-empty string, got {v!r:.60}")
    return v


def _opt_float(obj: Mapping[str, Any], key: str, what: str) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise BadPayload(what, f"{key} must be a finite number >= 0, got {v!r:.60}")
    return float(v)


@dataclass(frozen=True)
class BenchmarkRequest:
    """Time ``invokes`` invokes of the staged bundle ``bundle`` (its sha256) beside the active one."""

    bundle: str
    invokes: int
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "bundle": self.bundle, "invokes": self.invokes}

    @classmethod
    def from_dict(cls, obj: Any, what: str = "desired benchmark") -> BenchmarkRequest:
        if not isinstance(obj, Mapping):
            raise BadPayload(what, f"expected an object, got {obj!r:.60}")
        invokes = _int(obj, "invokes", what)
        if not 1 <= invokes <= MAX_INVOKES:
            raise BadPayload(what, f"invokes must be within 1..{MAX_INVOKES}, got {invokes}")
        rest = {k: v for k, v in obj.items() if k not in ("bundle", "invokes")}
        return cls(_str(obj, "bundle", what), invokes, rest)


def request_of(extra: Mapping[str, Any]) -> BenchmarkRequest | None:
    """The benchmark a desired document asks for (from its unknown fields), or None."""
    raw = extra.get(KEY)
    return None if raw is None else BenchmarkRequest.from_dict(raw)


@dataclass(frozen=True)
class Timing:
    """``n`` timed invokes of one model: their p50 and p95 in milliseconds."""

    n: int
    p50_ms: float
    p95_ms: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Timing:
        return cls(len(samples_ms), percentile(samples_ms, 50), percentile(samples_ms, 95))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "p50_ms": round(self.p50_ms, 4), "p95_ms": round(self.p95_ms, 4)}

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Timing:
        if not isinstance(obj, Mapping):
            raise BadPayload(what, f"expected an object, got {obj!r:.60}")
        n = _int(obj, "n", what)
        p50, p95 = _opt_float(obj, "p50_ms", what), _opt_float(obj, "p95_ms", what)
        if n < 1 or p50 is None or p95 is None:
            raise BadPayload(what, f"needs n >= 1, p50_ms and p95_ms, got {dict(obj)!r:.80}")
        return cls(n, p50, p95)


@dataclass(frozen=True)
class BenchmarkReport:
    """The agent's answer to a :class:`BenchmarkRequest`. ``ok`` False: the candidate failed its
    self-test or could not be timed (``detail`` says why; timings may be missing). ``inputs``
    says what both models were fed (``"selftest vectors"``, or why not the same)."""

    bundle: str
    ok: bool
    detail: str
    candidate: Timing | None = None
    current: Timing | None = None
    inputs: str = ""
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    @property
    def p95_ratio(self) -> float | None:
        """candidate p95 / current p95 (None without both timings, or a current p95 of 0)."""
        if self.candidate is None or self.current is None or self.current.p95_ms <= 0:
            return None
        return self.candidate.p95_ms / self.current.p95_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "bundle": self.bundle,
            "ok": self.ok,
            "detail": self.detail,
            "candidate": self.candidate.to_dict() if self.candidate else None,
            "current": self.current.to_dict() if self.current else None,
            "inputs": self.inputs,
        }

    @classmethod
    def from_dict(cls, obj: Any, what: str = "benchmark report") -> BenchmarkReport:
        if not isinstance(obj, Mapping):
            raise BadPayload(what, f"expected an object, got {obj!r:.60}")
        ok = obj.get("ok")
        if not isinstance(ok, bool):
            raise BadPayload(what, f"ok must be true or false, got {ok!r:.60}")
        detail, inputs = obj.get("detail", ""), obj.get("inputs", "")
        if not isinstance(detail, str) or not isinstance(inputs, str):
            raise BadPayload(what, f"detail and inputs must be strings, got {detail!r:.40}, {inputs!r:.40}")
        cand, cur = obj.get("candidate"), obj.get("current")
        known = ("bundle", "ok", "detail", "candidate", "current", "inputs")
        return cls(
            _str(obj, "bundle", what),
            ok,
            detail,
            Timing.from_dict(cand, f"{what} candidate") if cand is not None else None,
            Timing.from_dict(cur, f"{what} current") if cur is not None else None,
            inputs,
            {k: v for k, v in obj.items() if k not in known},
        )
