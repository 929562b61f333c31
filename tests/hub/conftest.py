"""Fixtures for hub tests: a keys dir, synthetic-but-real bundle directories, a hub wired to
an in-memory publisher (API tests) or to a real broker (bridge tests), and protocol-speaking
fake devices built from paho + :mod:`protocol`."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from demo.launcher import Proc
from hub import keys as hub_keys_mod
from hub.config import HubConfig
from hub.server import Hub, build
from hub.transport import MemoryPublisher
from protocol.bundle import MANIFEST_FILE, Artifact, Manifest, Requirements
from protocol.signing import seal

TOKEN = "test-admin-token-0123456789"
VIEWER = "test-viewer-token-0123456789"
OPERATOR = "test-operator-token-0123456789"
PG_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    hub_keys_mod.init(d)
    return d


def baseline(num_classes: int = 3) -> dict[str, Any]:
    return {
        "schema": 1,
        "samples": 1000,
        "inputs": {"brightness": {"edges": [0.25, 0.5, 0.75], "ref": [250, 250, 250, 250]}},
        "outputs": {
            "top1_class": {
                "edges": [i + 0.5 for i in range(num_classes - 1)],
                "ref": [1000 // num_classes] * num_classes,
            }
        },
        "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 100},
    }


def write_bundle(
    directory: Path,
    name: str = "digits",
    version: str = "1.0.0",
    model_bytes: bytes | None = None,
    requirements: Requirements = Requirements(edgetpu="optional"),
    created: int = 1,
) -> Path:
    """An unsigned bundle directory shaped exactly like the compiler's output."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "model_int8.tflite": model_bytes if model_bytes is not None else os.urandom(3000),
        "labels.txt": b"zero\none\ntwo\n",
        "baseline.json": json.dumps(baseline()).encode(),
        "report.json": json.dumps({"accuracy": {"int8": 0.97}}).encode(),
        "model_card.md": b"# digits\n",
    }
    roles = {
        "model_int8.tflite": "tflite_int8",
        "labels.txt": "labels",
        "baseline.json": "baseline",
        "report.json": "report",
        "model_card.md": "model_card",
    }
    arts = tuple(Artifact.of(n, roles[n], data) for n, data in files.items())
    m = Manifest(
        name, version, created, arts, requirements, {"task": "classification", "num_classes": 3, "labels": "labels.txt"}
    )
    for n, data in files.items():
        (directory / n).write_bytes(data)
    (directory / MANIFEST_FILE).write_bytes(seal("manifest", m.to_dict(), []).to_bytes())
    return directory


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Callable[..., Path]:
    def make(**kw: Any) -> Path:
        return write_bundle(tmp_path / f"bundle-{uuid.uuid4().hex[:8]}", **kw)

    return make


def hub_config(
    tmp_path: Path, keys_dir: Path, db: str | None = None, broker: str = "mqtt://127.0.0.1:1", **kw: Any
) -> HubConfig:
    base = dict(
        db=db or f"sqlite:///{tmp_path / 'hub.db'}",
        broker=broker,
        keys=keys_dir,
        store=tmp_path / "store",
        tokens={TOKEN: "admin", VIEWER: "viewer", OPERATOR: "operator"},
        tick=0.2,
        batch_wait=0.02,
    )
    base.update(kw)
    return HubConfig(**base)


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: skip, and say why
        return f"PostgreSQL at {PG_URL} unreachable: {exc.__class__.__name__}: {str(exc)[:120]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The registry database: a SQLite file, and the machine's PostgreSQL in a throwaway schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    why = _pg_reachable()
    if why:
        pytest.skip(why)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    dsn = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def memhub(tmp_path: Path, keys_dir: Path, db_url: str) -> Iterator[tuple[Hub, MemoryPublisher]]:
    pub = MemoryPublisher()
    hub = build(hub_config(tmp_path, keys_dir, db=db_url), publisher=pub, with_broker=False)
    yield hub, pub
    hub.fleet.engine.dispose()


@pytest.fixture
def client(memhub: tuple[Hub, MemoryPublisher]) -> Iterator[TestClient]:
    hub, _ = memhub
    with TestClient(hub.app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class AgentProcess:
    """``edgefleet-agent run`` as a subprocess (demo.launcher.Proc) with its state under ``d``."""

    d: Path
    proc: Proc

    @classmethod
    def start(cls, d: Path, device_id: str, broker_url: str, keys_dir: Path) -> AgentProcess:
        from ..conftest import REPO

        d.mkdir(parents=True, exist_ok=True)
        (d / "agent.toml").write_text(
            f'device_id = "{device_id}"\nbroker = "{broker_url}"\nstate_dir = "{d / "state"}"\n'
            f'root = "{keys_dir / "root.json"}"\nboard = "rpi4"\nhttp_port = 0\ntelemetry_interval_s = 0.5\n'
        )
        argv = [sys.executable, "-m", "agent", "run", "--config", str(d / "agent.toml")]
        return cls(d, Proc(device_id, argv, d / "log").start(env={"PYTHONPATH": str(REPO)}))

    def port(self) -> int:
        f = self.d / "state" / "http.port"
        return int(wait_for(lambda: f.exists() and f.read_text().strip(), what=f"{self.d.name}'s local API port"))

    def stop(self) -> None:
        self.proc.stop(timeout=15)


@dataclass
class FakeDevice:
    """A device as the hub sees it: paho + protocol messages, no agent code."""

    device: str
    port: int
    received: dict[str, list[bytes]] = field(default_factory=dict)
    client: mqtt.Client | None = None

    def connect(self, subscribe: tuple[str, ...] = ("desired", "ack")) -> FakeDevice:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{self.device}", protocol=mqtt.MQTTv5)

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            self.received.setdefault(msg.topic, []).append(bytes(msg.payload))

        c.on_message = on_message
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        for kind in subscribe:
            c.subscribe(f"ef/v1/dev/{self.device}/{kind}", qos=1)
        self.client = c
        return self

    def send(self, kind: str, payload: bytes, retain: bool = False) -> None:
        assert self.client is not None
        self.client.publish(f"ef/v1/dev/{self.device}/{kind}", payload, qos=1, retain=retain).wait_for_publish(10)

    def got(self, kind: str) -> list[bytes]:
        return self.received.get(f"ef/v1/dev/{self.device}/{kind}", [])

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
