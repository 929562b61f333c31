"""sim.link against a real Mosquitto: a link acknowledges what it read in the same loop round.

With ``max_inflight_messages`` small (the rollout bench runs 2) the broker sends a device its
next chunk only after the PUBACK of one before it. A link that left its PUBACKs for the next
round of the selector loop (register for writing, wait for the next ``select``) made every
chunk cost two rounds, and at 10,000 devices one round of the simulator's loop takes seconds
(docs/scale.md, 2026-12-06). Counted in loop rounds that handled an event, not in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sim.link import Link, Loop
from tests.conftest import start_mosquitto

MESSAGES = 30


class _Count:
    def __init__(self) -> None:
        self.up = False
        self.got = 0

    def on_connected(self, session_present: bool) -> None:
        self.up = True

    def on_disconnected(self) -> None:
        self.up = False

    def on_message(self, topic: str, payload: bytes) -> None:
        self.got += 1


def _retain(port: int, n: int) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retainer", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(f"t/chunk/{i}", bytes(1000), qos=1, retain=True) for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()


def test_a_link_acknowledges_each_message_in_the_round_it_reads_it_so_one_inflight_slot_costs_one_round(
    tmp_path: Path,
):
    broker = start_mosquitto(tmp_path / "broker", "max_inflight_messages 1\nmax_queued_messages 1000\n")
    loop = Loop()
    h = _Count()
    link = Link(loop, "reader", "127.0.0.1", broker.port, ("t/will", b""), h)
    try:
        _retain(broker.port, MESSAGES)
        assert link.connect()
        end = time.monotonic() + 20
        while not h.up and time.monotonic() < end:
            loop.poll(0.05)
        assert h.up
        assert link.subscribe(["t/chunk/+"])
        rounds = 0
        end = time.monotonic() + 30
        while h.got < MESSAGES and time.monotonic() < end:
            rounds += 1 if loop.poll(0.05) else 0
        assert h.got == MESSAGES, h.got
        # one inflight slot: message k+1 leaves the broker only after the PUBACK of message k.
        # Acknowledged in the round that read it: about one round a message (the SUBACK and a
        # round the broker had not answered yet add a few); left for the next round: two.
        assert rounds <= MESSAGES * 1.4, f"{rounds} loop rounds for {MESSAGES} messages"
    finally:
        link.close()
        loop.close()
        broker.stop()
