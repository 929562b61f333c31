"""The transport's broker list: a node that fails an attempt hands the next one to the next node."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load
from agent.errors import ConnectError
from agent.transport import Transport

from ..conftest import free_port


@pytest.mark.integration
def test_a_dead_first_broker_moves_the_next_attempt_to_the_next_node_of_the_list(tmp_path: Path, mosquitto: Any):
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "root.json").write_text("{}")
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'device_id = "dev1"\nbroker = ["{dead}", "{mosquitto.url}"]\nstate_dir = "state"\nroot = "root.json"\n'
    )
    t = Transport(load(conf, env={}), "ef/v1/dev/dev1/status", b"offline", lambda _m: None)
    with pytest.raises(ConnectError, match=dead):
        t.connect(timeout=5)
    assert str(t.broker) == mosquitto.url
    try:
        t.connect(timeout=5)
        assert t.alive() and t.protocol == "v5"
    finally:
        t.disconnect()
    t.close()
    t.connect(timeout=5)  # a dropped connection first tries the node it was on
    assert str(t.broker) == mosquitto.url
    t.disconnect()


def _until(check: Any, seconds: float = 10.0) -> bool:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.mark.integration
def test_filters_the_broker_acknowledged_stay_confirmed_across_a_kept_session_and_not_a_new_one(
    tmp_path: Path, mosquitto: Any
):
    """What agent.download rule 2 relies on to skip re-subscribing after a reconnect: a filter
    counts once its SUBACK came, stays while the broker keeps the session, and goes with an
    unsubscribe or a session the broker did not keep."""
    (tmp_path / "root.json").write_text("{}")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'device_id = "dev2"\nbroker = "{mosquitto.url}"\nstate_dir = "state"\nroot = "root.json"\n')
    t = Transport(load(conf, env={}), "ef/v1/dev/dev2/status", b"offline", lambda _m: None)
    t.connect(timeout=5)
    try:
        assert t.subscribe_all(["ef/v1/bundle/x/chunk/1", "ef/v1/bundle/x/chunk/2"])
        assert _until(lambda: t.confirmed() == {"ef/v1/bundle/x/chunk/1", "ef/v1/bundle/x/chunk/2"})
        t.close()  # the link drops; the broker keeps the session
        t.connect(timeout=5)
        assert t.session_present and t.confirmed() == {"ef/v1/bundle/x/chunk/1", "ef/v1/bundle/x/chunk/2"}
        t.unsubscribe_all(["ef/v1/bundle/x/chunk/1"])
        assert t.confirmed() == {"ef/v1/bundle/x/chunk/2"}
        t.close()
        _discard_session(mosquitto.url, "ef-agent-dev2")  # the broker forgets the session meanwhile
        t.connect(timeout=5)
        assert not t.session_present and t.confirmed() == frozenset()
    finally:
        t.disconnect()


@pytest.mark.integration
def test_a_probe_is_answered_behind_the_messages_the_broker_had_queued_and_quiet_when_none_were(
    tmp_path: Path, mosquitto: Any
):
    """What agent.stall relies on: Mosquitto sends a probe's UNSUBACK behind the PUBLISHes it
    queued for the client before it, so a quiet answer means nothing was queued for us."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from protocol.topics import probe_filter

    chunks = [f"ef/v1/bundle/probe-test/chunk/{i}" for i in range(40)]
    host, port = mosquitto.url.removeprefix("mqtt://").rsplit(":", 1)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-test-pub", protocol=mqtt.MQTTv5)
    pub.connect(host, int(port))
    pub.loop_start()
    for topic in chunks:
        pub.publish(topic, bytes(60_000), qos=1, retain=True).wait_for_publish(10)
    (tmp_path / "root.json").write_text("{}")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'device_id = "dev3"\nbroker = "{mosquitto.url}"\nstate_dir = "state"\nroot = "root.json"\n')
    got: list[str] = []
    t = Transport(load(conf, env={}), "ef/v1/dev/dev3/status", b"offline", lambda m: got.append(m.topic))
    t.connect(timeout=5)
    try:
        answers: list[tuple[float, bool] | None] = []

        def answered(probe: int | None) -> tuple[float, bool]:
            assert probe is not None
            answers.clear()
            assert _until(lambda: answers.append(t.probe_answer(probe)) or answers[-1] is not None)
            answer = answers[-1]
            assert answer is not None
            return answer

        sent = time.monotonic()
        at, quiet = answered(t.probe(probe_filter("dev3")))
        assert quiet, "nothing subscribed, nothing queued: the answer is quiet"
        assert sent <= at <= time.monotonic()
        assert t.subscribe_all(["ef/v1/bundle/probe-test/chunk/+"])  # 40 retained chunks queued for us
        _, quiet = answered(t.probe(probe_filter("dev3")))
        assert not quiet, "the retained chunks the broker queued came ahead of the answer"
        assert got and set(got) <= set(chunks)
    finally:
        t.disconnect()
        for topic in chunks:
            pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()


def _discard_session(url: str, client_id: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.connect(host, int(port), clean_start=True)  # session expiry 0: gone when this disconnects
    c.loop_start()
    assert _until(c.is_connected)
    c.disconnect()
    c.loop_stop()
