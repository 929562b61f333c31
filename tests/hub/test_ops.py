"""/healthz and /readyz say what is down: liveness stays 200 while the process answers,
readiness is 503 naming the database or the broker session, 200 when both are up (or the hub
runs without a broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from hub.api.routes.ops import health
from hub.server import Hub, build
from hub.transport import MemoryPublisher

from ..conftest import Broker, free_port
from .conftest import hub_config, wait_for


@pytest.mark.parametrize(
    ("db_error", "broker", "status", "ready", "down"),
    [
        (None, True, "ok", True, []),
        (None, None, "ok", True, []),
        (None, False, "degraded", False, ["broker session not connected"]),
        ("OperationalError", True, "degraded", False, ["database unreachable: OperationalError"]),
        (
            "OperationalError",
            False,
            "degraded",
            False,
            ["database unreachable: OperationalError", "broker session not connected"],
        ),
    ],
)
def test_the_verdict_names_every_dependency_that_is_down(db_error, broker, status, ready, down):
    h = health(db_error, broker)
    assert (h.status, h.ready, h.down) == (status, ready, down)
    assert h.db == ("ok" if db_error is None else "unreachable")
    assert h.broker == {True: "connected", False: "disconnected", None: "none"}[broker]
    assert h.mqtt is broker


def test_a_hub_without_a_broker_says_so_and_is_ready(client: TestClient):
    for path in ("/healthz", "/readyz"):
        res = client.get(path, headers={"Authorization": ""})
        assert res.status_code == 200, res.text
        assert res.json() == {
            "status": "ok",
            "ready": True,
            "db": "ok",
            "broker": "none",
            "mqtt": None,
            "down": [],
        }


def test_an_unreachable_database_is_503_on_readyz_and_stays_live(
    client: TestClient, memhub: tuple[Hub, MemoryPublisher]
):
    hub, _ = memhub
    registry = hub.fleet.engine
    # a PostgreSQL server that is not there: nothing listens on the port
    hub.fleet.engine = create_engine(f"postgresql+psycopg://edgefleet@127.0.0.1:{free_port()}/hub")
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["down"] == ["database unreachable: OperationalError"]
        live = client.get("/healthz")
        assert live.status_code == 200
        assert live.json()["status"] == "degraded" and live.json()["db"] == "unreachable"
    finally:
        hub.fleet.engine.dispose()
        hub.fleet.engine = registry  # the fixture closes its connections


@pytest.fixture
def bridged(tmp_path: Path, keys_dir: Path, mosquitto: Broker) -> Iterator[tuple[Hub, TestClient]]:
    hub = build(hub_config(tmp_path, keys_dir, broker=mosquitto.url))
    hub.start()
    try:
        with TestClient(hub.app) as c:
            yield hub, c
    finally:
        hub.stop()
        hub.fleet.engine.dispose()


@pytest.mark.integration
def test_readyz_follows_the_broker_session_down_and_up(bridged: tuple[Hub, TestClient], mosquitto: Broker):
    hub, c = bridged
    assert hub.bridge is not None and hub.bridge.connected.wait(10)
    up = c.get("/readyz")
    assert up.status_code == 200 and up.json()["broker"] == "connected" and up.json()["mqtt"] is True

    mosquitto.stop()
    down = wait_for(lambda: (r := c.get("/readyz")).status_code == 503 and r, what="/readyz 503 with the broker down")
    assert down.json()["down"] == ["broker session not connected"]
    assert down.json()["broker"] == "disconnected" and down.json()["db"] == "ok"
    live = c.get("/healthz")
    assert live.status_code == 200 and live.json()["status"] == "degraded" and live.json()["mqtt"] is False

    mosquitto.start()
    wait_for(lambda: c.get("/readyz").status_code == 200, timeout=30, what="/readyz 200 once the broker is back")


@pytest.mark.integration
def test_a_hub_whose_broker_never_answered_is_not_ready(tmp_path: Path, keys_dir: Path):
    hub = build(hub_config(tmp_path, keys_dir, broker=f"mqtt://127.0.0.1:{free_port()}"))
    hub.start()
    try:
        with TestClient(hub.app) as c:
            res = c.get("/readyz")
            assert res.status_code == 503 and res.json()["down"] == ["broker session not connected"]
            assert c.get("/healthz").status_code == 200
    finally:
        hub.stop()
        hub.fleet.engine.dispose()
