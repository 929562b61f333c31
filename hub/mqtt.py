"""The MQTT bridge: paho-mqtt 2.x (callback API v2, MQTT v5), network loop in paho's thread.

``on_message`` never blocks: it only puts ``(topic, payload)`` in a bounded inbox
(``hub.inbox``). One worker thread drains it in batches (up to ``batch_max`` messages or
``batch_wait`` seconds) and hands each batch to :class:`hub.ingest.Ingest`, which commits it
in one transaction and returns the acks / chunk repairs to publish. If the inbox is full the
message is counted and dropped: agents resend telemetry and reports until acked, and status is retained.

Reconnects: paho's own loop reconnects with backoff (1..30 s); on every (re)connect the bridge
subscribes again, the retained status of every device is delivered anew, and ``on_connected``
runs in its own thread (the hub republishes the root there, and every desired document unless
the broker kept the hub's session: ``session_present``).

Session: the client id is stable for a hub (its host, database and port), with a persistent
session (MQTT v5 ``clean_start=False`` and a session expiry of ``SESSION_EXPIRY_S``; 3.1.1
``clean_session=False``), so what devices send while the hub is away is queued by the broker
and arrives when it is back, not only with the agents' next resend.

Replicas (``shared_group``): every subscription is ``$share/{group}/...``, so each device
message goes to one connected member of the group. Such a hub's session ends with its
connection (clean start, session expiry 0): Mosquitto (2.0) keeps handing a shared
subscription's messages round-robin to a member whose session outlives it, dead or not, so a
killed replica with a 1 h session would swallow its share of the traffic for an hour. Without
it the broker rebalances as soon as the dead replica's connection closes (a vanished host: after
1.5 keepalives). What the dead one had received but not stored is never acked; the agents send
it again. Retained messages are not delivered on shared subscriptions (MQTT 5, 4.8.2): a replica
learns a device's status from the device's next one (agents send one after every telemetry
window), not from the retained copy when it subscribes.

Publishing: paho keeps every unacknowledged QoS 1 message in its own queue, keyed by a 16-bit
message id; past 65,535 of them the ids collide and paho refuses the message ("Message queue
full"), which a hub that lost its connection reaches in seconds with 10,000 devices (a desired
document each, an ack per telemetry window). The bridge caps paho's queue at ``max_queued`` and
keeps what does not fit in its own queue, in order (a retained document never overtakes the
one it replaces), handed to paho as paho's queue drains: nothing the hub publishes is dropped
unless that queue too passes ``OVERFLOW_MAX`` (counted, logged).

Protocol: MQTT v5 first. A broker that refuses v5 (the demo's embedded amqtt broker and NATS's
MQTT listener speak only 3.1.1) makes the bridge rebuild its client once with MQTT 3.1.1; nothing
else changes, except for a replica: shared subscriptions are MQTT 5's, and NATS grants a
``$share/...`` subscription but delivers nothing on it, so a ``shared_group`` hub on a 3.1.1
broker refuses to subscribe (``refused`` says why, the hub never becomes ready) rather than
ingest nothing while looking healthy. One ingest hub per 3.1.1 broker (ADR 0013).
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol.topics import Kind, device_filter

from .config import BrokerTls, BrokerUrl
from .inbox import Inbox
from .metrics import HubMetrics
from .transport import Outgoing

log = logging.getLogger(__name__)

SUBSCRIPTIONS = [
    device_filter(k) for k in (Kind.STATUS, Kind.REPORT, Kind.TELEMETRY, Kind.FETCH, Kind.RESULT, Kind.SAMPLE)
]
SESSION_EXPIRY_S = 3600
V5_CONNACK_WAIT_S = 5.0
MAX_PACKET_BYTES = 1024 * 1024  # what the hub takes; device messages are <= 256 KiB
MAX_QUEUED = 50_000  # paho's queue of unacknowledged messages (its message ids collide past 65,535)
OVERFLOW_MAX = 2_000_000  # the bridge's own queue behind it (see the module doc)


class Bridge:
    def __init__(
        self,
        broker: BrokerUrl,
        metrics: HubMetrics,
        batch_max: int = 500,
        batch_wait: float = 0.05,
        queue_max: int = 100_000,
        client_id: str | None = None,
        shared_group: str | None = None,
        tls: BrokerTls | None = None,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.broker = broker
        self.max_queued = max_queued
        self._overflow: deque[Outgoing] = deque()  # what paho's queue had no room for, in order
        self._overflow_lock = threading.Lock()
        self._overflow_wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self.tls = tls or BrokerTls()
        self.metrics = metrics
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self.shared_group = shared_group
        self.persistent = not shared_group  # a replica's session must end with it: see the module doc
        self.inbox: Inbox[tuple[str, bytes]] = Inbox(queue_max, batch_max)  # received, for the worker
        self.handler: Callable[[Sequence[tuple[str, bytes]]], None] | None = None
        self.connected = threading.Event()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._client_id = client_id or f"edgefleet-hub-{secrets.token_hex(4)}"
        self.on_connected: Callable[[], None] | None = None
        self.disconnected_at: float | None = None  # when an established connection last dropped
        # the broker's CONNACK said it still held this hub's session: it did not restart without
        # its state, so the retained desired documents are there too (hub.server._on_connected)
        self.session_present = False
        self._connacked = False
        self._sub_mid = -1
        self.refused: str | None = None  # why this bridge will not subscribe on this broker
        self.client = self._make_client(mqtt.MQTTv5)

    def _make_client(self, protocol: MQTTProtocolVersion) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=protocol,
            clean_session=None if protocol == mqtt.MQTTv5 else not self.persistent,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set(
                ca_certs=str(self.tls.ca) if self.tls.ca else None,
                certfile=str(self.tls.cert) if self.tls.cert else None,
                keyfile=str(self.tls.key) if self.tls.key else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(1, 30)
        client.max_queued_messages_set(self.max_queued)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _fall_back_to_v311(self, old: mqtt.Client) -> None:
        """Runs in its own thread: paho's loop can't be stopped from its own callback."""
        old.disconnect()
        old.loop_stop()
        if self._stopping:
            return
        self.client = self._make_client(mqtt.MQTTv311)
        self._connect()
        self.client.loop_start()

    def _give_up(self, client: mqtt.Client) -> None:
        """Runs in its own thread: paho's loop can't be stopped from its own callback."""
        client.disconnect()
        client.loop_stop()

    def _connect(self) -> None:
        if self.client.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S if self.persistent else 0
            props.MaximumPacketSize = MAX_PACKET_BYTES
            self.client.connect_async(
                self.broker.host, self.broker.port, keepalive=30, clean_start=not self.persistent, properties=props
            )
            threading.Thread(target=self._watch_v5_connect, args=(self.client,), daemon=True).start()
        else:
            self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)

    def _watch_v5_connect(self, client: mqtt.Client) -> None:
        """A 3.1.1-only broker may neither refuse nor answer a v5 CONNECT that carries session
        properties (amqtt keeps the socket open, silent). Connected at TCP level but no CONNACK
        after ``V5_CONNACK_WAIT_S``: switch to 3.1.1. A broker that is simply down has no socket."""
        deadline = time.monotonic() + 60
        open_since: float | None = None
        while time.monotonic() < deadline:
            if self._connacked or self._stopping or client is not self.client:
                return
            now = time.monotonic()
            if client.socket() is None:
                open_since = None
            elif open_since is None:
                open_since = now
            elif now - open_since >= V5_CONNACK_WAIT_S:
                log.info(
                    "broker %s:%d did not answer an MQTT v5 connect in %.0f s; switching to 3.1.1",
                    self.broker.host,
                    self.broker.port,
                    V5_CONNACK_WAIT_S,
                )
                self._fall_back_to_v311(client)
                return
            time.sleep(0.1)

    # ---- paho callbacks (network thread: no blocking) --------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _u: object, _flags: object, rc: ReasonCode, _props: Properties | None
    ) -> None:
        if rc.is_failure:
            if (
                client is self.client
                and client.protocol == mqtt.MQTTv5
                and rc.getName() == "Unsupported protocol version"
            ):
                log.info("broker %s:%d does not speak MQTT v5; switching to 3.1.1", self.broker.host, self.broker.port)
                threading.Thread(target=self._fall_back_to_v311, args=(client,), daemon=True).start()
                return
            log.error("broker %s:%d refused the hub: %s", self.broker.host, self.broker.port, rc)
            return
        self._connacked = True
        self.session_present = bool(getattr(_flags, "session_present", False))
        if self.shared_group and client.protocol != mqtt.MQTTv5:
            self.refused = (
                f"broker {self.broker.host}:{self.broker.port} speaks MQTT 3.1.1 only; shared subscriptions "
                f"(shared group {self.shared_group!r}) need MQTT v5: run one hub without a shared group on it"
            )
            log.error("%s", self.refused)
            threading.Thread(target=self._give_up, args=(client,), daemon=True).start()
            return
        subs = [(f"$share/{self.shared_group}/{t}" if self.shared_group else t, 1) for t in SUBSCRIPTIONS]
        _rc, mid = client.subscribe(subs)
        self._sub_mid = -1 if mid is None else mid
        log.info("connected to broker %s:%d as %s", self.broker.host, self.broker.port, self._client_id)

    def _on_subscribe(
        self, client: mqtt.Client, _u: object, mid: int, codes: Sequence[ReasonCode], _props: Properties | None
    ) -> None:
        """Ready only once the broker confirmed the subscriptions: until then a device's
        message could pass the hub by (``connected`` means the hub will receive)."""
        if client is not self.client or mid != self._sub_mid:
            return
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            log.error("broker refused the hub's subscriptions: %s", ", ".join(refused))
        self.connected.set()
        self.metrics.mqtt_connected.set(1)
        if self.on_connected is not None:
            threading.Thread(target=self._run_on_connected, name="hub-on-connect", daemon=True).start()

    def _run_on_connected(self) -> None:
        try:
            assert self.on_connected is not None
            self.on_connected()
        except Exception:  # noqa: BLE001 - the next connect tries again
            log.exception("on-connect work failed")

    def _on_disconnect(
        self, client: mqtt.Client, _u: object, _flags: object, rc: ReasonCode, _props: Properties | None
    ) -> None:
        if client is not self.client:
            return  # the v5 client being replaced by the 3.1.1 one
        if self.connected.is_set():
            self.disconnected_at = time.time()
        self.connected.clear()
        self.metrics.mqtt_connected.set(0)
        if not self._stopping:
            log.warning("disconnected from broker (%s); paho reconnects", rc)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not self.inbox.put((msg.topic, bytes(msg.payload))):
            self.metrics.queue_dropped.inc()

    # ---- worker ----------------------------------------------------------------------------
    def _drain(self) -> None:
        assert self.handler is not None
        while (batch := self.inbox.take(self.batch_wait)) is not None:
            self.metrics.queue_depth.set(len(self.inbox))
            try:
                self.handler(batch)
            except Exception:  # the worker must outlive any one bad batch
                log.exception("ingest batch of %d failed", len(batch))

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, handler: Callable[[Sequence[tuple[str, bytes]]], None]) -> None:
        self.handler = handler
        self._worker = threading.Thread(target=self._drain, name="hub-ingest", daemon=True)
        self._worker.start()
        self._flusher = threading.Thread(target=self._flush_overflow, name="hub-publish", daemon=True)
        self._flusher.start()
        self._connect()
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        self.inbox.stop()
        if self._worker is not None:
            self._worker.join(timeout=10)

    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Queue messages with paho (thread-safe); paho sends them once connected. What paho's
        queue has no room for waits in the bridge's, in order (module doc)."""
        with self._overflow_lock:
            if self._overflow:  # behind what already waits: one topic's messages keep their order
                self._hold(messages)
                return
            for i, m in enumerate(messages):
                if not self._hand(m):
                    self._hold(messages[i:])
                    return

    def _hand(self, m: Outgoing) -> bool:
        """Give one message to paho; False when paho's queue is full (it was not taken)."""
        info = self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            return False
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("publish to %s failed: %s", m.topic, mqtt.error_string(info.rc))
        return True

    def _hold(self, messages: Sequence[Outgoing]) -> None:
        room = OVERFLOW_MAX - len(self._overflow)
        if len(messages) > room:
            lost = messages[max(0, room) :]
            self.metrics.publish_dropped.inc(len(lost))
            log.error(
                "%d messages to publish dropped (first to %s): %d already wait for the broker (OVERFLOW_MAX)",
                len(lost),
                lost[0].topic,
                len(self._overflow),
            )
            messages = messages[: max(0, room)]
        if not self._overflow and messages:
            log.warning(
                "the broker has not acknowledged %d messages; holding the next ones until it does", self.max_queued
            )
        self._overflow.extend(messages)
        self.metrics.publish_waiting.set(len(self._overflow))
        self._overflow_wake.set()

    def _flush_overflow(self) -> None:
        """Hands held messages to paho as its queue drains (its own thread)."""
        while not self._stopping:
            self._overflow_wake.wait(0.5)
            with self._overflow_lock:
                while self._overflow and self._hand(self._overflow[0]):
                    self._overflow.popleft()
                waiting = len(self._overflow)
                if not waiting:
                    self._overflow_wake.clear()
                self.metrics.publish_waiting.set(waiting)
            if waiting:  # paho's queue is full: give the broker time to acknowledge some
                time.sleep(0.05)

    @property
    def waiting(self) -> int:
        """Messages held by the bridge, not yet handed to paho."""
        return len(self._overflow)

    def backlog(self) -> int:
        """Messages received and not yet handled, plus those waiting to go out."""
        return len(self.inbox) + len(self._overflow)
