"""Can a device run a bundle? The one device-fit rule, for the hub (before it issues a bundle,
and in the rollout preview) and the agent (before it downloads one, and again on the verified
manifest). Pure.

Checks, in this order; the first that fails decides, with its :class:`Reason`:

1. ``requirements.boards`` is not empty and the device's board is not in it ->
   ``wrong_hardware``;
2. ``requirements.edgetpu == "required"`` and the device has no Edge TPU ->
   ``unsupported_runtime``;
3. ``requirements.edgetpu == "required"``, ``min_edgetpu_runtime`` is set and the device's Edge
   TPU runtime is older -> ``unsupported_runtime``. An ``optional`` bundle's minimum never
   rejects a device: below it the agent serves the CPU model instead
   (``agent.install.choose_artifact``);
4. ``min_agent`` is set and the device's agent is older (numeric parts compared,
   :func:`version_tuple`) -> ``unsupported_runtime``.

These are the codes agents have always reported (``Report.reason``), so the hub's verdict
names what a device would say. A fact the device did not state (``None``) fits when
``unknown_fits`` (the hub's view: an older agent's status may leave facts out, and the agent is
the last gate); the agent judges its own facts with ``unknown_fits=False``, where an unknown
runtime or agent version counts as too old.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bundle import Requirements
from .device import Inventory
from .errors import Reason


@dataclass(frozen=True)
class DeviceFacts:
    """What the rule reads of a device; ``None`` = not known."""

    board: str | None = None
    edgetpu: bool | None = None
    edgetpu_runtime: int | None = None
    agent_version: str | None = None

    @classmethod
    def of(cls, inventory: Inventory, agent_version: str | None = None) -> DeviceFacts:
        """From a ``Status`` inventory; ``agent_version`` (``Status.agent_version``) wins over
        the inventory's own when given."""
        return cls(
            inventory.board,
            inventory.edgetpu,
            inventory.edgetpu_runtime,
            agent_version or inventory.agent_version or None,
        )


@dataclass(frozen=True)
class Fit:
    ok: bool
    reason: Reason = Reason.OK
    detail: str = ""


def version_tuple(v: str) -> tuple[int, ...]:
    """``"0.10.2rc1"`` -> ``(0, 10, 21)``: the digits of each dot-separated part."""
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def fit(req: Requirements, device: DeviceFacts, unknown_fits: bool = True) -> Fit:
    """The rule in the module docstring."""
    board = device.board
    if req.boards and board not in req.boards and (board is not None or not unknown_fits):
        return Fit(False, Reason.WRONG_HARDWARE, f"board {board!r} not in {list(req.boards)}")
    if req.edgetpu != "required":
        tpu_ok = True
    elif device.edgetpu is None:
        tpu_ok = unknown_fits
    else:
        tpu_ok = device.edgetpu
    if not tpu_ok:
        return Fit(False, Reason.UNSUPPORTED_RUNTIME, "bundle requires an Edge TPU; device has none")
    rt, need_rt = device.edgetpu_runtime, req.min_edgetpu_runtime
    if req.edgetpu == "required" and need_rt is not None and (rt is not None or not unknown_fits):
        if rt is None or rt < need_rt:
            return Fit(False, Reason.UNSUPPORTED_RUNTIME, f"Edge TPU runtime {rt} < required {need_rt}")
    av = device.agent_version
    if req.min_agent and (av is not None or not unknown_fits):
        if av is None or version_tuple(av) < version_tuple(req.min_agent):
            return Fit(False, Reason.UNSUPPORTED_RUNTIME, f"agent {av} < required {req.min_agent}")
    return Fit(True)
