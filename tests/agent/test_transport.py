"""The transport's broker list: a node that fails an attempt hands the next one to the next node."""

from __future__ import annotations

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
