"""Model channels on the hub (protocol.channels): which bundle a device serves on a channel, which
rollout owns a device on a channel, and what a rollout on a channel may ask for.

A device follows one rollout per channel; the device row's ``active_*`` columns are its default
channel, ``channels`` the others as its last status reported them ({name: {active, staged, state}}).
"""

from __future__ import annotations

from typing import Any

from protocol.channels import DEFAULT, check_channel
from protocol.errors import BadPayload

from .errors import Invalid
from .models import Device, Rollout
from .rollout import Policy
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


def check(channel: str, policy: Policy) -> str:
    """``channel`` if a rollout may target it with ``policy``, else :class:`Invalid` naming why."""
    try:
        check_channel(channel)
    except BadPayload as exc:
        raise Invalid("channel", str(exc)) from None
    if channel != DEFAULT and policy.stages.stages:
        # hub.staging issues its stage documents on the default channel's entry
        raise Invalid("policy", f"stages {list(policy.stages.stages)} run on the default channel only, not {channel!r}")
    return channel
