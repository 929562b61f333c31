"""Model channels: a device runs several models, each on a named channel (``detector``,
``classifier``), with its own bundle, rollout, probation, telemetry and local API route.

The model a device ran before channels existed is the ``default`` channel: every wire document
without a channel means ``default``, and writers leave ``channel`` out when it is ``default``
so documents that never name another channel keep their bytes.

A channel name becomes a path level on the device (``state_dir/channels/<name>``) and in the
local API (``/v1/models/<name>/predict``), so it is short lowercase ASCII.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .codec import field
from .errors import BadPayload

DEFAULT = "default"
MAX_CHANNELS = 8  # models one device runs side by side (an Edge TPU's cache holds a few at best)
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")


def check_channel(name: Any) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`BadPayload` naming it."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadPayload("channel", f"{name!r:.60} must be 1-32 chars of [a-z0-9_-], starting with a letter")
    return name


def channel_of(obj: dict[str, Any], what: str) -> str:
    """The ``channel`` field of a wire object: absent or null means ``default``."""
    raw = field(obj, "channel", str, what, DEFAULT, allow_none=True)
    return DEFAULT if raw is None else check_channel(raw)


@dataclass(frozen=True)
class ChannelStatus:
    """One non-default channel in the retained ``Status`` (``channels: {name: ...}``): what it
    serves, what it stages and its install state, like the status's own fields for ``default``."""

    active: dict[str, Any] | None = None  # BundleInfo.to_dict()
    staged: dict[str, Any] | None = None
    state: str = "idle"

    def to_dict(self) -> dict[str, Any]:
        return {"active": self.active, "staged": self.staged, "state": self.state}

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> ChannelStatus:
        if not isinstance(obj, dict):
            raise BadPayload(what, f"a channel's status must be an object, got {obj!r:.60}")
        active = field(obj, "active", dict, what, None, allow_none=True)
        staged = field(obj, "staged", dict, what, None, allow_none=True)
        for name, b in (("active", active), ("staged", staged)):
            if b is not None and not isinstance(b.get("digest"), str):
                raise BadPayload(what, f"{name} needs a digest, got {b!r:.80}")
        return cls(active, staged, field(obj, "state", str, what, "idle")[:32])


def parse_channel_statuses(obj: Any, what: str) -> dict[str, ChannelStatus]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise BadPayload(what, f"channels must be an object, got {obj!r:.60}")
    if len(obj) > MAX_CHANNELS:
        raise BadPayload(what, f"{len(obj)} channels exceeds {MAX_CHANNELS}")
    return {check_channel(k): ChannelStatus.from_dict(v, f"{what} channel {k}") for k, v in obj.items()}


__all__ = ["DEFAULT", "MAX_CHANNELS", "ChannelStatus", "channel_of", "check_channel", "parse_channel_statuses"]
