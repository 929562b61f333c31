"""A small hub stand-in for agent tests: real paho client, real broker, protocol messages only.

It publishes retained chunks and signed desired documents, re-publishes chunks the agent asks
for, acks telemetry and reports (switchable), and records everything the agent sends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import paho.mqtt.client as mqtt

from protocol import planref
from protocol.bundle import ChunkPlan, digest_of, parse_manifest
from protocol.delta import split_archive
from protocol.messages import (
    Ack,
    BundleRef,
    ChannelDesired,
    Desired,
    Report,
    Status,
    Telemetry,
    parse_fetch,
    parse_report,
    parse_status,
    parse_telemetry,
)
from protocol.signing import Envelope, SigningKey
from protocol.topics import Kind, Topic, device_filter
from protocol.view import BundleView


@dataclass
class Published:
    env: Envelope
    archive: bytes
    plan: ChunkPlan
    ref: BundleRef


@dataclass
class FakeHub:
    url: str
    targets_key: SigningKey
    chunk_size: int = 16 * 1024
    auto_ack: bool = True
    serve_fetch: bool = True
    reports: list[Report] = field(default_factory=list)
    telemetry: list[Telemetry] = field(default_factory=list)
    status: dict[str, Status] = field(default_factory=dict)
    fetches: list[Any] = field(default_factory=list)
    chunks: dict[str, list[bytes]] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    plans: dict[str, bytes] = field(default_factory=dict)  # archive -> plan message (protocol.planref)
    mqtt_v5: bool = True

    def __post_init__(self) -> None:
        host, port = self.url.removeprefix("mqtt://").split(":")
        self._lock = threading.Lock()
        self._c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"fakehub-{id(self)}",
            protocol=mqtt.MQTTv5 if self.mqtt_v5 else mqtt.MQTTv311,
        )
        self._c.on_message = self._on_message
        self._c.on_connect = self._on_connect
        self._c.connect(host, int(port))
        self._c.loop_start()
        self.wait(lambda: self._c.is_connected(), 10, "fake hub connected")

    def _on_connect(self, c: mqtt.Client, *a: Any) -> None:
        for kind in (Kind.REPORT, Kind.TELEMETRY, Kind.STATUS, Kind.FETCH):
            c.subscribe(device_filter(kind), qos=1)

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        t = Topic.parse(msg.topic)
        dev = t.device or ""
        with self._lock:
            if t.kind is Kind.REPORT:
                r = parse_report(msg.payload)
                self.reports.append(r)
                if self.auto_ack:
                    c.publish(str(Topic.for_device(Kind.ACK, dev)), Ack("report", (r.seq,)).to_bytes(), qos=1)
            elif t.kind is Kind.TELEMETRY:
                tm = parse_telemetry(msg.payload)
                self.telemetry.append(tm)
                if self.auto_ack:
                    c.publish(str(Topic.for_device(Kind.ACK, dev)), Ack("telemetry", (tm.seq,)).to_bytes(), qos=1)
            elif t.kind is Kind.STATUS and msg.payload:
                self.status[dev] = parse_status(msg.payload)
            elif t.kind is Kind.FETCH:
                req = parse_fetch(msg.payload)
                self.fetches.append(req)
                if self.serve_fetch and not req.missing and req.archive in self.plans:  # the plan again
                    c.publish(str(Topic.plan(req.archive)), self.plans[req.archive], qos=1, retain=True)
                if self.serve_fetch and req.archive in self.chunks:
                    for i in req.missing:
                        if i < len(self.chunks[req.archive]):
                            c.publish(str(Topic.chunk(req.archive, i)), self.chunks[req.archive][i], qos=1, retain=True)

    # publishing ---------------------------------------------------------------------------------
    def publish_bundle(
        self,
        env: Envelope,
        archive: bytes,
        tamper: dict[int, bytes] | None = None,
        skip: set[int] | frozenset[int] = frozenset(),
        view: list[str] | None = None,
    ) -> Published:
        """Publish ``archive``'s chunks; ``view``: also a device-view archive holding these
        artifacts (protocol.view), named in the reference (``tamper``/``skip`` apply to it)."""
        if view is not None:  # packed by hand: a test may leave out what the agent needs
            parts = split_archive(archive)
            full = self.publish_bundle(env, archive)
            vpub = self.publish_bundle(env, b"".join(b for n, b in parts if not n or n in view), tamper, skip)
            bv = BundleView(tuple(n for n, _ in parts[1:] if n in view), vpub.plan)
            return Published(env, archive, full.plan, replace(full.ref, view=bv))
        plan = ChunkPlan.of(archive, self.chunk_size)
        parts = [archive[i : i + self.chunk_size] for i in range(0, len(archive), self.chunk_size)]
        self.chunks[plan.sha256] = parts
        infos = []
        for i, data in enumerate(parts):
            if i in skip:
                continue
            data = (tamper or {}).get(i, data)
            infos.append(self._c.publish(str(Topic.chunk(plan.sha256, i)), data, qos=1, retain=True))
        for info in infos:
            info.wait_for_publish(10)
        m = parse_manifest(env.payload)
        ref = BundleRef(digest_of(env), m.name, m.version, plan, m.requirements)
        return Published(env, archive, plan, ref)

    def publish_plan(self, pub: Published, payload: bytes | None = None) -> Published:
        """The archive's chunk plan, retained on its plan topic, as the hub publishes it for
        agents that read plans by reference; ``payload``: other bytes in its place (a forgery).
        Returns ``pub`` with its reference by hash; a fetch naming no chunk gets the real plan."""
        real = planref.plan_bytes(pub.plan)
        self.plans[pub.plan.sha256] = real
        info = self._c.publish(str(Topic.plan(pub.plan.sha256)), payload or real, qos=1, retain=True)
        info.wait_for_publish(10)
        return replace(pub, ref=pub.ref.by_reference())

    def repair(self, archive: str, indexes: list[int]) -> None:
        """Publish chunks of a published archive again, retained on the bundle's topic, as the
        hub answers some device's fetch request (whoever's filters match receives them)."""
        infos = [
            self._c.publish(str(Topic.chunk(archive, i)), self.chunks[archive][i], qos=1, retain=True) for i in indexes
        ]
        for info in infos:
            info.wait_for_publish(10)

    def desire(
        self,
        device: str,
        pub: Published | None,
        *,
        seq: int | None = None,
        expires_in: int = 3600,
        keys: list[SigningKey] | None = None,
        action: str = "install",
        ref: BundleRef | None = None,
        shadow: Published | None = None,
        shadow_sample: float = 0.0,
        extra: dict[str, Any] | None = None,
        since: int | None = None,
        channels: dict[str, ChannelDesired] | None = None,
    ) -> Desired:
        if seq is None:
            seq = self.seqs.get(device, 0) + 1
        self.seqs[device] = max(seq, self.seqs.get(device, 0))
        now = int(time.time())
        d = Desired(
            device,
            seq,
            now,
            now + expires_in,
            action,
            ref or (pub.ref if pub else None),
            shadow=shadow.ref if shadow else None,
            shadow_sample=shadow_sample,
            extra=dict(extra or {}),
            since=since,
            channels=dict(channels or {}),
        )
        info = self._c.publish(
            str(Topic.for_device(Kind.DESIRED, device)),
            d.seal(keys if keys is not None else [self.targets_key]),
            qos=1,
            retain=True,
        )
        info.wait_for_publish(10)
        return d

    # waiting ------------------------------------------------------------------------------------
    def wait(self, pred: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = pred()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; reports: "
            + "; ".join(f"{r.stage}/{r.status}/{r.reason}" for r in self.reports[-15:])
        )

    def report(self, device: str, stage: str, status: str, bundle: str | None = None, timeout: float = 60) -> Report:
        def find() -> Report | None:
            for r in self.reports:
                if (
                    r.device == device
                    and r.stage == stage
                    and r.status == status
                    and (bundle is None or r.bundle == bundle)
                ):
                    return r
            return None

        return self.wait(find, timeout, f"report {stage}/{status} from {device}")

    def failures(self, device: str) -> list[Report]:
        with self._lock:
            return [r for r in self.reports if r.device == device and r.status == "failed"]

    def close(self) -> None:
        self._c.loop_stop()
        self._c.disconnect()
