"""Thin MQTT shell over paho-mqtt 2.x: connect once, pump the network, publish, subscribe.

No reconnect logic here: the daemon owns reconnect and backoff. Incoming messages and
connection changes are handed to a callback that must not block (the daemon queues them).
MQTT v5 is tried first; if the broker refuses it (or drops the connection before CONNACK),
the next attempt uses v3.1.1, and the choice sticks once a connection succeeds.

Sessions: the first connection of a process starts clean (a new process does not know which
subscriptions an old session holds, and re-subscribing over them would replay every retained
chunk they match: ADR 0007); later connections resume the session (v5: 24 h expiry), and
:attr:`Transport.session_present` says whether the broker kept it. Under v5 the CONNECT declares
a Maximum Packet Size (``max_packet_bytes``), so the broker never sends the agent more.

Brokers: ``broker`` may list a cluster's nodes. A failed attempt moves the next one to the next
node (round-robin; the daemon's backoff paces the attempts), a dropped connection first tries the
node it was on. The session lives in the cluster (NATS: JetStream; EMQX: its session store), so
it resumes on whichever node takes the agent (ADR 0013).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .config import AgentConfig
from .errors import ConnectError

log = logging.getLogger(__name__)

SUBSCRIBE_BATCH = 256  # topic filters per SUBSCRIBE packet (~25 KiB for chunk topics)


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool


class Transport:
    def __init__(
        self, cfg: AgentConfig, will_topic: str, will_payload: bytes, on_message: Callable[[Incoming], None]
    ) -> None:
        self.cfg = cfg
        self._will = (will_topic, will_payload)
        self._on_message = on_message
        self._v5 = True
        self._v5_confirmed = False
        self._client: mqtt.Client | None = None
        self._connack: tuple[bool, str] | None = None
        self._connected = threading.Event()
        self.protocol = "v5"
        self.connection = 0  # counts successful connections (subscriptions belong to one)
        self.session_present = False  # CONNACK of the current connection: the broker kept our session
        # filters the broker acknowledged (SUBACK) in the current session (agent.download rule 2)
        self._confirmed: set[str] = set()
        self._asked: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters, until the SUBACK
        self._early: dict[int, list[ReasonCode]] = {}  # a SUBACK that beat the caller's bookkeeping
        self._subs_lock = threading.Lock()
        self._received = 0  # messages received, counted in paho's thread (a probe compares two counts)
        self._probes: dict[int, int] = {}  # probe (UNSUBSCRIBE) id -> messages received before it left
        self._answers: dict[int, tuple[float, int]] = {}  # UNSUBACK id -> (at, messages received by then)
        self._clean = True  # until the first connection of this process succeeds
        self.brokers = cfg.brokers or (cfg.broker,)
        self.broker = self.brokers[0]  # the node of the current (or next) attempt

    def _build(self) -> mqtt.Client:
        proto = mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ef-agent-{self.cfg.device_id}",
            protocol=proto,
            clean_session=None if self._v5 else self._clean,
            reconnect_on_failure=False,
        )
        props = None
        if self._v5:
            props = Properties(PacketTypes.WILLMESSAGE)
        c.will_set(self._will[0], self._will[1], qos=1, retain=True, properties=props)
        if self.cfg.username is not None:
            c.username_pw_set(self.cfg.username, self.cfg.password)
        if self.broker.tls or self.cfg.ca_file:
            c.tls_set(
                ca_certs=str(self.cfg.ca_file) if self.cfg.ca_file else None,
                certfile=str(self.cfg.cert_file) if self.cfg.cert_file else None,
                keyfile=str(self.cfg.key_file) if self.cfg.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        c.max_inflight_messages_set(64)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_subscribe = self._handle_subscribe
        c.on_unsubscribe = self._handle_unsubscribe
        return c

    # paho callbacks (network thread) -------------------------------------------------------
    def _handle_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, properties: object = None
    ) -> None:
        failed = getattr(rc, "is_failure", False)
        if not failed:
            # before ``connected`` is set: a subscription made from then on belongs to this connection
            self.session_present = bool(getattr(flags, "session_present", False))
            with self._subs_lock:  # a SUBSCRIBE unanswered on the old link is not known to the session
                self._asked.clear()
                self._early.clear()
                if not self.session_present:
                    self._confirmed.clear()
            self.connection += 1
            self._connected.set()
        self._connack = (not failed, str(rc))

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, properties: object = None
    ) -> None:
        self._connected.clear()

    def _handle_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, codes: list[ReasonCode], properties: Properties
    ) -> None:
        """A subscription the broker refused (SUBACK 0x80: NATS when JetStream could not create the
        consumer in time) would silently miss its messages for the whole connection: drop the
        connection instead, so the daemon reconnects and asks for every subscription again."""
        with self._subs_lock:
            asked = self._asked.pop(mid, None)
            if asked is None:
                self._early[mid] = list(codes)
            else:
                self._confirm(asked, codes)
        refused = [str(c) for c in codes if c.is_failure]
        if refused and client is self._client:
            log.warning("broker refused %d subscription(s) (%s); reconnecting", len(refused), refused[0])
            sock = client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    def _handle_unsubscribe(self, client: mqtt.Client, userdata: object, mid: int, *_: object) -> None:
        """A probe's answer (agent.stall): when, and how many messages had arrived by then."""
        with self._subs_lock:
            if len(self._answers) > 256:  # answers to plain unsubscribes: nobody asks for them
                self._answers = {m: a for m, a in self._answers.items() if m in self._probes}
            self._answers[mid] = (time.monotonic(), self._received)

    def _handle_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._received += 1
        self._on_message(Incoming(msg.topic, bytes(msg.payload), bool(msg.retain)))

    # used by the daemon ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, timeout: float = 10.0) -> None:
        """One attempt: TCP connect, CONNECT, wait for CONNACK. Raises ConnectError (and the
        next attempt goes to the next of ``brokers``).

        On success paho's network thread runs until the connection drops (it does not
        reconnect by itself: ``reconnect_on_failure=False``); the daemon then calls this again.
        """
        v5 = self._v5
        try:
            self._attempt(timeout)
        except ConnectError:
            if self._v5 == v5:  # a switch of protocol retries this node; anything else: the next one
                self.broker = self.brokers[(self.brokers.index(self.broker) + 1) % len(self.brokers)]
            raise

    def _attempt(self, timeout: float) -> None:
        self.close()
        self._client = self._build()
        self._connack = None
        self._connected.clear()
        self.protocol = "v5" if self._v5 else "v3.1.1"
        b = self.broker
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 24 * 3600
            props.MaximumPacketSize = self.cfg.max_packet_bytes
        try:
            kwargs = {"clean_start": self._clean, "properties": props} if self._v5 else {}
            self._client.connect(b.host, b.port, keepalive=self.cfg.keepalive_s, **kwargs)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"broker {b}: {exc}") from None
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        while self._connack is None and time.monotonic() < deadline:
            if not self._thread_alive():
                break
            time.sleep(0.02)
        if self._connack is None:
            self.close()
            self._maybe_downgrade()
            raise ConnectError(f"broker {b}: connection closed or no CONNACK within {timeout}s")
        ok, why = self._connack
        if not ok:
            self.close()
            if "protocol" in why.lower():
                self._maybe_downgrade()
            raise ConnectError(f"broker {b} refused the connection: {why}")
        self._v5_confirmed = True
        self._clean = False
        log.info(
            "connected to %s with MQTT %s (%s)",
            b,
            self.protocol,
            "session resumed" if self.session_present else "new session",
        )

    def _thread_alive(self) -> bool:
        t = getattr(self._client, "_thread", None)
        return t is not None and t.is_alive()

    def _maybe_downgrade(self) -> None:
        if self._v5 and not self._v5_confirmed:
            log.info("broker did not accept MQTT v5; next attempt uses v3.1.1")
            self._v5 = False
        elif not self._v5 and not self._v5_confirmed:
            self._v5 = True  # alternate until one works

    def alive(self) -> bool:
        """True while connected and paho's network thread runs."""
        return self._connected.is_set() and self._thread_alive()

    def close(self) -> None:
        """Stop the network thread of the current client (no DISCONNECT: the will stays armed)."""
        c = self._client
        if c is None:
            return
        try:
            c.loop_stop()
        except Exception:  # never let cleanup of a dead client stop a reconnect
            pass
        sock = c.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self._connected.clear()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, wait_s: float = 0.0) -> bool:
        """Queue one message; with ``wait_s``, wait up to that long for it to be sent (QoS 1:
        acknowledged), e.g. an answer that must leave before the process exits."""
        c = self._client
        if c is None or not self.connected:
            return False
        info = c.publish(topic, payload, qos=qos, retain=retain)
        if wait_s > 0 and info.rc == mqtt.MQTT_ERR_SUCCESS:
            try:
                info.wait_for_publish(wait_s)
            except (RuntimeError, ValueError):
                return False
            return info.is_published()
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _confirm(self, filters: list[str], codes: list[ReasonCode]) -> None:
        self._confirmed.update(f for f, code in zip(filters, codes, strict=False) if not code.is_failure)

    def _sent(self, mid: int, filters: list[str]) -> None:
        with self._subs_lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._asked[mid] = filters
            else:
                self._confirm(filters, early)

    def confirmed(self) -> frozenset[str]:
        """The filters the broker acknowledged in the current session: a reconnect that finds the
        session kept need not subscribe to them again."""
        with self._subs_lock:
            return frozenset(self._confirmed)

    def subscribe(self, topic_filter: str, qos: int = 1) -> bool:
        c = self._client
        if c is None or not self.connected:
            return False
        rc, mid = c.subscribe(topic_filter, qos)
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._sent(mid, [topic_filter])
        return rc == mqtt.MQTT_ERR_SUCCESS

    @property
    def retain_handling(self) -> bool:
        """Whether a subscription can ask for retained messages only when it is new (MQTT v5)."""
        return self.protocol == "v5"

    def subscribe_all(self, filters: list[str], qos: int = 1, only_new: bool = False) -> bool:
        """Subscribe to many filters in a few SUBSCRIBE packets.

        ``only_new`` (MQTT v5 Retain Handling 1): the broker replays retained messages only for
        filters this session does not hold yet; ignored under v3.1.1.
        """
        c = self._client
        if c is None or not self.connected:
            return False
        for i in range(0, len(filters), SUBSCRIBE_BATCH):
            batch = filters[i : i + SUBSCRIBE_BATCH]
            if self.retain_handling:
                rh = SubscribeOptions.RETAIN_SEND_IF_NEW_SUB if only_new else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
                rc, mid = c.subscribe([(f, SubscribeOptions(qos=qos, retainHandling=rh)) for f in batch])
            else:
                rc, mid = c.subscribe([(f, qos) for f in batch])
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                return False
            self._sent(mid, batch)
        return True

    def unsubscribe(self, topic_filter: str) -> None:
        self.unsubscribe_all([topic_filter])

    def probe(self, never_held: str) -> int | None:
        """Send the broker an UNSUBSCRIBE of a filter this client never holds (agent.stall); its
        answer comes behind everything the broker queued for us. Returns the probe's id for
        :meth:`probe_answer`, or None when not connected."""
        c = self._client
        if c is None or not self.connected:
            return None
        before = self._received  # a message counted before the send only makes the probe less quiet
        rc, mid = c.unsubscribe(never_held)  # not under _subs_lock: paho may call back meanwhile
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return None
        with self._subs_lock:
            if len(self._probes) > 64:  # answers lost with an old connection
                self._probes.clear()
            self._probes[mid] = before
        return mid

    def probe_answer(self, probe: int) -> tuple[float, bool] | None:
        """``(answered at, quiet)`` for an answered probe (monotonic time; quiet: no message
        arrived between the probe and its answer), None while unanswered."""
        with self._subs_lock:
            answer = self._answers.get(probe)
            before = self._probes.get(probe)
            if answer is None or before is None:
                return None
            del self._answers[probe], self._probes[probe]
            return answer[0], answer[1] == before

    def unsubscribe_all(self, filters: list[str]) -> None:
        c = self._client
        with self._subs_lock:
            self._confirmed.difference_update(filters)
        if c is not None and self.connected:
            for i in range(0, len(filters), SUBSCRIBE_BATCH):
                c.unsubscribe(filters[i : i + SUBSCRIBE_BATCH])

    def disconnect(self, final_topic: str | None = None, final_payload: bytes | None = None) -> None:
        """Publish a last retained message (e.g. offline status) and disconnect cleanly."""
        c = self._client
        if c is None:
            return
        if final_topic is not None and final_payload is not None and self.alive():
            info = c.publish(final_topic, final_payload, qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        try:
            c.disconnect()
        except Exception:
            pass
        try:
            c.loop_stop()
        except Exception:
            pass
        self._connected.clear()
