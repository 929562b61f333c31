"""Prometheus gauges computed from the registry when /metrics is scraped."""

from __future__ import annotations

import logging

from sqlalchemy import func
from sqlmodel import Session, col, select

from . import rollups
from .fleet import Fleet
from .metrics import UNKNOWN
from .models import (
    Alert,
    Bundle,
    Device,
    Rollout,
    RolloutDevice,
)
from .rollout import ACTIVE_PHASES, PHASES

log = logging.getLogger(__name__)


def refresh(fleet: Fleet) -> None:
    with fleet.session() as s:
        for online, n in s.exec(select(Device.online, func.count()).group_by(col(Device.online))).all():
            fleet.metrics.devices.labels("true" if online else "false").set(n)
        fleet.metrics.rollout_devices.clear()
        q = (
            select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
            .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
            .where(col(Rollout.phase).in_(ACTIVE_PHASES))
            .group_by(RolloutDevice.rollout_id, RolloutDevice.state)
        )
        for rid, state, n in s.exec(q).all():
            fleet.metrics.rollout_devices.labels(rid, state).set(n)
        # bundles running somewhere: their fleet series stay, every other bundle's are dropped
        names = {
            d: (n, v)
            for d, n, v in s.exec(
                select(Bundle.digest, Bundle.name, Bundle.version).where(
                    col(Bundle.digest).in_(select(Device.active_digest).where(col(Device.active_digest).is_not(None)))
                )
            ).all()
        }
        counts: dict[tuple[str, str], int] = {}
        for digest, n in s.exec(
            select(Device.active_digest, func.count())
            .where(col(Device.active_digest).is_not(None))
            .group_by(col(Device.active_digest))
        ).all():
            key = names.get(digest or "", (UNKNOWN, UNKNOWN))
            counts[key] = counts.get(key, 0) + n
        fleet.metrics.fleet_devices_on_bundle.clear()
        for (model, version), n in counts.items():
            fleet.metrics.fleet_devices_on_bundle.labels(model, version).set(n)
        fleet.metrics.fleet.retain(counts)
        _rollouts(fleet, s)
        fleet.metrics.alerts_open.clear()
        for kind, n in s.exec(select(Alert.kind, func.count()).where(Alert.resolved == 0).group_by(Alert.kind)).all():
            fleet.metrics.alerts_open.labels(kind).set(n)
        waiting = rollups.waiting_since(s)
        fleet.metrics.rollups_behind.set(0 if waiting is None else max(0, fleet.clock() - waiting))


def _rollouts(fleet: Fleet, s: Session) -> None:
    """Rollouts by phase, and one info series per active rollout naming its bundle and the
    version most of its devices ran before (what a latency regression is judged against)."""
    by_phase = dict.fromkeys(PHASES, 0)
    for phase, n in s.exec(select(Rollout.phase, func.count()).group_by(col(Rollout.phase))).all():
        by_phase[phase] = by_phase.get(phase, 0) + n
    for phase, n in by_phase.items():
        fleet.metrics.rollouts.labels(phase).set(n)
    fleet.metrics.rollout_info.clear()
    active = s.exec(
        select(Rollout.id, Rollout.phase, Bundle.name, Bundle.version)
        .join(Bundle, col(Bundle.digest) == col(Rollout.bundle))
        .where(col(Rollout.phase).in_(ACTIVE_PHASES))
    ).all()
    for rid, phase, name, version in active:
        before = s.exec(
            select(Bundle.version, func.count())
            .join(RolloutDevice, col(RolloutDevice.from_bundle) == col(Bundle.digest))
            .where(RolloutDevice.rollout_id == rid, Bundle.name == name)
            .group_by(col(Bundle.version))
            .order_by(func.count().desc(), col(Bundle.version))
        ).first()
        fleet.metrics.rollout_info.labels(rid, phase, name, version, before[0] if before else "none").set(1)
