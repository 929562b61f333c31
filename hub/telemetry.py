"""Telemetry windows read back: merged counts and latency quantiles, drift verdicts against a
bundle's baseline, fleet/group/device summaries, and retention pruning. Sketches and drift bins
merge exactly, so a fleet, a cohort or a device is summarised the same way."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from protocol.errors import BadPayload
from protocol.sketch import LatencySketch, merge_counts

from . import drift
from .errors import NotFound
from .fleet import Fleet
from .models import (
    Device,
    ReportRecord,
    TelemetryWindow,
)

log = logging.getLogger(__name__)


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


def summarise(fleet: Fleet, s: Session, rows: Sequence[TelemetryWindow], bundle: str | None) -> dict[str, Any]:
    """Merge telemetry windows of one bundle: counts, latency quantiles, drift verdicts."""
    rows = [r for r in rows if bundle is None or r.bundle == bundle]
    sketch = LatencySketch()
    counts = {"inferences": 0, "errors": 0, "tpu": 0, "cpu": 0, "cloud": 0}
    drift: dict[str, dict[str, list[list[int]]]] = {}
    for r in rows:
        try:
            sketch = sketch.merge(LatencySketch.from_dict(r.latency or {}))
        except BadPayload:
            pass
        for k in counts:
            counts[k] += getattr(r, k)
        for side, feats in (r.drift or {}).items():
            for name, bins in feats.items():
                drift.setdefault(side, {}).setdefault(name, []).append(bins)
    out: dict[str, Any] = {"windows": len(rows), **counts, **latency_summary(sketch.to_dict()), "drift": {}}
    if bundle:
        out["drift"] = drift_verdicts(fleet, s, bundle, drift)
    return out


def drift_verdicts(
    fleet: Fleet, s: Session, digest: str, windows: dict[str, dict[str, list[list[int]]]]
) -> dict[str, Any]:
    """Per-feature verdicts (:mod:`hub.drift`) of merged windows vs the bundle's baseline."""
    try:
        baseline = fleet.store.baseline(digest, fleet.store.manifest(digest))
    except (NotFound, OSError, BadPayload):
        baseline = None
    if baseline is None:
        return {}
    merged = [
        {
            side: {name: merge_counts(*wins) for name, wins in feats.items() if len({len(w) for w in wins}) == 1}
            for side, feats in windows.items()
        }
    ]
    try:
        report = drift.assess(baseline, merged)
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
    merge exactly, so a fleet, a cohort or a device is summarised the same way."""
    with fleet.session() as s:
        q = select(TelemetryWindow)
        if bundle:
            q = q.where(TelemetryWindow.bundle == bundle)
        if device:
            q = q.where(TelemetryWindow.device == device)
        if group is not None:
            ids = select(Device.id).where(Device.group == group)
            q = q.where(col(TelemetryWindow.device).in_(ids))
        if since is not None:
            q = q.where(TelemetryWindow.window_end >= since)
        if until is not None:
            q = q.where(TelemetryWindow.window_end <= until)
        rows = s.exec(q.order_by(col(TelemetryWindow.window_end).desc()).limit(max_windows)).all()
        out = summarise(fleet, s, rows, bundle)
        out.update(
            {
                "devices": len({r.device for r in rows}),
                "truncated": len(rows) >= max_windows,
                "since": min((r.window_start for r in rows), default=None),
                "until": max((r.window_end for r in rows), default=None),
            }
        )
        return out


def prune(fleet: Fleet, retention_s: int) -> int:
    """Drop telemetry windows and reports older than ``retention_s`` (device totals stay)."""
    cutoff = fleet.clock() - retention_s
    with fleet.session() as s:
        tw, rr = TelemetryWindow.__table__, ReportRecord.__table__  # type: ignore[attr-defined]
        n = s.connection().execute(delete(tw).where(tw.c.received < cutoff)).rowcount
        s.connection().execute(delete(rr).where(rr.c.received < cutoff))
        s.commit()
    return int(n or 0)
