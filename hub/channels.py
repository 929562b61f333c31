"""Model channels on the hub (protocol.channels): which bundle a device serves on a channel, which
rollout owns a device on a channel, and which channel names a rollout may target.

A device follows one rollout per channel; the device row's ``active_*`` columns are its default
channel, ``channels`` the others as its last status reported them ({name: {active, staged, state}}).
"""

from __future__ import annotations

from typing import Any

from protocol.channels import DEFAULT, check_channel
from protocol.errors import BadPayload

from .errors import Invalid
from .models import Device, Rollout
from .targets import Target


def active_on(d: Device, channel: str) -> str | None:
    """The bundle ``d`` serves on ``channel``, as its last status said."""
    if channel == DEFAULT:
        return d.active_digest
    active = ((d.channels or {}).get(channel) or {}).get("active") or {}
    digest: Any = active.get("digest")
    return digest if isinstance(digest, str) else None


def owner(owners: list[tuple[Rollout, Target]], d: Device, channel: str) -> Rollout | None:
    """The rollout that owns ``d`` on ``channel``: the newest of that channel targeting it."""
    return next((o for o, t in owners if o.channel == channel and t.matches(d)), None)


def check(channel: str) -> str:
    """``channel`` if a rollout may target it, else :class:`Invalid` naming why. Any policy
    runs on any channel, its stages too (hub.staging issues them on the rollout's channel)."""
    try:
        check_channel(channel)
    except BadPayload as exc:
        raise Invalid("channel", str(exc)) from None
    return channel
