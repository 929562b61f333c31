"""Mergeable summaries and the math that compares them. Pure Python, no numpy.

**LatencySketch**: counts in fixed log-spaced buckets. Bucket ``i`` holds values in
``[MIN_S * GAMMA**i, MIN_S * GAMMA**(i+1))`` with ``GAMMA = 2 ** (1/8)`` (about 9 % wide, so a
quantile is within ~4.5 % of the truth). Every device uses the same buckets, so merging fleets
or cohorts is adding counts: exact, associative, order-free.

**Drift histograms**: counts on bin edges fixed at build time and shipped inside the signed
bundle. ``edges`` are the k interior cut points, giving ``k + 1`` bins (below the first edge,
between edges, at or above the last). Comparing a window with the reference:

* PSI = sum((c - r) * ln(c / r)) over bins, with proportions floored at ``EPS``;
* Jensen-Shannon divergence (base 2, within 0..1);
* ``ks_bound``: the largest gap between the two binned CDFs, which is a lower bound of the KS
  statistic of the unbinned samples (the gap at bin edges is observed exactly);
* :func:`drift_verdict`: the one drift rule. The hub's device page and summaries, its drift
  alerts, the rollout gate and the dashboard's PSI charts all judge through it, with the
  thresholds :meth:`protocol.baseline.Baseline.thresholds_for` resolves for the feature:

  - fewer than ``min_samples`` in the window (or none, or an empty reference) ->
    ``insufficient_data`` (never "drift");
  - PSI >= ``psi_alert`` -> ``alert``;
  - PSI >= ``psi_warn``, or the binned KS bound above its critical value at ``ks_alpha``
    (two-sample, ``c(a) * sqrt((n + m) / (n m))``, :func:`ks_critical`) -> ``warn`` (small but
    real shifts that PSI's fixed thresholds miss at this sample size);
  - else ``ok``.

  Defaults: ``psi_warn`` 0.1, ``psi_alert`` 0.25, ``min_samples`` 100, ``ks_alpha`` 0.001.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field as dc_field
from typing import Any

from .errors import BadPayload

GAMMA = 2 ** (1 / 8)
MIN_S = 1e-6  # 1 microsecond
MAX_INDEX = int(math.log(3600 / MIN_S, GAMMA)) + 1  # up to an hour
EPS = 1e-4
# Prometheus histogram bounds that fall on sketch bucket edges (every 4th edge: half an octave,
# 0.256 ms .. 8.39 s), so a sketch becomes histogram buckets exactly: no bucket is split.
HISTOGRAM_STEP = 4
HISTOGRAM_EDGES = tuple(range(64, 185, HISTOGRAM_STEP))  # sketch edge i is MIN_S * GAMMA**i
HISTOGRAM_BOUNDS_S = tuple(float(f"{MIN_S * GAMMA**i:.6g}") for i in HISTOGRAM_EDGES)  # 6 digits: readable le


@dataclass
class LatencySketch:
    """Latency in seconds. Mutable for recording on a device; merge by :meth:`merge`."""

    counts: dict[int, int] = dc_field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = 0.0

    @staticmethod
    def index(seconds: float) -> int:
        if seconds <= MIN_S:
            return 0
        return min(MAX_INDEX, int(math.log(seconds / MIN_S, GAMMA)))

    def add(self, seconds: float, n: int = 1) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number >= 0, got {seconds!r}")
        i = self.index(seconds)
        self.counts[i] = self.counts.get(i, 0) + n
        self.count += n
        self.total += seconds * n
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)

    def merge(self, other: LatencySketch) -> LatencySketch:
        out = LatencySketch(
            dict(self.counts),
            self.count + other.count,
            self.total + other.total,
            min(self.min, other.min),
            max(self.max, other.max),
        )
        for i, c in other.counts.items():
            out.counts[i] = out.counts.get(i, 0) + c
        return out

    def quantile(self, q: float) -> float | None:
        """Value at quantile ``q`` (0..1): the geometric middle of the bucket holding it."""
        if self.count == 0:
            return None
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, got {q}")
        rank = q * (self.count - 1)
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen > rank:
                mid: float = MIN_S * GAMMA ** (i + 0.5)  # float ** float is typed Any (could be complex)
                return max(self.min, min(self.max, mid))
        return self.max

    def histogram(self) -> list[int]:
        """Counts per Prometheus bucket of :data:`HISTOGRAM_BOUNDS_S` (not cumulative), then the
        count above the last bound (``+Inf``): sketch bucket ``i`` ends at edge ``i + 1``, so it
        lies wholly below the first bound whose edge is >= ``i + 1``."""
        out = [0] * (len(HISTOGRAM_EDGES) + 1)
        for i, c in self.counts.items():
            out[bisect.bisect_left(HISTOGRAM_EDGES, i + 1)] += c
        return out

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "b": {str(i): c for i, c in sorted(self.counts.items())},
            "n": self.count,
            "sum": self.total,
            "min": self.min if self.count else 0.0,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> LatencySketch:
        what = "latency sketch"
        if not obj:
            return cls()
        try:
            counts = {int(k): int(v) for k, v in dict(obj.get("b", {})).items()}
            n = int(obj.get("n", 0))
            total = float(obj.get("sum", 0.0))
            lo = float(obj.get("min", 0.0))
            hi = float(obj.get("max", 0.0))
        except (TypeError, ValueError) as exc:
            raise BadPayload(what, f"fields b/n/sum/min/max have the wrong types ({exc})") from None
        if counts and (min(counts) < 0 or max(counts) > MAX_INDEX or min(counts.values()) < 0):
            raise BadPayload(what, f"bucket index outside 0..{MAX_INDEX} or negative count")
        if sum(counts.values()) != n:
            raise BadPayload(what, f"bucket counts sum to {sum(counts.values())}, n says {n}")
        if not all(math.isfinite(x) and x >= 0 for x in (total, lo, hi)):
            raise BadPayload(what, "sum/min/max must be finite and >= 0")
        return cls(counts, n, total, lo if n else math.inf, hi)


def merge_all(base: LatencySketch, parts: Iterable[LatencySketch]) -> LatencySketch:
    """``base.merge(p)`` for each part in turn (the same buckets, count, and sum added in the same
    order), without an intermediate sketch per part: the hub merges thousands at once."""
    counts = dict(base.counts)
    n, total, lo, hi = base.count, base.total, base.min, base.max
    for p in parts:
        for i, c in p.counts.items():
            counts[i] = counts.get(i, 0) + c
        n += p.count
        total += p.total
        lo = min(lo, p.min)
        hi = max(hi, p.max)
    return LatencySketch(counts, n, total, lo, hi)


def bin_index(edges: Sequence[float], value: float) -> int:
    return bisect.bisect_right(edges, value)


def bin_counts(edges: Sequence[float], values: Iterable[float]) -> list[int]:
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect.bisect_right(edges, v)] += 1
    return counts


def quantile_edges(values: Sequence[float], bins: int = 10) -> list[float]:
    """Interior cut points at reference quantiles, de-duplicated (for building baselines)."""
    if not values:
        raise ValueError("cannot build edges from no values")
    s = sorted(values)
    edges: list[float] = []
    for k in range(1, bins):
        e = s[min(len(s) - 1, int(round(k * (len(s) - 1) / bins)))]
        if not edges or e > edges[-1]:
            edges.append(float(e))
    return edges


def _proportions(counts: Sequence[int]) -> list[float]:
    n = sum(counts)
    return [max(c / n, EPS) for c in counts]


def _check_pair(ref: Sequence[int], cur: Sequence[int]) -> None:
    if len(ref) != len(cur):
        raise BadPayload("drift counts", f"window has {len(cur)} bins, baseline has {len(ref)}")
    if sum(ref) == 0 or sum(cur) == 0:
        raise ValueError("both histograms need at least one sample")


def psi(ref: Sequence[int], cur: Sequence[int]) -> float:
    _check_pair(ref, cur)
    return sum((c - r) * math.log(c / r) for r, c in zip(_proportions(ref), _proportions(cur), strict=True))


def js_divergence(ref: Sequence[int], cur: Sequence[int]) -> float:
    _check_pair(ref, cur)
    nr, nc = sum(ref), sum(cur)
    p = [x / nr for x in ref]
    q = [x / nc for x in cur]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(a: list[float], b: list[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0)

    return max(0.0, (kl(p, m) + kl(q, m)) / 2)


def ks_bound(ref: Sequence[int], cur: Sequence[int]) -> float:
    _check_pair(ref, cur)
    nr, nc = sum(ref), sum(cur)
    cr = cc = 0.0
    best = 0.0
    for r, c in zip(ref, cur, strict=True):
        cr += r / nr
        cc += c / nc
        best = max(best, abs(cr - cc))
    return best


def merge_counts(*windows: Sequence[int]) -> list[int]:
    if not windows:
        return []
    size = len(windows[0])
    if any(len(w) != size for w in windows):
        raise BadPayload("drift counts", "cannot merge windows with different bin counts")
    return [sum(col) for col in zip(*windows, strict=True)]


STATUSES = ("insufficient_data", "ok", "warn", "alert")  # worst last


@dataclass(frozen=True)
class DriftThresholds:
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    min_samples: int = 100
    ks_alpha: float = 0.001


@dataclass(frozen=True)
class DriftVerdict:
    status: str  # one of STATUSES
    samples: int
    psi: float | None = None
    js: float | None = None
    ks: float | None = None
    ks_critical: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "samples": self.samples,
            "psi": self.psi,
            "js": self.js,
            "ks": self.ks,
            "ks_critical": self.ks_critical,
        }


def ks_critical(alpha: float, n: int, m: int) -> float:
    """Two-sample KS critical value (asymptotic): c(a) * sqrt((n + m) / (n m))."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))


def drift_verdict(
    ref: Sequence[int], cur: Sequence[int], thresholds: DriftThresholds = DriftThresholds()
) -> DriftVerdict:
    """Judge one feature's window counts against its reference counts (the rule is in the
    module docstring). Raises :class:`BadPayload` when the bin counts differ."""
    if len(ref) != len(cur):
        raise BadPayload("drift counts", f"window has {len(cur)} bins, baseline has {len(ref)}")
    n, m = sum(cur), sum(ref)
    if n < thresholds.min_samples or n == 0 or m == 0:
        return DriftVerdict("insufficient_data", n)
    p, j, k = psi(ref, cur), js_divergence(ref, cur), ks_bound(ref, cur)
    crit = ks_critical(thresholds.ks_alpha, n, m)
    status = "alert" if p >= thresholds.psi_alert else "warn" if (p >= thresholds.psi_warn or k > crit) else "ok"
    return DriftVerdict(status, n, p, j, k, crit)
