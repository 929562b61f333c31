"""`edgefleet-hub rollouts create --channel`: the rollout names its channel, the status line says
it, the document carries the channel's entry, and `devices show` lists the device's channels."""

from __future__ import annotations

import json
import time

import pytest

from protocol.channels import ChannelStatus
from protocol.messages import Status, parse_desired_payload
from protocol.signing import Envelope

from .conftest import FakeDevice
from .test_cli import TOKEN, cli, served  # noqa: F401  (served is a fixture)

pytestmark = pytest.mark.integration


def test_a_rollout_on_a_channel_from_the_cli(served, mosquitto, bundle_dir):  # noqa: F811
    hub = ["--hub", served, "--token", TOKEN]
    dev = FakeDevice("ch-dev", mosquitto.port).connect()
    try:
        sent = Status("ch-dev", True, 1000, "0.1.0", channels={"second": ChannelStatus(None, None, "idle")})
        dev.send("status", sent.to_bytes(), retain=True)
        pushed = json.loads(cli("models", "push", str(bundle_dir()), *hub).stdout.strip().splitlines()[-1])
        rid = cli("rollouts", "create", "--bundle", pushed["digest"], "--all", "--channel", "second", *hub).stdout
        st = json.loads(cli("rollouts", "status", rid.strip(), "--json", *hub).stdout)
        assert st["channel"] == "second"
        assert "on channel second" in cli("rollouts", "status", rid.strip(), *hub).stdout
        deadline = time.monotonic() + 20
        while not dev.got("desired") and time.monotonic() < deadline:
            time.sleep(0.1)
        doc = parse_desired_payload(Envelope.parse(dev.got("desired")[-1]).payload)
        assert doc.since == 0 and doc.channels["second"].bundle.digest == pushed["digest"]
        shown = json.loads(cli("devices", "show", "ch-dev", *hub).stdout)
        assert shown["channels"] == {"second": {"active": None, "staged": None, "state": "idle"}}
        bad = cli("rollouts", "create", "--bundle", pushed["digest"], "--all", "--channel", "No!", *hub, check=False)
        assert bad.returncode != 0 and "No!" in bad.stderr
    finally:
        dev.close()
