"""Can a device run a bundle? Pure: bundle requirements vs the :class:`Inventory` in its Status.

Inventory facts read: ``board``, ``edgetpu``, ``edgetpu_runtime`` and ``agent_version`` (also
taken from ``Status.agent_version``). A fact the device did not send never makes it incompatible:
the agent is the last gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.bundle import Requirements
from protocol.device import Inventory
from protocol.errors import BadPayload, Reason


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: Reason = Reason.OK
    detail: str = ""


def stored_inventory(device: str, obj: Mapping[str, Any] | None) -> Inventory:
    """A device row's inventory column as :class:`Inventory`. Ingest stores what it parsed, but a
    row written before the inventory was typed may hold a value the parser now refuses: then
    every fact counts as unknown (the agent still checks the bundle itself)."""
    try:
        return Inventory.from_dict(obj or {}, f"stored inventory of {device}")
    except BadPayload:
        return Inventory(extra=dict(obj or {}))


def version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check(req: Requirements, inventory: Inventory, agent_version: str = "") -> Verdict:
    board = inventory.board
    if req.boards and board is not None and board not in req.boards:
        return Verdict(False, Reason.WRONG_HARDWARE, f"board {board!r} not in {list(req.boards)}")
    tpu = inventory.edgetpu
    if req.edgetpu == "required" and tpu is False:
        return Verdict(False, Reason.WRONG_HARDWARE, "bundle requires an Edge TPU; device has none")
    rt = inventory.edgetpu_runtime
    if req.min_edgetpu_runtime is not None and tpu and rt is not None and rt < req.min_edgetpu_runtime:
        return Verdict(False, Reason.UNSUPPORTED_RUNTIME, f"edgetpu runtime {rt} < required {req.min_edgetpu_runtime}")
    av = agent_version or inventory.agent_version or ""
    if req.min_agent and av and version_tuple(av) < version_tuple(req.min_agent):
        return Verdict(False, Reason.UNSUPPORTED_RUNTIME, f"agent {av} < required {req.min_agent}")
    return Verdict(True)
