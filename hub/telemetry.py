"""Telemetry windows read back: merged counts, latency, drift bins and shadow comparisons
(:func:`merge`, the one merge of stored windows), drift verdicts against a bundle's baseline,
fleet/group/device summaries, and retention pruning. Sketches and drift bins merge exactly, so
a fleet, a cohort or a device is summarised the same way.

Who merges through :func:`merge` (each caller keeps choosing *which* windows): the summaries
and the device page here, the alert scan (:mod:`hub.alerting`), the rollout gates' health
(:mod:`hub.rollouts`) and the dashboard's charts (:mod:`hub.web.queries`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from protocol.baseline import Baseline
from protocol.device import Shadow
from protocol.errors import BadPayload
from protocol.messages import COUNT_KEYS
from protocol.sketch import LatencySketch, merge_all

from . import drift
from .fleet import Fleet
from .models import (
    Device,
    ReportRecord,
    TelemetryRollup,
    TelemetryWindow,
)

log = logging.getLogger(__name__)


class WindowRow(Protocol):
    """What :func:`merge` reads of a stored window: a :class:`TelemetryWindow`, or a row of
    these columns."""

    # read-only (properties): a table row's dict column satisfies "dict or None" only if the
    # protocol promises not to assign None back
    @property
    def device(self) -> str: ...
    @property
    def latency(self) -> dict[str, Any] | None: ...
    @property
    def inferences(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def tpu(self) -> int: ...
    @property
    def cpu(self) -> int: ...
    @property
    def cloud(self) -> int: ...
    @property
    def drift(self) -> dict[str, Any] | None: ...
    @property
    def shadow(self) -> dict[str, Any] | None: ...


@dataclass
class Merged:
    """Windows added together. ``drift`` is per feature (``"inputs.brightness"``) and bin count:
    a window binned on other edges never mixes with the baseline's bins, it is left out when a
    verdict picks the bins it judges (:meth:`drift_for`)."""

    windows: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    sketch: LatencySketch = field(default_factory=LatencySketch)
    drift: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    shadow_agree: int = 0
    shadow_total: int = 0

    def drift_counts(self, key: str, bins: int) -> list[int] | None:
        """Merged counts of feature ``key`` from the windows that had ``bins`` bins."""
        return self.drift.get(key, {}).get(bins)

    def drift_for(self, baseline: Baseline) -> dict[str, list[int]]:
        """Merged counts of each baseline feature, on its bins (features with no data left out)."""
        out = {}
        for key, feat in baseline.features().items():
            counts = self.drift_counts(key, len(feat.ref))
            if counts is not None:
                out[key] = counts
        return out


def merge(rows: Iterable[WindowRow]) -> Merged:
    """Add up telemetry windows: counts, latency sketch, drift bins, shadow comparisons.

    Each part is read on its own: a part that does not parse (rows stored before ingest checked
    it) leaves out that part of that window only, never the window's other parts."""
    m = Merged()
    totals = m.counts
    sketches: list[LatencySketch] = []  # merged once at the end (protocol.sketch.merge_all)
    drift: dict[str, dict[int, list[list[Any]]]] = {}  # feature -> bins -> every window's counts, added at the end
    for r in rows:
        m.windows += getattr(r, "windows", 1)  # a rollup row (hub.rollups) stands for its windows
        for k in COUNT_KEYS:
            v = getattr(r, k)
            if v:
                totals[k] += int(v)
        if r.latency:
            try:
                sketches.append(LatencySketch.from_dict(r.latency))
            except BadPayload:
                pass
        for side, feats in (r.drift or {}).items():
            if not isinstance(feats, dict):
                continue
            for name, value in feats.items():
                if not isinstance(value, list):
                    continue
                by_bins = drift.setdefault(f"{side}.{name}", {})
                # a rollup keeps one list per bin count the feature came in; a window has one list
                nested = value and isinstance(value[0], list) and all(isinstance(v, list) for v in value)
                for counts in value if nested else [value]:
                    by_bins.setdefault(len(counts), []).append(counts)
        if r.shadow is not None:
            try:
                sh = Shadow.from_dict(r.shadow, f"stored shadow of {r.device}")
            except BadPayload:
                continue
            m.shadow_agree += sh.agreed
            m.shadow_total += sh.samples
    m.sketch = merge_all(m.sketch, sketches)
    m.drift = {
        key: {bins: [sum(map(int, column)) for column in zip(*lists, strict=True)] for bins, lists in by_bins.items()}
        for key, by_bins in drift.items()
    }
    return m


def latency_summary(sketch: dict[str, Any]) -> dict[str, float | None]:
    try:
        s = LatencySketch.from_dict(sketch or {})
    except BadPayload:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None}
    p50, p95 = s.quantile(0.5), s.quantile(0.95)
    return {
        "p50_ms": p50 * 1000 if p50 is not None else None,
        "p95_ms": p95 * 1000 if p95 is not None else None,
        "mean_ms": s.mean * 1000 if s.mean is not None else None,
    }


def summarise(fleet: Fleet, rows: Sequence[TelemetryWindow], bundle: str | None) -> dict[str, Any]:
    """Merge telemetry windows of one bundle: counts, latency quantiles, drift verdicts."""
    m = merge(r for r in rows if bundle is None or r.bundle == bundle)
    out: dict[str, Any] = {"windows": m.windows, **m.counts, **latency_summary(m.sketch.to_dict()), "drift": {}}
    if bundle:
        out["drift"] = drift_verdicts(fleet, bundle, m)
    return out


def drift_verdicts(fleet: Fleet, digest: str, merged: Merged) -> dict[str, Any]:
    """Per-feature verdicts (:func:`hub.drift.assess`) of merged windows vs the bundle's baseline."""
    baseline = fleet.store.baseline_of(digest)
    if baseline is None:
        return {}
    windows: dict[str, dict[str, list[int]]] = {}
    for key, counts in merged.drift_for(baseline).items():
        side, name = key.split(".", 1)
        windows.setdefault(side, {})[name] = counts
    try:
        report = drift.assess(baseline, [windows])
    except BadPayload as exc:
        return {"error": str(exc)}
    return {k: v for k, v in report.to_dict()["features"].items()}


def summary(
    fleet: Fleet,
    bundle: str | None = None,
    device: str | None = None,
    group: str | None = None,
    since: int | None = None,
    until: int | None = None,
    max_windows: int = 20_000,
) -> dict[str, Any]:
    """Merged windows matching the filters (bundle, device, group, window_end range):
    counts, latency quantiles and, for one bundle, drift verdicts. Sketches and bin counts
    merge exactly, so a fleet, a cohort or a device is summarised the same way.

    A range reaching past the raw windows still kept (:mod:`hub.rollups`) reads 1-minute rollups
    before the boundary and raw windows after it (each window once; a rollup's minute is in or
    out as a whole)."""
    with fleet.session() as s:
        rows: list[Any] = []
        cut = _rolled_boundary(s, fleet.clock(), fleet.config.raw_retention)
        for table in (TelemetryWindow, TelemetryRollup) if cut is not None else (TelemetryWindow,):
            t: Any = table
            q = select(t)
            if table is TelemetryRollup:
                if since is not None and since >= (cut or 0):
                    continue
                q = q.where(t.resolution == 60, t.bucket < cut)
            elif cut is not None:
                q = q.where(t.received >= cut)
            if bundle:
                q = q.where(t.bundle == bundle)
            if device:
                q = q.where(t.device == device)
            if group is not None:
                ids = select(Device.id).where(Device.group == group)
                q = q.where(col(t.device).in_(ids))
            if since is not None:
                q = q.where(t.window_end >= since)
            if until is not None:
                q = q.where(t.window_end <= until)
            rows += s.exec(q.order_by(col(t.window_end).desc()).limit(max_windows - len(rows))).all()
        out = summarise(fleet, rows, bundle)
        out.update(
            {
                "devices": len({r.device for r in rows}),
                "truncated": len(rows) >= max_windows,
                "since": min((r.window_start for r in rows), default=None),
                "until": max((r.window_end for r in rows), default=None),
            }
        )
        return out


def _rolled_boundary(s: Session, now: int, raw_retention: int) -> int | None:
    """:func:`hub.rollups.boundary` (that module builds on this one), ``None`` with no rollups."""
    newest = s.exec(select(func.max(TelemetryRollup.bucket)).where(TelemetryRollup.resolution == 60)).one()
    if newest is None:
        return None
    return min((now - raw_retention) // 60 * 60, int(newest) + 60)


def prune(fleet: Fleet, retention_s: int) -> int:
    """Drop telemetry windows and reports older than ``retention_s`` (device totals stay). The
    hub's ticker prunes windows by :func:`hub.rollups.prune` (never one not yet rolled up) and
    reports by :func:`prune_reports`."""
    cutoff = fleet.clock() - retention_s
    with fleet.session() as s:
        tw = TelemetryWindow.__table__  # type: ignore[attr-defined]
        n = s.connection().execute(delete(tw).where(tw.c.received < cutoff)).rowcount
        s.commit()
    prune_reports(fleet, retention_s)
    return int(n or 0)


def prune_reports(fleet: Fleet, retention_s: int) -> int:
    """Drop install reports older than ``retention_s``."""
    cutoff = fleet.clock() - retention_s
    with fleet.session() as s:
        rr = ReportRecord.__table__  # type: ignore[attr-defined]
        n = s.connection().execute(delete(rr).where(rr.c.received < cutoff)).rowcount
        s.commit()
    return int(n or 0)
