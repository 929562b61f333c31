"""The thin shell around rollouts: loads rows, applies reports, issues signed desired docs.

Phase-1 behaviour (one cohort, every targeted device at once):

* ``create``: every device the target matches gets a row; incompatible ones are marked
  ``incompatible`` (board / TPU / runtime from inventory vs bundle requirements); the others
  get a signed ``Desired(action=install)`` (retained) and the bundle's chunks are published
  retained once. Devices in an older active rollout are moved to this one (``superseded``).
* reports with ``desired_seq`` equal to the row's seq move it: progress -> ``installing``,
  ``commit``/``switch`` ok -> ``installed``, any ``failed`` -> ``failed`` with the reason; a
  status whose active bundle is the target also means ``installed``.
* ``converge``: a device that appears (or changes group/tags) and matches an active rollout's
  target is added and issued the rollout's *current* target.
* the rollout is ``completed`` when every row is terminal; a newcomer re-opens it.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from sqlalchemy import func
from sqlmodel import Session, col, select

from protocol.bundle import Requirements
from protocol.messages import Report

from . import compat
from .errors import Conflict, Invalid, NotFound
from .fleet import ACTIVE_PHASES, TERMINAL, Fleet, Target, new_id
from .models import Bundle, Device, Rollout, RolloutDevice
from .transport import Outgoing

log = logging.getLogger(__name__)

COMMANDS = ("pause", "resume", "cancel", "approve", "rollback")


def _add_device(fleet: Fleet, s: Session, r: Rollout, b: Bundle, d: Device, out: list[Outgoing]) -> RolloutDevice:
    now = fleet.clock()
    # a device follows one rollout at a time: the newest
    for other in s.exec(select(RolloutDevice).where(RolloutDevice.device_id == d.id,
                                                    col(RolloutDevice.rollout_id) != r.id)).all():
        if other.state not in TERMINAL:
            other.state, other.reason, other.updated = "cancelled", f"superseded by rollout {r.id}", now
            s.add(other)
    row = RolloutDevice(rollout_id=r.id, device_id=d.id, state="pending", updated=now,
                        from_bundle=d.active_digest)
    verdict = compat.check(Requirements.from_dict(b.requirements), d.inventory or {}, d.agent_version)
    if not verdict.ok:
        row.state, row.reason = "incompatible", f"{verdict.reason.value}: {verdict.detail}"
    elif d.active_digest == b.digest:
        row.state, row.reason = "installed", "already running the bundle"
    else:
        out.extend(fleet.ensure_published(s, b))
        msg = fleet.issue(s, d, b, "install", r.id)
        out.append(msg)
        row.state, row.seq, row.issued_at, row.attempts = "issued", d.desired_seq, now, 1
    s.add(row)
    return row


def create(fleet: Fleet, digest: str, target: Target, policy: dict[str, Any], actor: str) -> dict[str, Any]:
    out: list[Outgoing] = []
    with fleet._issue_lock, fleet.session() as s:
        b = fleet.bundle_row(s, digest)
        now = fleet.clock()
        r = Rollout(id=new_id(), bundle=digest, target=target.to_dict(), policy=policy, phase="running",
                    created=now, updated=now, created_by=actor, cohort_started=now)
        s.add(r)
        devices = s.exec(select(Device).order_by(col(Device.id))).all()
        for d in devices:
            if target.matches(d):
                _add_device(fleet, s, r, b, d, out)
        _finish_if_done(s, r, now)
        fleet.audit(s, actor, "rollout.create", r.id, bundle=digest, devices=target.to_dict())
        s.commit()
        rid = r.id
    fleet.publish(out)
    log.info("rollout %s of %s: issued %d messages", rid, digest[:12], len(out))
    return status(fleet, rid)


def _finish_if_done(s: Session, r: Rollout, now: int) -> None:
    if r.phase != "running":
        return
    rows = s.exec(select(RolloutDevice.state).where(RolloutDevice.rollout_id == r.id)).all()
    if rows and all(st in TERMINAL for st in rows):
        r.phase, r.updated = "completed", now
        s.add(r)


def counts(s: Session, rid: str) -> dict[str, int]:
    q = select(RolloutDevice.state, func.count()).where(RolloutDevice.rollout_id == rid).group_by(RolloutDevice.state)
    return {state: n for state, n in s.exec(q).all()}


def _public(r: Rollout, c: dict[str, int]) -> dict[str, Any]:
    return {"id": r.id, "bundle": r.bundle, "target": r.target, "policy": r.policy, "phase": r.phase,
            "cohort": r.cohort, "reason": r.reason, "created": r.created, "updated": r.updated,
            "created_by": r.created_by, "counts": c, "total": sum(c.values())}


def status(fleet: Fleet, rid: str, limit: int = 1000, offset: int = 0, state: str | None = None) -> dict[str, Any]:
    with fleet.session() as s:
        r = s.get(Rollout, rid)
        if r is None:
            raise NotFound("rollout", rid)
        q = select(RolloutDevice).where(RolloutDevice.rollout_id == rid)
        if state:
            q = q.where(RolloutDevice.state == state)
        rows = s.exec(q.order_by(col(RolloutDevice.device_id)).offset(offset).limit(limit)).all()
        out = _public(r, counts(s, rid))
        out["devices"] = [{"device_id": x.device_id, "state": x.state, "cohort": x.cohort, "seq": x.seq,
                           "attempts": x.attempts, "reason": x.reason, "updated": x.updated,
                           "from_bundle": x.from_bundle} for x in rows]
        out["limit"], out["offset"] = limit, offset
        return out


def listing(fleet: Fleet, limit: int, offset: int, phase: str | None) -> dict[str, Any]:
    with fleet.session() as s:
        q = select(Rollout)
        if phase:
            q = q.where(Rollout.phase == phase)
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        rows = s.exec(q.order_by(col(Rollout.created).desc(), col(Rollout.id)).offset(offset).limit(limit)).all()
        return {"items": [_public(r, counts(s, r.id)) for r in rows], "total": total, "limit": limit,
                "offset": offset}


def command(fleet: Fleet, rid: str, cmd: str, actor: str) -> dict[str, Any]:
    if cmd not in COMMANDS:
        raise Invalid("command", f"{cmd!r} is not one of {COMMANDS}")
    out: list[Outgoing] = []
    with fleet._issue_lock, fleet.session() as s:
        r = s.get(Rollout, rid)
        if r is None:
            raise NotFound("rollout", rid)
        now = fleet.clock()
        if cmd == "pause":
            if r.phase != "running":
                raise Conflict(f"rollout {rid} is {r.phase}; only a running rollout can be paused")
            r.phase = "paused"
        elif cmd in ("resume", "approve"):
            if r.phase not in ("paused", "running"):
                raise Conflict(f"rollout {rid} is {r.phase}; cannot {cmd}")
            r.phase = "running"
        elif cmd == "cancel":
            if r.phase not in ACTIVE_PHASES:
                raise Conflict(f"rollout {rid} is {r.phase}; cannot cancel")
            r.phase = "cancelled"
            for row in s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)).all():
                if row.state not in TERMINAL:
                    row.state, row.updated, row.reason = "cancelled", now, "rollout cancelled"
                    s.add(row)
        elif cmd == "rollback":
            r.phase = "rolled_back"
            for row in s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)).all():
                d = s.get(Device, row.device_id)
                if d is None or row.state in ("incompatible", "rolled_back"):
                    continue
                prev = s.get(Bundle, row.from_bundle) if row.from_bundle else None
                if row.state in ("pending", "cancelled") and d.desired_bundle != r.bundle:
                    continue
                out.append(fleet.issue(s, d, prev, "rollback" if prev else "idle", rid))
                if prev is not None:
                    out.extend(fleet.ensure_published(s, prev))
                row.state, row.seq, row.updated, row.reason = "rolling_back", d.desired_seq, now, "operator rollback"
                s.add(row)
        r.updated = now
        r.reason = f"{cmd} by {actor}"
        s.add(r)
        fleet.audit(s, actor, f"rollout.{cmd}", rid)
        s.commit()
    fleet.publish(out)
    return status(fleet, rid)


def apply_report(s: Session, d: Device, rep: Report, now: int) -> None:
    """Move the device's row in the rollout that issued ``rep.desired_seq``."""
    row = s.exec(select(RolloutDevice).where(RolloutDevice.device_id == d.id,
                                             RolloutDevice.seq == rep.desired_seq)).first()
    if row is None or rep.desired_seq == 0:
        return
    if row.state in ("installed", "rolled_back", "cancelled", "incompatible"):
        return
    if rep.status == "failed":
        row.state = "failed"
        row.reason = f"{rep.reason}: {rep.stage}: {rep.detail}"[:500]
    elif rep.status == "ok" and rep.stage in ("commit", "switch"):
        row.state = "installed" if row.state != "rolling_back" else "rolled_back"
        row.reason = ""
    elif rep.status == "ok" and rep.stage == "rollback":
        row.state = "rolled_back"
    elif rep.status == "progress" or rep.status == "ok":
        if row.state not in ("rolling_back",):
            row.state = "installing"
        row.reason = f"{rep.stage}" + (f" {rep.progress:.0%}" if rep.progress is not None else "")
    row.updated = now
    s.add(row)


def apply_status(s: Session, d: Device, now: int) -> None:
    """A status naming the target bundle as active settles the device's row."""
    if not d.active_digest:
        return
    for row in s.exec(select(RolloutDevice).where(RolloutDevice.device_id == d.id,
                                                  col(RolloutDevice.state).in_(("issued", "installing", "pending", "rolling_back")))).all():
        r = s.get(Rollout, row.rollout_id)
        if r is None:
            continue
        if row.state == "rolling_back" and d.active_digest == row.from_bundle:
            row.state, row.updated = "rolled_back", now
            s.add(row)
        elif row.state != "rolling_back" and d.active_digest == r.bundle and d.desired_seq == row.seq:
            row.state, row.updated = "installed", now
            s.add(row)


def converge(fleet: Fleet, device_ids: Sequence[str]) -> None:
    """Add devices that match an active rollout's target but are not in it yet."""
    if not device_ids:
        return
    out: list[Outgoing] = []
    with fleet._issue_lock, fleet.session() as s:
        # completed rollouts with a dynamic target (all/group/tag) still own newcomers
        active = s.exec(select(Rollout).where(col(Rollout.phase).in_(("running", "completed")))
                        .order_by(col(Rollout.created).desc())).all()
        if not active:
            return
        for did in device_ids:
            d = s.get(Device, did)
            if d is None:
                continue
            for r in active:
                tgt = Target.parse(r.target)
                if not tgt.matches(d):
                    continue
                exists = s.get(RolloutDevice, (r.id, d.id))
                if exists is None:
                    _add_device(fleet, s, r, fleet.bundle_row(s, r.bundle), d, out)
                    if r.phase == "completed" and out:
                        r.phase = "running"
                        s.add(r)
                break  # only the newest matching rollout applies
        s.commit()
    fleet.publish(out)


def tick(fleet: Fleet) -> None:
    with fleet.session() as s:
        now = fleet.clock()
        for r in s.exec(select(Rollout).where(Rollout.phase == "running")).all():
            _finish_if_done(s, r, now)
        s.commit()
