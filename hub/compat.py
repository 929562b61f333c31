"""Can a device run a bundle, as the hub knows the device: the rule is
:func:`protocol.compat.fit` (shared with the agent, one set of reason codes); this adapts the
registry's stored inventory to it. A fact the device did not send never makes it incompatible:
the agent is the last gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol.bundle import Requirements
from protocol.compat import DeviceFacts, Fit, fit
from protocol.device import Inventory
from protocol.errors import BadPayload


def stored_inventory(device: str, obj: Mapping[str, Any] | None) -> Inventory:
    """A device row's inventory column as :class:`Inventory`. Ingest stores what it parsed, but a
    row written before the inventory was typed may hold a value the parser now refuses: then
    every fact counts as unknown (the agent still checks the bundle itself)."""
    try:
        return Inventory.from_dict(obj or {}, f"stored inventory of {device}")
    except BadPayload:
        return Inventory(extra=dict(obj or {}))


def check(req: Requirements, inventory: Inventory, agent_version: str = "") -> Fit:
    """``inventory`` (and ``Status.agent_version``, which wins when set) against ``req``."""
    return fit(req, DeviceFacts.of(inventory, agent_version or None))
