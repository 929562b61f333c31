"""Cohorts of the rollout machine (rules 2, 6 and 8 of :mod:`hub.rollout`): which devices the
sizes count, who is assigned next (online first, open window first, then by id) and opening
the next cohort.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .rollout_policy import Policy, cohort_sizes
from .rollout_state import DeviceState, RolloutState


def eligible(devs: Mapping[str, DeviceState]) -> int:
    """Devices cohort sizes are computed over: everyone who could be issued the bundle."""
    return sum(1 for d in devs.values() if d.state != "incompatible")


def waiting_reason(opens: int) -> str:
    return f"waiting for window (opens at {utc(opens)})"


def utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def assign(
    devs: dict[str, DeviceState],
    upto: int,
    cohort: int,
    issue: Any,
    put: Any,
    closed: Mapping[str, int] | None = None,
) -> None:
    """Give the next unassigned devices (online first, then those whose maintenance window is
    open, then by id) to ``cohort`` until ``upto`` eligible devices are assigned. Incompatible
    ones are marked with the cohort but not counted."""
    closed = closed or {}
    waiting = [d for d in devs.values() if d.cohort is None]
    if not waiting:
        return
    assigned = sum(1 for d in devs.values() if d.cohort is not None and d.state != "incompatible")
    for d in sorted(waiting, key=lambda x: (not x.online, x.id in closed, x.id)):
        if d.cohort is not None:
            continue
        if d.state == "incompatible":
            put(replace(d, cohort=cohort))
            continue
        if assigned >= upto:
            continue
        put(issue(replace(d, cohort=cohort)) if d.state == "pending" else replace(d, cohort=cohort))
        assigned += 1


def open_next(
    st: RolloutState,
    devs: dict[str, DeviceState],
    now: int,
    policy: Policy,
    issue: Any,
    put: Any,
    closed: Mapping[str, int] | None = None,
) -> RolloutState:
    sizes = cohort_sizes(policy.cohorts, eligible(devs))
    if not sizes:
        return replace(st, cohort=max(st.cohort, 0), soak_started=None)
    nxt = min(st.cohort + 1, len(sizes) - 1)
    st = replace(st, cohort=nxt, cohort_started=now, soak_started=None)
    assign(devs, sizes[nxt], nxt, issue, put, closed)
    return st
