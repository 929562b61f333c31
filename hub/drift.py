"""Drift verdicts at the hub: device bin counts vs the bundle's baseline. Pure.

The math (bin counts, PSI, Jensen-Shannon, binned-KS bound) is :mod:`protocol.sketch`, the
baseline and the thresholds that apply to each feature are :mod:`protocol.baseline`
(:meth:`~protocol.baseline.Baseline.thresholds_for`: the model's, the hub's ``"*"``, the
feature's own, the hub's per feature, the more specific winning); this module decides per
feature:

* fewer than ``min_samples`` in the window -> ``insufficient_data`` (never "drift");
* PSI >= ``psi_alert`` -> ``alert``;
* PSI >= ``psi_warn``, or the binned KS bound above its critical value at ``ks_alpha``
  (two-sample, ``c(a) * sqrt((n + m) / (n m))``) -> ``warn`` (small but real shifts that PSI's
  fixed thresholds miss at this sample size);
* else ``ok``.

Windows merge by adding counts, so a device, a cohort or a fleet is judged the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.baseline import Baseline, Thresholds as Stated
from protocol.errors import BadPayload
from protocol.sketch import DriftThresholds as Thresholds, js_divergence, ks_bound, merge_counts, psi

STATUSES = ("insufficient_data", "ok", "warn", "alert")


@dataclass(frozen=True)
class FeatureVerdict:
    feature: str
    status: str
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


@dataclass(frozen=True)
class DriftReport:
    features: tuple[FeatureVerdict, ...] = field(default_factory=tuple)

    @property
    def status(self) -> str:
        """The worst feature status; ``insufficient_data`` only if no feature had data."""
        ranked = [f.status for f in self.features if f.status != "insufficient_data"]
        if not ranked:
            return "insufficient_data"
        return max(ranked, key=STATUSES.index)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "features": {f.feature: f.to_dict() for f in self.features}}


def ks_critical(alpha: float, n: int, m: int) -> float:
    """Two-sample KS critical value (asymptotic): c(a) * sqrt((n + m) / (n m))."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))


def verdict(feature: str, ref: Sequence[int], cur: Sequence[int], th: Thresholds = Thresholds()) -> FeatureVerdict:
    if len(ref) != len(cur):
        raise BadPayload("drift counts", f"{feature}: window has {len(cur)} bins, baseline has {len(ref)}")
    n, m = sum(cur), sum(ref)
    if n < th.min_samples or m == 0:
        return FeatureVerdict(feature, "insufficient_data", n)
    p, j, k = psi(ref, cur), js_divergence(ref, cur), ks_bound(ref, cur)
    crit = ks_critical(th.ks_alpha, n, m)
    status = "alert" if p >= th.psi_alert else "warn" if (p >= th.psi_warn or k > crit) else "ok"
    return FeatureVerdict(feature, status, n, p, j, k, crit)


def assess(
    baseline: Baseline,
    windows: Sequence[Mapping[str, Mapping[str, Sequence[int]]]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> DriftReport:
    """Merge telemetry ``drift`` dicts (``{"inputs": {feature: counts}}``) and judge each
    baseline feature; windows binned on other edges (another bin count) are left out.
    ``overrides``: hub thresholds for this model, ``{"*": {...}, feature: {...}}``."""
    over = {k: Stated.from_dict(v, f"drift override {k}") for k, v in (overrides or {}).items()}
    out = []
    for key, feat in baseline.features().items():
        side, name = key.split(".", 1)
        wins = [list(w[side][name]) for w in windows if name in (w.get(side) or {})]
        wins = [w for w in wins if len(w) == len(feat.ref)]
        if not wins:
            out.append(FeatureVerdict(key, "insufficient_data", 0))
            continue
        out.append(verdict(key, feat.ref, merge_counts(*wins), baseline.thresholds_for(key, over)))
    return DriftReport(tuple(out))
