"""Fixtures for the dashboard tests: a live stack (private mosquitto + the real hub process +
simulated devices speaking real protocol messages over MQTT), a headless Chromium, and a
10,000-device registry for the scale test.

The simulated devices are paho clients, not agent processes: they publish a retained Status
(with a last will), a Telemetry window every ``interval`` seconds (latency sketch, counts and
drift bins on the baseline edges of the bundle they run), and answer each Desired document the
hub publishes with a Report and a new Status, as an agent that installs instantly would. The
desired document is parsed but its signature is not checked (the agent tests prove that part).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from demo.launcher import Fleet
from protocol.device import Health, Inventory
from protocol.messages import BundleInfo, Report, Status, Telemetry, parse_desired_payload
from protocol.signing import Envelope
from protocol.sketch import LatencySketch

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = "dash-admin-token-5f1c9a77e2"
OPERATOR = "dash-operator-token-8b2d4e61"
VIEWER = "dash-viewer-token-3a9c0f12d4"


@dataclass
class SimDevice:
    """A device as the hub sees it: Status / Telemetry / Report over MQTT, instant installs."""

    device: str
    port: int
    board: str = "rpi4"
    tpu: bool = False
    interval: float = 1.0
    latency_s: float = 0.008
    samples: int = 300  # requests per telemetry window (8 at interval 1.0: a device under 10 req/s)
    fail_times: int = 0  # answer this many desired documents with a failed self-test, then install
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # digest -> baseline.json
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # digest -> (name, version)
    active: str | None = None
    desired_seq: int = 0
    _client: mqtt.Client | None = None
    _seq: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def topic(self, kind: str) -> str:
        return f"ef/v1/dev/{self.device}/{kind}"

    def status(self, online: bool = True) -> bytes:
        act = BundleInfo(self.active, *self.names.get(self.active, ("?", "?"))) if self.active else None
        return Status(
            device=self.device,
            online=online,
            ts=int(time.time()),
            agent_version="0.1.0",
            inventory=Inventory(board=self.board, edgetpu=self.tpu, extra={"free_disk_mb": 2048}),
            active=act,
            state="serving" if online else "offline",
            desired_seq=self.desired_seq,
        ).to_bytes()

    def start(self) -> SimDevice:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{self.device}", protocol=mqtt.MQTTv5)
        c.will_set(self.topic("status"), self.status(online=False), qos=1, retain=True)
        c.on_message = self._on_message
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        c.subscribe(self.topic("desired"), qos=1)
        self._client = c
        self._publish("status", self.status(), retain=True)
        self._thread = threading.Thread(target=self._loop, name=f"sim-{self.device}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._client is not None:
            self._publish("status", self.status(online=False), retain=True)
            self._client.disconnect()
            self._client.loop_stop()

    def _publish(self, kind: str, payload: bytes, retain: bool = False) -> None:
        assert self._client is not None
        self._client.publish(self.topic(kind), payload, qos=1, retain=retain)

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            d = parse_desired_payload(Envelope.parse(bytes(msg.payload)).payload)
        except Exception:  # the hub sends only valid documents; anything else is ignored here
            return
        if d.seq <= self.desired_seq:
            return
        self.desired_seq = d.seq
        target = d.bundle.digest if d.bundle is not None and d.action != "idle" else None
        if d.bundle is not None:
            self.names[d.bundle.digest] = (d.bundle.name, d.bundle.version)
        now = int(time.time())
        if self.fail_times > 0 and d.action == "install":
            self.fail_times -= 1
            failed = Report(
                device=self.device,
                seq=self._next_seq(),
                ts=now,
                stage="selftest",
                status="failed",
                reason="selftest_failed",
                desired_seq=d.seq,
                bundle=target,
            )
            self._publish("report", failed.to_bytes())
            return
        self._publish(
            "report",
            Report(
                device=self.device,
                seq=self._next_seq(),
                ts=now,
                stage="download",
                status="progress",
                desired_seq=d.seq,
                bundle=target,
                progress=1.0,
            ).to_bytes(),
        )
        self.active = target
        self._publish(
            "report",
            Report(
                device=self.device,
                seq=self._next_seq(),
                ts=now,
                stage="commit",
                status="ok",
                desired_seq=d.seq,
                bundle=target,
            ).to_bytes(),
        )
        self._publish("status", self.status(), retain=True)

    def _drift(self) -> dict[str, dict[str, list[int]]]:
        base = self.baselines.get(self.active or "")
        if not base:
            return {}
        out: dict[str, dict[str, list[int]]] = {}
        for side in ("inputs", "outputs"):
            for name, spec in (base.get(side) or {}).items():
                ref = spec.get("ref") or []
                total = sum(ref) or 1
                if self.samples < 100:  # a few samples: drawn from the baseline's proportions
                    drawn = random.choices(range(len(ref)), weights=[r + 1e-9 for r in ref], k=self.samples)
                    out.setdefault(side, {})[name] = [drawn.count(i) for i in range(len(ref))]
                    continue
                # the baseline's proportions, nudged so the PSI is small but not zero
                out.setdefault(side, {})[name] = [
                    max(1, round(self.samples * r / total * random.uniform(0.8, 1.2))) for r in ref
                ]
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            sk = LatencySketch()
            for _ in range(self.samples // 5):  # timed inferences, as many as the drift bins hold
                sk.add(self.latency_s * random.uniform(0.8, 1.6), 5)
            for _ in range(self.samples % 5):
                sk.add(self.latency_s * random.uniform(0.8, 1.6))
            now = int(time.time())
            msg = Telemetry(
                device=self.device,
                seq=self._next_seq(),
                window_start=now - int(self.interval) - 1,
                window_end=now,
                bundle=self.active,
                counts={
                    "inferences": self.samples,
                    "errors": 0,
                    "tpu": self.samples if self.tpu else 0,
                    "cpu": 0 if self.tpu else self.samples,
                    "cloud": 0,
                },
                latency=sk.to_dict(),
                drift=self._drift(),
                health=Health(load1=0.4, cpu_temp_c=51.0, mem_available_mb=900),
            )
            self._publish("telemetry", msg.to_bytes())


@dataclass
class Stack:
    fleet: Fleet
    url: str
    port: int
    devices: list[SimDevice]

    def add_device(self, device: str, **kw: Any) -> SimDevice:
        d = SimDevice(device, self.port, **kw).start()
        self.devices.append(d)
        return d


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Mosquitto + ``edgefleet-hub serve`` (SQLite) with admin, operator and viewer tokens."""
    monkeypatch.setenv("EDGEFLEET_HUB_TOKENS", f"operator:{OPERATOR},viewer:{VIEWER}")
    monkeypatch.setenv("EDGEFLEET_HUB_TICK", "0.5")
    f = Fleet(tmp_path / "fleet", token=ADMIN)
    devices: list[SimDevice] = []
    try:
        url = f.start_broker()
        f.init_keys()
        f.start_hub()
        yield Stack(f, f.hub_url, int(url.rsplit(":", 1)[1]), devices)
    finally:
        for d in devices:
            d.stop()
        f.stop_all()


def read_baseline(bundle_dir: Path) -> dict[str, Any]:
    return json.loads((bundle_dir / "baseline.json").read_text())


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
