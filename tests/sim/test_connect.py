"""sim.fleet: a broker that does not accept connections (its accept queue full) must not stop
the simulated fleet. Each TCP connect is given ``connect_timeout_s``, and the first one that
fails ends that step's connecting: before, 10,000 devices in one process sat in a blocking
connect() while every other device's socket went unread (docs/scale.md, 10,000-device run 5)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from hub import keys as hub_keys
from sim.config import SimConfig
from sim.fleet import SimFleet


def test_a_broker_that_accepts_nothing_costs_one_failed_connect_a_step_not_one_per_device(tmp_path: Path):
    hub_keys.init(tmp_path / "keys")
    deaf = socket.socket()
    deaf.bind(("127.0.0.1", 0))
    deaf.listen(0)  # never accept(): the kernel queues one or two handshakes, then drops SYNs
    port = deaf.getsockname()[1]
    fleet = SimFleet(
        SimConfig(
            "127.0.0.1", port, tmp_path / "keys" / "root.json", devices=20, connect_timeout_s=0.05, connect_per_s=1e9
        )
    )
    try:
        fleet._connect_some(time.monotonic())  # what each step does once a tick
        first = fleet.connect_failures
        tried = 20 - len(fleet._to_connect)
        assert first == 1, "the step stopped at the first connect the broker did not accept"
        assert tried < 20, f"{tried} of 20 devices tried in one step: the rest wait for the next"
        fleet._connect_some(time.monotonic())
        assert fleet.connect_failures == 2 and fleet.connected() == 0
    finally:
        fleet.stop()
        deaf.close()
