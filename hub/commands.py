"""Remote diagnostics, the hub's room: issue a signed command to one device, keep its answer.

A command (:mod:`protocol.commands`: ``logs``, ``selftest``, ``restart``, ``diagnostics``) is
signed by the hub's online key, stored (``device_command``, one row per command), audited
(``device.<name>``) and published on ``ef/v1/dev/{device}/command`` (QoS 1, not retained). The
agent answers on ``ef/v1/dev/{device}/result``; :mod:`hub.ingest` hands each result to
:func:`record`.

States of a row (who moves it):

* ``sent``: :func:`issue` stored and published it;
* ``ok`` / ``failed`` / ``refused``: the device's result (:func:`record`); a result for an
  unknown id, from another device than the command's, naming another command, or for a row
  already answered is dropped;
* ``expired``: shown for a row still ``sent`` after its ``expires`` (:func:`public`, at read
  time; never stored, so an answer that was already on its way still lands).

Refused before anything is signed: an unknown device (404), an offline one (409: commands are
not retained, only a connected agent can answer) and a caller over its rate (429 with
``Retry-After``): at most :attr:`Policy.device` commands per device and :attr:`Policy.actor` per
operator token in a sliding window, counted from the stored rows (:func:`rate_verdict`, pure),
so a restart of the hub forgets nothing. Replicas each hold their own lock: two replicas may
together let one command more through per window.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from protocol.commands import NAMES, Command, Result
from protocol.topics import Kind, Topic

from .errors import Conflict, Invalid, NotFound, RateLimited
from .fleet import Fleet, new_id
from .models import Device, DeviceCommand
from .transport import Outgoing

log = logging.getLogger(__name__)

TTL_S = 120  # a command not answered in two minutes is shown expired; the agent refuses it after


@dataclass(frozen=True)
class Limit:
    count: int
    per_s: int


@dataclass(frozen=True)
class Policy:
    device: Limit = Limit(6, 60)
    actor: Limit = Limit(30, 60)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    retry_after: int = 0
    why: str = ""


def rate_verdict(device_issued: Sequence[int], actor_issued: Sequence[int], now: int, policy: Policy) -> Verdict:
    """May one more command be issued at ``now``, given when the device's and the operator's
    earlier commands were issued? If not, when (seconds) and why. The device's limit is checked
    first: it is the one an operator can do nothing about by waiting for colleagues."""
    for who, times, lim in (("device", device_issued, policy.device), ("operator", actor_issued, policy.actor)):
        recent = sorted(t for t in times if now - lim.per_s < t <= now)
        if len(recent) >= lim.count:
            frees_at = recent[len(recent) - lim.count] + lim.per_s  # when one leaves the window
            return Verdict(
                False,
                max(1, frees_at - now),
                f"{who} rate limit: {len(recent)} commands in the last {lim.per_s} s, at most {lim.count}",
            )
    return Verdict(True)


def public(row: DeviceCommand, now: int) -> dict[str, Any]:
    status = "expired" if row.status == "sent" and now >= row.expires else row.status
    return {
        "id": row.id,
        "device_id": row.device,
        "name": row.name,
        "args": dict(row.args or {}),
        "actor": row.actor,
        "issued": row.issued,
        "expires": row.expires,
        "status": status,
        "reason": row.reason,
        "detail": row.detail,
        "body": row.body,
        "answered": row.answered or None,
    }


_issue_lock = threading.Lock()  # the rate check and the insert are one step within this process


def issue(
    fleet: Fleet, device_id: str, name: str, args: dict[str, Any], actor: str, policy: Policy = Policy()
) -> dict[str, Any]:
    if name not in NAMES:
        raise Invalid("command", f"unknown command {name!r}; known: {', '.join(NAMES)}")
    if args and name != "logs":
        raise Invalid("command", f"{name} takes no arguments, got {', '.join(sorted(args))}")
    with _issue_lock, fleet.session() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise NotFound("device", device_id)
        if not d.online:
            raise Conflict(f"device {device_id!r} is offline: commands are answered only by a connected agent")
        now = fleet.clock()
        since = now - max(policy.device.per_s, policy.actor.per_s)
        dev_times = s.exec(
            select(DeviceCommand.issued).where(DeviceCommand.device == device_id, col(DeviceCommand.issued) > since)
        ).all()
        actor_times = s.exec(
            select(DeviceCommand.issued).where(DeviceCommand.actor == actor, col(DeviceCommand.issued) > since)
        ).all()
        verdict = rate_verdict(list(dev_times), list(actor_times), now, policy)
        if not verdict.ok:
            raise RateLimited(f"{name} for {device_id!r} refused: {verdict.why}", verdict.retry_after)
        cmd = Command(f"cmd-{new_id()}{new_id()}", device_id, name, now, now + TTL_S, dict(args))
        payload = cmd.seal([fleet.keys.online])
        row = DeviceCommand(
            id=cmd.id, device=device_id, name=name, args=cmd.args, actor=actor, issued=now, expires=cmd.expires
        )
        s.add(row)
        fleet.audit(s, actor, f"device.{name}", device_id, command=cmd.id, args=cmd.args)
        s.commit()
        s.refresh(row)
        out = public(row, now)
    topic = str(Topic.for_device(Kind.COMMAND, device_id))
    fleet.publish([Outgoing(topic, payload, retain=False, qos=1, kind="command")])
    log.info("command %s %s issued to %s by %s", name, cmd.id, device_id, actor)
    return out


def record(s: Session, result: Result, now: int) -> bool:
    """Store a device's answer on its command's row (caller commits); False if it is dropped."""
    row = s.get(DeviceCommand, result.id)
    if row is None:
        why = "no such command"
    elif row.device != result.device:
        why = f"the command is {row.device!r}'s"
    elif row.name != result.name:
        why = f"it answers {result.name!r}, the command is {row.name!r}"
    elif row.status != "sent":
        why = f"already answered ({row.status})"
    else:
        why = ""
    if why or row is None:
        log.warning("dropped result %s from %s: %s", result.id, result.device, why)
        return False
    row.status = result.status
    row.reason = result.reason
    row.detail = result.detail
    row.body = result.body
    row.answered = now
    s.add(row)
    return True


def listing(fleet: Fleet, device_id: str, limit: int = 20, offset: int = 0) -> dict[str, Any]:
    with fleet.session() as s:
        if s.get(Device, device_id) is None:
            raise NotFound("device", device_id)
        q = select(DeviceCommand).where(DeviceCommand.device == device_id)
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        rows = s.exec(
            q.order_by(col(DeviceCommand.issued).desc(), col(DeviceCommand.id)).offset(offset).limit(limit)
        ).all()
        now = fleet.clock()
        return {"items": [public(r, now) for r in rows], "total": total, "limit": limit, "offset": offset}


def get(fleet: Fleet, device_id: str, command_id: str) -> dict[str, Any]:
    with fleet.session() as s:
        row = s.get(DeviceCommand, command_id)
        if row is None or row.device != device_id:
            raise NotFound("command", f"{device_id}/{command_id}")
        return public(row, fleet.clock())


def prune(fleet: Fleet, retention_s: int) -> int:
    """Drop commands issued more than ``retention_s`` ago, with their answers (``--retention``,
    as telemetry windows and reports: an answer may hold 192 KiB of a device's logs)."""
    with fleet.session() as s:
        n = s.connection().execute(delete(DeviceCommand).where(col(DeviceCommand.issued) < fleet.clock() - retention_s))
        s.commit()
    return int(n.rowcount or 0)
