"""Alerts over recent telemetry (offline, latency regression, drift): the facts are gathered
here, the rules are pure (hub.alerts); and the alert listing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from . import alerts, telemetry
from .fleet import Fleet
from .models import (
    Alert,
    Device,
    TelemetryWindow,
)
from .telemetry import latency_summary

log = logging.getLogger(__name__)

RECENT_S = 900  # "recent" telemetry for alerts


def record(
    fleet: Fleet,
    s: Session,
    kind: str,
    severity: str,
    message: str,
    detail: Mapping[str, Any],
    now: int,
    device: str | None = None,
    bundle: str | None = None,
    rollout: str | None = None,
) -> None:
    """One new alert row (the caller commits) and its counter: the alert scan's and the rollout
    gates' alike."""
    s.add(
        Alert(
            kind=kind,
            severity=severity,
            device=device,
            bundle=bundle,
            rollout=rollout,
            message=message[:1000],
            detail=dict(detail),
            created=now,
        )
    )
    fleet.metrics.alerts.labels(kind).inc()


def scan(fleet: Fleet, rules: alerts.AlertRules | None = None) -> list[alerts.Raise | alerts.Resolve]:
    """Offline / latency-regression / drift alerts over recent telemetry (see hub.alerts)."""
    rules = rules or alerts.AlertRules(offline_after=fleet.config.offline_after)
    now = fleet.clock()
    with fleet.session() as s:
        devices = s.exec(select(Device)).all()
        recent: dict[str, list[TelemetryWindow]] = {}
        for w in s.exec(select(TelemetryWindow).where(TelemetryWindow.received >= now - RECENT_S)).all():
            recent.setdefault(w.device, []).append(w)
        open_rows = s.exec(select(Alert).where(Alert.resolved == 0, col(Alert.device).is_not(None))).all()
        open_keys = {(a.kind, a.device or "") for a in open_rows}
        facts = []
        for d in devices:
            merged = telemetry.merge(w for w in recent.get(d.id, []) if w.bundle == d.active_digest)
            sk = merged.sketch
            trailing = latency_summary(d.latency) if d.latency_bundle == d.active_digest else {}
            verdicts = (
                telemetry.drift_verdicts(fleet, d.active_digest, merged) if d.active_digest and merged.drift else {}
            )
            worst = max(
                (v.get("status", "insufficient_data") for v in verdicts.values()),
                key=lambda x: (
                    ("insufficient_data", "invalid", "ok", "warn", "alert").index(x)
                    if x in ("insufficient_data", "invalid", "ok", "warn", "alert")
                    else 0
                ),
                default="insufficient_data",
            )
            p95 = sk.quantile(0.95)
            facts.append(
                alerts.DeviceFacts(
                    d.id,
                    d.online,
                    d.last_seen,
                    d.active_digest,
                    p95 * 1000 if p95 is not None else None,
                    sk.count,
                    trailing.get("p95_ms"),
                    int((d.latency or {}).get("n", 0)),
                    worst,
                    {k: v for k, v in verdicts.items() if v.get("status") == "alert"},
                )
            )
        decisions = alerts.evaluate(facts, open_keys, now, rules)
        for dec in decisions:
            if isinstance(dec, alerts.Raise):
                record(fleet, s, dec.kind, dec.severity, dec.message, dec.detail, now, dec.device, dec.bundle)
            else:
                for a in open_rows:
                    if a.kind == dec.kind and a.device == dec.device:
                        a.resolved = now
                        s.add(a)
        s.commit()
    return decisions


def listing(
    fleet: Fleet,
    limit: int = 50,
    offset: int = 0,
    kind: str | None = None,
    device: str | None = None,
    open_only: bool = False,
) -> dict[str, Any]:
    with fleet.session() as s:
        q = select(Alert)
        if kind:
            q = q.where(Alert.kind == kind)
        if device:
            q = q.where(Alert.device == device)
        if open_only:
            q = q.where(Alert.resolved == 0)
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        rows = s.exec(q.order_by(col(Alert.id).desc()).offset(offset).limit(limit)).all()
        return {"items": [a.model_dump() for a in rows], "total": total, "limit": limit, "offset": offset}
