"""Devices as the registry knows them: listing with filters, one device with its recent
telemetry and rollouts, group and tags (a change re-targets the device's rollouts)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from . import rollouts, tallies, telemetry
from .db import has_tag
from .errors import NotFound
from .fleet import Fleet
from .models import (
    Device,
    Rollout,
    RolloutDevice,
    TelemetryWindow,
)
from .telemetry import latency_summary

log = logging.getLogger(__name__)


def device_public(d: Device, rollout_state: str | None = None) -> dict[str, Any]:
    active = (
        {"digest": d.active_digest, "name": d.active_name, "version": d.active_version} if d.active_digest else None
    )
    lat = latency_summary(d.latency)  # merged over the windows of d.latency_bundle
    return {
        "device_id": d.id,
        "online": d.online,
        "last_seen": d.last_seen,
        "state": d.state,
        "agent_version": d.agent_version,
        "group": d.group,
        "tags": list(d.tags or []),
        "inventory": d.inventory,
        "active_bundle": active,
        "staged_bundle": d.staged_digest,
        "desired": {"seq": d.desired_seq, "bundle": d.desired_bundle, "action": d.desired_action},
        "reported_desired_seq": d.reported_desired_seq,
        "rollout_state": rollout_state,
        "channels": d.channels or {},
        "telemetry": {
            "windows": d.windows,
            "inferences": d.inferences,
            "errors": d.errors,
            "tpu": d.tpu,
            "cpu": d.cpu,
            "cloud": d.cloud,
            **lat,
        },
    }


def listing(
    fleet: Fleet,
    limit: int = 50,
    offset: int = 0,
    online: bool | None = None,
    q: str | None = None,
    group: str | None = None,
    tag: str | None = None,
    bundle: str | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    """One page by device id: after the id ``after`` (an index seek), then ``offset`` more rows
    skipped. ``total`` is :func:`hub.tallies.tally`'s: exact under 5,000 matching devices."""
    dialect = fleet.engine.dialect.name

    def filtered(query: Any) -> Any:
        if online is not None:
            query = query.where(Device.online == online)
        if q:
            like = f"%{q}%"
            query = query.where(or_(col(Device.id).like(like), col(Device.active_name).like(like)))
        if group is not None:
            query = query.where(Device.group == group)
        if bundle:
            query = query.where(Device.active_digest == bundle)
        if tag:
            query = query.where(has_tag(dialect, tag))
        return query

    def count() -> int:
        with fleet.session() as s:
            return int(s.exec(filtered(select(func.count()).select_from(Device))).one())

    total = tallies.tally(fleet, ("devices", online, q, group, tag, bundle), count, lambda n: n)
    with fleet.session() as s:
        query = filtered(select(Device))
        if after is not None:
            query = query.where(col(Device.id) > after)
        rows: Sequence[Device] = s.exec(query.order_by(col(Device.id)).offset(offset).limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        states = rollout_states(s, [d.id for d in rows])
        return {
            "items": [device_public(d, states.get(d.id)) for d in rows],
            "total": total.value,
            "limit": limit,
            "offset": offset,
            "has_more": more,
            "next_after": rows[-1].id if more else None,
            "counted_at": int(total.counted_at),
        }


def rollout_states(s: Session, ids: list[str]) -> dict[str, str]:
    """Each device's state in the newest rollout that names it."""
    if not ids:
        return {}
    q = (
        select(RolloutDevice.device_id, RolloutDevice.state, Rollout.serial)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(col(RolloutDevice.device_id).in_(ids))
        .order_by(col(Rollout.serial))
    )
    return {dev: state for dev, state, _ in s.exec(q).all()}


def get(fleet: Fleet, device_id: str, windows: int = 30) -> dict[str, Any]:
    with fleet.session() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise NotFound("device", device_id)
        out = device_public(d, rollout_states(s, [d.id]).get(d.id))
        rows = s.exec(
            select(TelemetryWindow)
            .where(TelemetryWindow.device == device_id)
            .order_by(col(TelemetryWindow.window_end).desc())
            .limit(windows)
        ).all()
        out["recent"] = telemetry.summarise(fleet, rows, d.active_digest)
        newest = (rows[0].health or {}) if rows else {}
        out["accelerator"] = newest.get("accelerator")  # the newest window's, as ingest stored it
        out["usage"] = newest.get("usage")
        esc: dict[str, int] = {}  # escalation counts summed over the recent windows (ingest keeps them in health)
        for r in rows:
            for k, v in ((r.health or {}).get("escalation") or {}).items():
                esc[k] = esc.get(k, 0) + int(v)
        out["escalation"] = esc or None
        out["rollouts"] = [
            {
                "rollout": r.rollout_id,
                "state": r.state,
                "seq": r.seq,
                "attempts": r.attempts,
                "reason": r.reason,
                "cohort": r.cohort,
            }
            for r in s.exec(select(RolloutDevice).where(RolloutDevice.device_id == device_id)).all()
        ]
        return out


def set_meta(fleet: Fleet, device_id: str, group: str | None, tags: list[str] | None, actor: str) -> dict[str, Any]:
    with fleet.session() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise NotFound("device", device_id)
        if group is not None:
            d.group = group
        if tags is not None:
            d.tags = list(dict.fromkeys(tags))
        s.add(d)
        fleet.audit(s, actor, "device.update", device_id, group=group, tags=tags)
        s.commit()
    rollouts.converge(fleet, [device_id])
    return get(fleet, device_id)
