"""Alerts over recent telemetry (offline, latency regression, drift): the facts are gathered
here, the rules are pure (hub.alerts); and the alert listing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    func,
    literal,
    or_,
    select as columns,  # several columns, typed (sqlmodel's select takes up to four)
)
from sqlmodel import Session, col, select

from protocol.messages import COUNT_KEYS

from . import alerts, rollups, telemetry
from .fleet import Fleet
from .models import (
    Alert,
    Device,
    TelemetryRollup,
    TelemetryWindow,
)
from .telemetry import latency_summary

log = logging.getLogger(__name__)

RECENT_S = 900  # "recent" telemetry for alerts
# devices one scan judges; a larger fleet is judged a page a scan, in id order, so a scan's work
# (and the interpreter it holds from ingest) stays bounded: 10,000 devices, each every 5 scans
SCAN_PAGE = 2_000


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
    """Offline / latency-regression / drift alerts over recent telemetry (see hub.alerts), for
    the next ``SCAN_PAGE`` devices by id after the last scan's (all of them in a fleet that
    small): a device of a fleet of N is judged every ceil(N / SCAN_PAGE) scans."""
    rules = rules or alerts.AlertRules(offline_after=fleet.config.offline_after)
    now = fleet.clock()
    with fleet.session() as s:
        d_ = Device  # the columns the facts need, not ORM objects; the next page of devices
        devices: list[Any] = list(
            s.execute(
                columns(
                    *(col(c) for c in (d_.id, d_.online, d_.last_seen, d_.active_digest, d_.latency_bundle, d_.latency))
                )
                .where(col(d_.id) > fleet.alert_after)
                .order_by(col(d_.id))
                .limit(SCAN_PAGE)
            ).all()
        )
        fleet.alert_after = devices[-1].id if len(devices) == SCAN_PAGE else ""  # else the next scan starts over
        if not devices:
            return []
        lo, hi = devices[0].id, devices[-1].id
        recent = _recent(s, now, lo, hi)
        open_rows = s.exec(
            select(Alert).where(Alert.resolved == 0, col(Alert.device) >= lo, col(Alert.device) <= hi)
        ).all()
        open_keys = {(a.kind, a.device or "") for a in open_rows}
        facts = []
        for d in devices:
            merged = telemetry.merge(recent.get(d.id, []))
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


def _recent(s: Session, now: int, lo: str, hi: str) -> dict[str, list[Any]]:
    """Each device's (ids ``lo`` to ``hi``) telemetry received in the last ``RECENT_S`` seconds under its active bundle
    (windows naming no bundle for a device with none), as rows :func:`hub.telemetry.merge` reads.
    Whole minutes already rolled up (:mod:`hub.rollups`) come as their minute rollups, the rest
    as raw windows, each window counted once: [since, the next minute) and [rolled_until, now]
    raw, the minutes between rolled. Only the columns the merge reads, not ORM objects: at 10,000
    devices the scan loaded every recent window whole (~50 us a window, 3 s of CPU for one
    minute's windows, 45 s for fifteen), holding the interpreter from the ingest worker
    (docs/scale.md)."""
    since = now - RECENT_S
    first = -(-since // rollups.MINUTE) * rollups.MINUTE
    rolled = rollups.rolled_until(s)
    # table columns, read as plain rows: through the ORM each row cost as much again
    devices = Device.__table__  # type: ignore[attr-defined]
    t, r, d = (m.__table__.c for m in (TelemetryWindow, TelemetryRollup, Device))  # type: ignore[union-attr]
    raw_when = [
        t.device.between(lo, hi),
        t.received >= since,
        t.bundle.is_not_distinct_from(d.active_digest),
    ]
    conn = s.connection()
    rows: list[Any] = []
    if rolled is not None and rolled > first:
        raw_when.append(or_(t.received < first, t.received >= rolled))
        rows += conn.execute(
            columns(r.device, r.windows, *(r[k] for k in COUNT_KEYS), r.latency, r.drift, r.shadow)
            .join(devices, d.id == r.device)
            .where(
                r.device.between(lo, hi),
                r.resolution == rollups.MINUTE,
                r.bucket >= first,
                r.bucket < rolled,
                func.nullif(r.bundle, "").is_not_distinct_from(d.active_digest),  # "" is no bundle there
            )
        ).all()
    rows += conn.execute(
        columns(
            t.device,
            *(t[k] for k in COUNT_KEYS),
            t.latency,
            t.drift,
            t.shadow,
            literal(1).label("windows"),  # as a rollup row names it (telemetry.merge reads it)
        )
        .join(devices, d.id == t.device)
        .where(*raw_when)
    ).all()
    out: dict[str, list[Any]] = {}
    for row in rows:
        out.setdefault(row.device, []).append(row)
    return out


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
