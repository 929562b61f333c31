"""Which devices a rollout names: all, a device list, a group or a tag."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from protocol.errors import BadPayload
from protocol.topics import check_device_id

from .errors import Invalid
from .models import (
    Device,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Which devices a rollout names. Exactly one of the fields is set."""

    all: bool = False
    devices: tuple[str, ...] = ()
    group: str | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, obj: Any) -> Target:
        if not isinstance(obj, dict):
            raise Invalid("target", f'must be an object like {{"all": true}}, got {obj!r:.80}')
        keys = {k for k, v in obj.items() if v not in (None, False, [], "")}
        if len(keys) != 1 or not keys <= {"all", "devices", "group", "tag"}:
            raise Invalid("target", f"needs exactly one of all/devices/group/tag, got {sorted(obj)}")
        if obj.get("all") is True:
            return cls(all=True)
        if "devices" in keys:
            devs = obj["devices"]
            if not isinstance(devs, list) or not all(isinstance(x, str) for x in devs):
                raise Invalid("target", "devices must be a list of device ids")
            try:
                return cls(devices=tuple(dict.fromkeys(check_device_id(x) for x in devs)))
            except BadPayload as exc:
                raise Invalid("target", str(exc)) from None
        if "group" in keys and isinstance(obj["group"], str):
            return cls(group=obj["group"])
        if "tag" in keys and isinstance(obj["tag"], str):
            return cls(tag=obj["tag"])
        raise Invalid("target", f"{obj!r:.80} is not a valid target")

    def to_dict(self) -> dict[str, Any]:
        if self.all:
            return {"all": True}
        if self.devices:
            return {"devices": list(self.devices)}
        if self.group is not None:
            return {"group": self.group}
        return {"tag": self.tag}

    def matches(self, d: Device) -> bool:
        if self.all:
            return True
        if self.devices:
            return d.id in self.devices
        if self.group is not None:
            return d.group == self.group
        return self.tag in (d.tags or [])
