"""M10 (a device's death is seen through its last will) and M12 (a slow consumer: the hub's
database stalls while devices keep sending) against real Mosquitto and the live hub."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hub.models import Device
from hub.server import build

from ..hub.conftest import hub_config, wait_for
from ..hub.helpers import telemetry
from .conftest import windows_stored


def _online(hub, device: str) -> bool | None:
    with hub.fleet.session() as s:
        d = s.get(Device, device)
        return None if d is None else d.online


def test_m10_an_agent_killed_9_is_offline_within_one_and_a_half_keepalives(
    tmp_path: Path, keys_dir: Path, mosquitto, make_agent_at, figure
):
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url))
    hub.start()
    try:
        assert hub.bridge is not None and hub.bridge.connected.wait(10)
        agent = make_agent_at(mosquitto.url, "lw-1").start()  # keepalive 5 s
        wait_for(lambda: _online(hub, "lw-1"), timeout=30, what="the agent online")
        agent.kill()
        killed = time.monotonic()
        wait_for(lambda: _online(hub, "lw-1") is False, timeout=30, what="offline from the last will")
        seen = time.monotonic() - killed
        figure(
            "M10",
            "agent kill -9 (keepalive 5 s; on loopback the kernel closes its socket at once)",
            "seconds until the hub shows it offline",
            round(seen, 1),
            "<= 7.5 (1.5 keepalives)",
            seen <= 7.5 + 1.0,
        )
        agent.start()
        wait_for(lambda: _online(hub, "lw-1"), timeout=30, what="back online")
        agent.stop()  # a clean stop says offline at once
        stopped = time.monotonic()
        wait_for(lambda: _online(hub, "lw-1") is False, timeout=30, what="offline after a clean stop")
        figure(
            "M10",
            "agent clean stop",
            "seconds until the hub shows it offline",
            round(time.monotonic() - stopped, 1),
            "< 2",
            time.monotonic() - stopped < 2,
        )
        assert seen <= 8.5
    finally:
        hub.stop()


def test_m12_a_stalled_database_costs_the_hub_no_broker_connection_and_no_message(
    tmp_path: Path, keys_dir: Path, mosquitto, figure
):
    """Every ingest batch takes 0.5 s longer (a database under load) while 20 devices send
    1,000 windows: paho's network thread never waits for it, so the hub keeps its session and
    everything is stored once the database catches up."""
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url, batch_max=50))
    slow = hub.ingest.handle

    def stalled(batch):
        time.sleep(0.5)
        slow(batch)

    hub.ingest.handle = stalled  # type: ignore[method-assign]
    drops: list[str] = []
    hub.start()
    try:
        assert hub.bridge is not None and hub.bridge.connected.wait(10)
        client, theirs = hub.bridge.client, hub.bridge.client.on_disconnect

        def watch(*a):  # count, then let the bridge handle it as always
            drops.append(str(a[3]))
            theirs(*a)

        client.on_disconnect = watch
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="m12-pub", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        infos = [
            pub.publish(f"ef/v1/dev/s{d:02}/telemetry", telemetry(f"s{d:02}", seq), qos=1)
            for seq in range(1, 51)
            for d in range(20)
        ]
        for i in infos:
            i.wait_for_publish(30)

        n = windows_stored(hub, 1000, 60)
        figure(
            "M12",
            "every ingest batch stalled 0.5 s while 20 devices send 1,000 windows",
            "hub broker disconnects",
            len(drops),
            "0",
            not drops,
        )
        figure("M12", "the same", "windows stored", f"{n}/1000", "all", n == 1000)
        pub.disconnect()
        pub.loop_stop()
        assert not drops and n == 1000
    finally:
        hub.stop()
