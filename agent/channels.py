"""Model channels on the device: each named channel (``protocol.channels``) has its own slots,
install job, serving, telemetry recorder and probation; the daemon holds one :class:`Channel`
per name and routes to it.

State layout: the ``default`` channel keeps the single-model layout at the top of ``state_dir``
(``slots/``, ``slots.json``, ``job.json``, ``downloads/``), so a device installed before
channels existed is its ``default`` channel without moving a file; every other channel has the
same layout under ``state_dir/channels/<name>/``.

Which channels a desired document starts a job on (:func:`due`, pure): each channel's entry
carries the seq of the document that last changed it (``Desired.channel``); a channel starts a
job when that seq is above the one it last accepted (``trust.json``'s ``channels``; a device
from before channels has only ``desired_seq``, which is its default channel's). So a document
issued for the detector leaves the classifier's install alone, and each channel's reports name
the seq the hub issued for that channel's rollout. A channel the document no longer names keeps
serving what it has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protocol.channels import DEFAULT, check_channel
from protocol.errors import ProtocolError
from protocol.messages import Desired

from .config import AgentConfig
from .serve import Serving
from .slots import Slots
from .telemetry import Recorder
from .updater import ReportFn, Updater

log = logging.getLogger(__name__)

CHANNELS_DIR = "channels"


@dataclass
class Channel:
    name: str
    slots: Slots
    serving: Serving
    recorder: Recorder
    updater: Updater
    report: ReportFn
    window_start: int  # the open telemetry window's start


def state_dir(cfg: AgentConfig, name: str) -> Path:
    return cfg.state_dir if name == DEFAULT else cfg.state_dir / CHANNELS_DIR / check_channel(name)


def channel_config(cfg: AgentConfig, name: str) -> AgentConfig:
    """The agent's config with the channel's own state directory (slots, job, downloads)."""
    return cfg if name == DEFAULT else replace(cfg, state_dir=state_dir(cfg, name))


def installed(cfg: AgentConfig) -> list[str]:
    """Non-default channels with state on disk (started again at boot), sorted."""
    root = cfg.state_dir / CHANNELS_DIR
    names = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            if p.is_dir():
                names.append(check_channel(p.name))
        except ProtocolError:
            log.warning("ignoring %s: not a channel name", p)
    return names


def accepted(trust: dict[str, Any]) -> dict[str, int]:
    """Per channel, the seq of the last entry it accepted, from ``trust.json``."""
    raw = trust.get("channels")
    out = {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    out.setdefault(DEFAULT, int(trust.get("desired_seq", 0)))
    return out


def due(desired: Desired, seen: dict[str, int]) -> list[tuple[str, Desired]]:
    """The channels whose entry in ``desired`` is newer than what they accepted, each with its
    single-channel document (default first, then by name)."""
    out = []
    for name in [DEFAULT, *sorted(desired.channels)]:
        one = desired.channel(name)
        if one is not None and one.seq > seen.get(name, 0):
            out.append((name, one))
    return out


__all__ = ["CHANNELS_DIR", "Channel", "accepted", "channel_config", "due", "installed", "state_dir"]
