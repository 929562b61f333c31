"""The hub (before it issues a bundle) and the agent (before it downloads one) judge a device
alike: both call protocol.compat.fit, so on facts the device knows they give the same verdict
and the same reason code (they once differed: the hub said wrong_hardware where the agent
reported unsupported_runtime, and the hub held an optional bundle's runtime minimum against a
device that would serve the CPU model)."""

from __future__ import annotations

import pytest

from agent.install import Inventory as AgentInventory
from hub.compat import check
from protocol.bundle import Requirements
from protocol.device import Inventory

DEVICES = [
    AgentInventory("rpi4", agent_version="0.2.0"),
    AgentInventory("coral-devboard", edgetpu=True, edgetpu_runtime=14, agent_version="0.2.0"),
    AgentInventory("coral-devboard", edgetpu=True, edgetpu_runtime=13, agent_version="0.1.0"),
]
REQUIREMENTS = [
    Requirements(),
    Requirements(boards=("coral-devboard",)),
    Requirements(edgetpu="required"),
    Requirements(edgetpu="optional", min_edgetpu_runtime=14),
    Requirements(edgetpu="required", min_edgetpu_runtime=14),
    Requirements(min_agent="0.2"),
    Requirements(edgetpu="required", boards=("rpi4",)),
]


@pytest.mark.parametrize("req", REQUIREMENTS)
@pytest.mark.parametrize("device", DEVICES)
def test_hub_and_agent_give_the_same_verdict_and_reason(req: Requirements, device: AgentInventory):
    status = Inventory(
        board=device.board,
        edgetpu=device.edgetpu,
        edgetpu_runtime=device.edgetpu_runtime,
        agent_version=device.agent_version,
    )
    hub, agent = check(req, status), device.fit(req)
    assert (hub.ok, hub.reason) == (agent.ok, agent.reason)
