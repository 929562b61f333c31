"""The device-fit rule (protocol.compat.fit), table-tested: every check, in order, with the
reason code agents report; unknown facts fit the hub's view and not the agent's."""

from __future__ import annotations

import pytest

from protocol.bundle import Requirements
from protocol.compat import DeviceFacts, Fit, fit, version_tuple
from protocol.device import Inventory
from protocol.errors import Reason

WRONG, RUNTIME = Reason.WRONG_HARDWARE, Reason.UNSUPPORTED_RUNTIME
PI = DeviceFacts("rpi4", False, None, "0.2.0")
CORAL = DeviceFacts("coral-devboard", True, 14, "0.2.0")
UNKNOWN = DeviceFacts()


@pytest.mark.parametrize(
    "name, req, device, unknown_fits, want",
    [
        ("no requirements", Requirements(), PI, False, Reason.OK),
        ("board listed", Requirements(boards=("rpi4", "rpi5")), PI, False, Reason.OK),
        ("board not listed", Requirements(boards=("coral-devboard",)), PI, False, WRONG),
        ("board unknown, hub's view", Requirements(boards=("coral-devboard",)), UNKNOWN, True, Reason.OK),
        ("board unknown, agent's view", Requirements(boards=("coral-devboard",)), UNKNOWN, False, WRONG),
        ("edge tpu required, none", Requirements(edgetpu="required"), PI, True, RUNTIME),
        ("edge tpu required, present", Requirements(edgetpu="required"), CORAL, False, Reason.OK),
        ("edge tpu optional, none", Requirements(edgetpu="optional"), PI, False, Reason.OK),
        ("edge tpu unknown, hub's view", Requirements(edgetpu="required"), UNKNOWN, True, Reason.OK),
        ("edge tpu unknown, agent's view", Requirements(edgetpu="required"), UNKNOWN, False, RUNTIME),
        ("runtime new enough", Requirements(edgetpu="required", min_edgetpu_runtime=14), CORAL, False, Reason.OK),
        ("runtime too old", Requirements(edgetpu="required", min_edgetpu_runtime=15), CORAL, True, RUNTIME),
        # an optional bundle runs on the CPU model below the minimum: never a misfit
        (
            "runtime too old, tpu optional",
            Requirements(edgetpu="optional", min_edgetpu_runtime=15),
            CORAL,
            False,
            Reason.OK,
        ),
        (
            "runtime unknown, hub's view",
            Requirements(edgetpu="required", min_edgetpu_runtime=15),
            DeviceFacts("x", True),
            True,
            Reason.OK,
        ),
        (
            "runtime unknown, agent's view",
            Requirements(edgetpu="required", min_edgetpu_runtime=15),
            DeviceFacts("x", True),
            False,
            RUNTIME,
        ),
        ("agent new enough", Requirements(min_agent="0.2"), PI, False, Reason.OK),
        ("agent too old", Requirements(min_agent="0.10"), PI, True, RUNTIME),
        ("agent unknown, hub's view", Requirements(min_agent="0.2"), UNKNOWN, True, Reason.OK),
        ("agent unknown, agent's view", Requirements(min_agent="0.2"), UNKNOWN, False, RUNTIME),
        # the first failing check decides
        ("board before edge tpu", Requirements(edgetpu="required", boards=("coral-devboard",)), PI, False, WRONG),
        ("edge tpu before agent", Requirements(edgetpu="required", min_agent="9"), PI, False, RUNTIME),
    ],
)
def test_fit_table(name: str, req: Requirements, device: DeviceFacts, unknown_fits: bool, want: Reason):
    got = fit(req, device, unknown_fits)
    assert (got.ok, got.reason) == (want is Reason.OK, want), (name, got)
    assert got.ok or got.detail, name


def test_details_name_the_fact_and_the_requirement():
    assert fit(Requirements(boards=("jetson",)), PI) == Fit(False, WRONG, "board 'rpi4' not in ['jetson']")
    assert fit(Requirements(edgetpu="required"), PI).detail == "bundle requires an Edge TPU; device has none"
    assert (
        fit(Requirements(edgetpu="required", min_edgetpu_runtime=15), CORAL).detail
        == "Edge TPU runtime 14 < required 15"
    )
    assert fit(Requirements(min_agent="1.0"), PI).detail == "agent 0.2.0 < required 1.0"


def test_facts_from_a_status_inventory_take_the_status_agent_version_first():
    inv = Inventory(board="rpi4", edgetpu=True, edgetpu_runtime=13, agent_version="0.1.0")
    assert DeviceFacts.of(inv) == DeviceFacts("rpi4", True, 13, "0.1.0")
    assert DeviceFacts.of(inv, "0.3.0").agent_version == "0.3.0"
    assert DeviceFacts.of(Inventory(agent_version="")) == DeviceFacts()


def test_versions_compare_by_their_numbers():
    assert version_tuple("0.10.0") > version_tuple("0.9.9")
    assert version_tuple("1.2rc3") == (1, 23) and version_tuple("") == (0,)
