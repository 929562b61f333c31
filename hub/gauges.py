"""Prometheus gauges computed from the registry when /metrics is scraped."""

from __future__ import annotations

import logging

from sqlalchemy import func
from sqlmodel import col, select

from protocol.errors import BadPayload
from protocol.sketch import LatencySketch

from .fleet import Fleet
from .models import (
    Alert,
    Device,
    Rollout,
    RolloutDevice,
)
from .rollout import ACTIVE_PHASES

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
        # fleet latency per active bundle: merging sketches is exact, so this is the fleet's p95
        per: dict[str, LatencySketch] = {}
        counts: dict[str, int] = {}
        for digest, sketch, lat_bundle in s.exec(
            select(Device.active_digest, Device.latency, Device.latency_bundle).where(
                col(Device.active_digest).is_not(None)
            )
        ).all():
            if digest is None:
                continue
            counts[digest] = counts.get(digest, 0) + 1
            if sketch and lat_bundle == digest:
                try:
                    per[digest] = per.get(digest, LatencySketch()).merge(LatencySketch.from_dict(dict(sketch)))
                except BadPayload:
                    continue
        fleet.metrics.fleet_latency.clear()
        fleet.metrics.fleet_devices_on_bundle.clear()
        for digest, n in counts.items():
            fleet.metrics.fleet_devices_on_bundle.labels(digest[:12]).set(n)
        for digest, sk in per.items():
            for q_ in (0.5, 0.95, 0.99):
                v = sk.quantile(q_)
                if v is not None:
                    fleet.metrics.fleet_latency.labels(digest[:12], str(q_)).set(v)
        fleet.metrics.alerts_open.clear()
        for kind, n in s.exec(select(Alert.kind, func.count()).where(Alert.resolved == 0).group_by(Alert.kind)).all():
            fleet.metrics.alerts_open.labels(kind).set(n)
