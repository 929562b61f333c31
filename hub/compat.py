"""Can a device run a bundle? Pure: bundle requirements vs the inventory in its Status.

Inventory keys read (agents send more; unknown keys are ignored): ``board`` (str),
``edgetpu`` (bool, or a dict with ``present``), ``edgetpu_runtime`` (int runtime version),
``agent_version`` (dotted version; also taken from ``Status.agent_version``).
A key the device did not send never makes it incompatible: the agent is the last gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.bundle import Requirements
from protocol.errors import Reason


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: Reason = Reason.OK
    detail: str = ""


def _tpu_present(inv: dict[str, Any]) -> bool | None:
    v = inv.get("edgetpu", inv.get("tpu"))
    if isinstance(v, dict):
        v = v.get("present")
    return v if isinstance(v, bool) else None


def _runtime(inv: dict[str, Any]) -> int | None:
    v = inv.get("edgetpu_runtime")
    if isinstance(v, dict):
        v = v.get("version")
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return None


def version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check(req: Requirements, inventory: dict[str, Any], agent_version: str = "") -> Verdict:
    board = inventory.get("board")
    if req.boards and isinstance(board, str) and board not in req.boards:
        return Verdict(False, Reason.WRONG_HARDWARE, f"board {board!r} not in {list(req.boards)}")
    tpu = _tpu_present(inventory)
    if req.edgetpu == "required" and tpu is False:
        return Verdict(False, Reason.WRONG_HARDWARE, "bundle requires an Edge TPU; device has none")
    rt = _runtime(inventory)
    if req.min_edgetpu_runtime is not None and tpu and rt is not None and rt < req.min_edgetpu_runtime:
        return Verdict(False, Reason.UNSUPPORTED_RUNTIME,
                       f"edgetpu runtime {rt} < required {req.min_edgetpu_runtime}")
    av = agent_version or str(inventory.get("agent_version") or "")
    if req.min_agent and av and version_tuple(av) < version_tuple(req.min_agent):
        return Verdict(False, Reason.UNSUPPORTED_RUNTIME, f"agent {av} < required {req.min_agent}")
    return Verdict(True)
