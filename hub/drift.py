"""Drift verdicts at the hub: a bundle's baseline against merged window counts. Pure.

The rule is :func:`protocol.sketch.drift_verdict` (PSI alert, PSI or binned-KS warn,
``insufficient_data`` below ``min_samples``) and the thresholds that apply to each feature are
:meth:`protocol.baseline.Baseline.thresholds_for`; both are used here, never restated. This
module merges windows per feature and ranks the features. The device page, the telemetry
summaries and the drift alerts judge through :func:`assess`; the rollout gate
(:mod:`hub.rollout`) and the dashboard's PSI charts (:mod:`hub.web.series`) call the same
protocol functions, so all of them agree on a window (``tests/hub/test_drift.py``).

Windows merge by adding counts, so a device, a cohort or a fleet is judged the same way.

A non-classifier's output features (:mod:`protocol.taskstats`: detections per frame and per
class, detection scores, class-pixel fractions, keypoint scores, embedding norm and distance to
the baseline centroid) are baseline features like any other, so every judge above sees them;
:meth:`DriftReport.signals` groups the verdicts by the signal they measure
(:func:`protocol.taskstats.signal`), the worst status of its features. Thresholds are the
baseline's (PSI warn 0.1, alert 0.25, at least 100 samples per feature by default; docs/models.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.baseline import Baseline, Thresholds as Stated
from protocol.sketch import STATUSES, DriftThresholds as Thresholds, DriftVerdict, drift_verdict, merge_counts
from protocol.taskstats import signal

__all__ = ["STATUSES", "DriftReport", "FeatureVerdict", "Thresholds", "assess", "verdict"]


@dataclass(frozen=True)
class FeatureVerdict(DriftVerdict):
    """The one drift verdict (:func:`protocol.sketch.drift_verdict`) of a named feature."""

    feature: str = ""

    @classmethod
    def of(cls, feature: str, v: DriftVerdict) -> FeatureVerdict:
        return cls(v.status, v.samples, v.psi, v.js, v.ks, v.ks_critical, feature)


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

    def signals(self) -> dict[str, str]:
        """Signal -> the worst status of its features (``insufficient_data`` if none had data)."""
        grouped: dict[str, list[str]] = {}
        for f in self.features:
            grouped.setdefault(signal(f.feature), []).append(f.status)
        return {name: _worst(statuses) for name, statuses in sorted(grouped.items())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "signals": self.signals(),
            "features": {f.feature: f.to_dict() for f in self.features},
        }


def _worst(statuses: Sequence[str]) -> str:
    ranked = [s for s in statuses if s != "insufficient_data"]
    return max(ranked, key=STATUSES.index) if ranked else "insufficient_data"


def verdict(feature: str, ref: Sequence[int], cur: Sequence[int], th: Thresholds = Thresholds()) -> FeatureVerdict:
    """:func:`protocol.sketch.drift_verdict` under the feature's name."""
    return FeatureVerdict.of(feature, drift_verdict(ref, cur, th))


def assess(
    baseline: Baseline,
    windows: Sequence[Mapping[str, Mapping[str, Sequence[int]]]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> DriftReport:
    """Merge telemetry ``drift`` dicts (``{"inputs": {feature: counts}}``) and judge each
    baseline feature with :meth:`Baseline.verdict`; windows binned on other edges (another bin
    count) are left out. ``overrides``: hub thresholds for this model, ``{"*": {...}, feature: {...}}``."""
    over = {k: Stated.from_dict(v, f"drift override {k}") for k, v in (overrides or {}).items()}
    out = []
    for key, feat in baseline.features().items():
        side, name = key.split(".", 1)
        wins = [list(w[side][name]) for w in windows if name in (w.get(side) or {})]
        wins = [w for w in wins if len(w) == len(feat.ref)]
        if not wins:
            out.append(FeatureVerdict("insufficient_data", 0, feature=key))
            continue
        out.append(FeatureVerdict.of(key, baseline.verdict(key, merge_counts(*wins), over)))
    return DriftReport(tuple(out))
