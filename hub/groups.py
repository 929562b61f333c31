"""Device groups and their maintenance windows: set, clear and list a group's window, and tell
the rollout shell which devices' windows are closed now (:func:`closed_for`).

A group is the ``Device.group`` string; a window is stored per group (``group_window``) and
parsed by :mod:`hub.windows` on every use, so a spec that a newer hub wrote and this one cannot
read closes nothing silently: it is logged and the group counts as closed until fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from . import tallies
from .errors import Invalid, NotFound
from .fleet import Fleet
from .models import Device, GroupWindow
from .windows import Window, WindowError

log = logging.getLogger(__name__)
_CLOSED_FOR_A_DAY = 86400  # an unreadable stored window: closed, looked at again after this


def parse(spec: str, tz: str) -> Window:
    """The API's and CLI's check: :class:`Invalid` naming the bad field."""
    try:
        return Window.parse(spec, tz)
    except WindowError as exc:
        raise Invalid("window", str(exc)) from None


def _windows(s: Session) -> dict[str, GroupWindow]:
    return {w.group: w for w in s.exec(select(GroupWindow)).all()}


def _opens(w: GroupWindow, now: int) -> int:
    """``now`` when ``w`` is open, else when it next opens."""
    try:
        return Window.parse(w.spec, w.tz).next_open(now)
    except WindowError as exc:
        log.error("group %r: stored window %r (%s) unreadable, treated as closed: %s", w.group, w.spec, w.tz, exc)
        return now + _CLOSED_FOR_A_DAY


def window_public(w: GroupWindow, now: int) -> dict[str, Any]:
    try:
        win = Window.parse(w.spec, w.tz)
    except WindowError as exc:
        return {"spec": w.spec, "tz": w.tz, "open": False, "opens_at": None, "closes_at": None, "error": str(exc)}
    until = win.open_until(now)
    return {
        "spec": w.spec,
        "tz": w.tz,
        "open": until is not None,
        "opens_at": None if until is not None else win.next_open(now),
        "closes_at": until,
        "updated": w.updated,
        "updated_by": w.updated_by,
        "error": None,
    }


def closed_for(s: Session, device_ids: Iterable[str], now: int) -> dict[str, int]:
    """Of ``device_ids``, those whose group's window is closed at ``now``, with when it opens."""
    wins = _windows(s)
    if not wins:
        return {}
    opens = {g: t for g, w in wins.items() if (t := _opens(w, now)) > now}
    if not opens:
        return {}
    ids = list(dict.fromkeys(device_ids))
    out: dict[str, int] = {}
    for i in range(0, len(ids), 5000):
        q = select(Device.id, Device.group).where(
            col(Device.id).in_(ids[i : i + 5000]), col(Device.group).in_(list(opens))
        )
        out.update({did: opens[g] for did, g in s.exec(q).all()})
    return out


def groups_of(s: Session, device_ids: Iterable[str]) -> dict[str, str]:
    ids = list(dict.fromkeys(device_ids))
    out: dict[str, str] = {}
    for i in range(0, len(ids), 5000):
        out.update(dict(s.exec(select(Device.id, Device.group).where(col(Device.id).in_(ids[i : i + 5000]))).all()))
    return out


def listing(fleet: Fleet) -> dict[str, Any]:
    """Every group that has devices or a window, with its device count and window."""
    now = fleet.clock()

    def count() -> dict[str, int]:
        with fleet.session() as s:
            return dict(s.exec(select(Device.group, func.count()).group_by(Device.group)).all())

    # a few seconds old from 5,000 devices (hub.tallies): the fleet page shows it on every view
    counts = tallies.tally(fleet, "groups", count, lambda c: sum(c.values())).value
    with fleet.session() as s:
        wins = _windows(s)
        names = sorted(set(counts) | set(wins))
        items = [
            {
                "group": g,
                "devices": counts.get(g, 0),
                "window": window_public(wins[g], now) if g in wins else None,
            }
            for g in names
        ]
    return {"items": items, "total": len(items), "limit": len(items), "offset": 0}


def _public(s: Session, group: str, now: int) -> dict[str, Any]:
    n = s.exec(select(func.count()).select_from(Device).where(Device.group == group)).one()
    w = s.get(GroupWindow, group)
    return {"group": group, "devices": n, "window": window_public(w, now) if w else None}


def get(fleet: Fleet, group: str) -> dict[str, Any]:
    with fleet.session() as s:
        out = _public(s, group, fleet.clock())
    if not out["devices"] and out["window"] is None:
        raise NotFound("group", group)
    return out


def set_window(fleet: Fleet, group: str, spec: str, tz: str, actor: str) -> dict[str, Any]:
    """Store ``group``'s window (canonical spec); the caller re-runs the rollouts."""
    if not group:
        raise Invalid("group", "a window needs a group name; devices without a group have none")
    canonical = parse(spec, tz).spec()
    with fleet.session() as s:
        w = s.get(GroupWindow, group) or GroupWindow(group=group, spec=canonical, tz=tz)
        w.spec, w.tz, w.updated, w.updated_by = canonical, tz, fleet.clock(), actor
        s.add(w)
        fleet.audit(s, actor, "group.window.set", group, spec=canonical, tz=tz)
        s.commit()
        return _public(s, group, fleet.clock())


def clear_window(fleet: Fleet, group: str, actor: str) -> dict[str, Any]:
    """Remove ``group``'s window (its devices may install at any time)."""
    with fleet.session() as s:
        w = s.get(GroupWindow, group)
        if w is None:
            raise NotFound("window of group", group)
        s.delete(w)
        fleet.audit(s, actor, "group.window.clear", group)
        s.commit()
        return _public(s, group, fleet.clock())
