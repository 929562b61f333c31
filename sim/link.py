"""One MQTT connection per simulated device, all driven by one selector loop.

paho-mqtt runs without its network thread here: each client reports its socket through
``on_socket_open`` / ``on_socket_close`` and its wish to write through
``on_socket_register_write`` / ``on_socket_unregister_write``, and :class:`Loop` calls
``loop_read`` / ``loop_write`` when the selector says so (paho's documented external-loop
API). 10,000 connections cost 10,000 sockets and no threads.

A :class:`Link` is what the agent's ``Transport`` is to the daemon: connect (the first
connection of a device starts clean, later ones resume the session: MQTT v5, 24 h expiry),
publish, subscribe (with Retain Handling for filters the session holds), and nothing else; the
device decides when to reconnect. :meth:`Link.cut` drops the TCP connection without a
DISCONNECT (the broker publishes the last will), as a lost radio link would; ``read_rate``
throttles how fast a slow link reads, so the broker's queue and TCP window back up for real.
"""

from __future__ import annotations

import fcntl
import selectors
import socket
import sys
import termios
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

READ_BURST = 8  # messages one readiness event of a socket may read (a slow link: one)
SUBSCRIBE_BATCH = 256  # filters per SUBSCRIBE packet, as agent/transport.py
SESSION_EXPIRY_S = 24 * 3600


class Handler(Protocol):
    def on_connected(self, session_present: bool) -> None: ...

    def on_disconnected(self) -> None: ...

    def on_message(self, topic: str, payload: bytes) -> None: ...


class Loop:
    """A selector over every link's socket; :meth:`poll` does one round of I/O."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()

    def poll(self, timeout: float) -> int:
        events = self.sel.select(timeout)
        for key, mask in events:
            link: Link = key.data
            if mask & selectors.EVENT_READ:
                link.on_readable()
            if mask & selectors.EVENT_WRITE:
                link.on_writable()
        return len(events)

    def close(self) -> None:
        self.sel.close()


class Link:
    def __init__(
        self,
        loop: Loop,
        client_id: str,
        host: str,
        port: int,
        will: tuple[str, bytes],
        handler: Handler,
        keepalive: int = 60,
        connect_timeout: float = 5.0,
    ) -> None:
        self.loop = loop
        self.host, self.port, self.keepalive = host, port, keepalive
        self.handler = handler
        self.connected = False
        self.connection = 0  # successful connections so far
        self.session_present = False
        self.read_rate: float | None = None  # bytes/s this link may read (a slow link); None: no limit
        self.bytes_in = 0  # payload bytes of every message received
        self.messages_in = 0
        self._budget = 0.0
        self._budget_at = time.monotonic()
        self._paused = False
        self._reading = False
        self._cut = False
        self._sock: socket.socket | None = None
        self._events = 0
        self._clean = True
        self.confirmed: set[str] = set()  # filters the broker acknowledged in the current session
        self._asked: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters, until the SUBACK
        self.filters_sent: dict[str, int] = {}  # filters asked for in SUBSCRIBE packets, by what they are for
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        c.will_set(will[0], will[1], qos=1, retain=True)
        c.max_inflight_messages_set(64)
        c.connect_timeout = connect_timeout  # the TCP connect blocks the whole loop this long at most
        c.on_socket_open = self._sock_open
        c.on_socket_close = self._sock_close
        c.on_socket_register_write = self._want_write
        c.on_socket_unregister_write = self._no_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        self._probes: dict[int, int] = {}  # probe (UNSUBSCRIBE) id -> messages received before it left
        self._answers: dict[int, tuple[float, bool]] = {}  # answered probe -> (at, quiet)
        self.client = c

    # selector bookkeeping ---------------------------------------------------------------------
    def _update(self) -> None:
        sock = self._sock
        if sock is None:
            return
        want = (0 if self._paused else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if self.client.want_write() else 0
        )
        if want == self._events:
            return
        if self._events == 0:
            self.loop.sel.register(sock, want, self)
        elif want == 0:
            self.loop.sel.unregister(sock)
        else:
            self.loop.sel.modify(sock, want, self)
        self._events = want

    def _sock_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._sock, self._events, self._cut = sock, 0, False
        self._update()

    def _sock_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        if self._sock is not None and self._events:
            try:
                self.loop.sel.unregister(self._sock)
            except (KeyError, ValueError):
                pass
        self._sock, self._events = None, 0

    def _want_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        if not self._reading:  # on_readable writes and updates once when it is done
            self._update()

    def _no_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        if not self._reading:
            self._update()

    def on_readable(self) -> None:
        if self.read_rate is not None and not self._cut:
            now = time.monotonic()
            self._budget = min(self.read_rate, self._budget + (now - self._budget_at) * self.read_rate)
            self._budget_at = now
            if self._budget <= 0:
                self._paused = True  # resumed by refill()
                self._update()
                return
        before = self.bytes_in
        self._reading = True
        try:
            for _ in range(1 if self.read_rate is not None else READ_BURST):
                got = self.messages_in
                self.client.loop_read()  # one packet a call
                if self.messages_in == got or self._sock is None:
                    break
            if self._sock is not None and self.client.want_write():
                # the acknowledgements (and whatever the handler published) leave now, not a
                # loop round later: the broker sends a device its next chunk only after the
                # PUBACK of one before it (max_inflight_messages)
                self.client.loop_write()
        finally:
            self._reading = False
        if self.read_rate is not None:
            self._budget -= self.bytes_in - before
        self._update()

    def refill(self) -> None:
        """Let a paused slow link read again (called from the fleet's timer)."""
        if self._paused:
            self._paused = False
            self._update()

    def on_writable(self) -> None:
        self.client.loop_write()
        self._update()

    def misc(self) -> None:
        """Keepalive (PINGREQ) and the ping timeout: call every few seconds."""
        if self._sock is not None:
            self.client.loop_misc()
            self._update()

    # paho callbacks ---------------------------------------------------------------------------
    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            return
        self.connected = True
        self.connection += 1
        self._clean = False
        self.session_present = bool(getattr(flags, "session_present", False))
        self._asked.clear()  # unanswered on the old link: not known to the session
        if not self.session_present:
            self.confirmed.clear()
        self.handler.on_connected(self.session_present)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any = None) -> None:
        was = self.connected
        self.connected = False
        if was:
            self.handler.on_disconnected()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any = None) -> None:
        asked = self._asked.pop(mid, [])  # one thread: the SUBACK is read after subscribe() recorded it
        self.confirmed.update(f for f, code in zip(asked, codes, strict=False) if not code.is_failure)

    def _on_unsubscribe(self, _c: mqtt.Client, _u: Any, mid: int, *_: Any) -> None:
        before = self._probes.pop(mid, None)  # one thread: the UNSUBACK is read after probe() recorded it
        if before is not None:
            self._answers[mid] = (time.monotonic(), self.messages_in == before)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        self.bytes_in += len(payload)
        self.messages_in += 1
        self.handler.on_message(msg.topic, payload)

    # what a device uses -------------------------------------------------------------------------
    def state(self) -> str:
        """Where this link's bytes are, for a device's trace: unread in the socket, waiting in
        paho to be written, and whether the loop watches the socket for reading / writing."""
        sock = self._sock
        if sock is None:
            return "no socket"
        unread = bytearray(4)
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, unread)
        except OSError:
            return "socket closed"
        r = "r" if self._events & selectors.EVENT_READ else "-"
        w = "w" if self._events & selectors.EVENT_WRITE else "-"
        return (
            f"unread {int.from_bytes(unread, sys.byteorder)} B, {len(self.client._out_packet)} packet(s) to write, "
            f"watched {r}{w}, {self.messages_in} messages in"
        )

    @property
    def busy(self) -> bool:
        """A TCP connection exists (connecting or connected)."""
        return self._sock is not None

    def connect(self) -> bool:
        """Start one connection attempt (TCP connect + CONNECT); CONNACK arrives through the loop.
        False when the TCP connection failed."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect(
                self.host, self.port, keepalive=self.keepalive, clean_start=self._clean, properties=props
            )
        except OSError:
            return False
        return True

    def cut(self) -> None:
        """Lose the link: the TCP connection ends without a DISCONNECT (the will fires)."""
        sock = self._sock
        if sock is None:
            return
        self._paused = False
        self._cut = True  # read the end of the connection now, whatever a slow link's budget
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._update()

    def close(self) -> None:
        """A clean DISCONNECT (no will)."""
        if self._sock is not None:
            self.client.disconnect()
            try:
                self.client.loop_write()
            except OSError:
                pass
        sock = self._sock
        if sock is not None:
            self._sock_close(self.client, None, sock)
            try:
                sock.close()
            except OSError:
                pass
        self.connected = False

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        if not self.connected:
            return False
        return self.client.publish(topic, payload, qos=qos, retain=retain).rc == mqtt.MQTT_ERR_SUCCESS

    def subscribe(self, filters: list[str], only_new: bool = False) -> bool:
        if not self.connected:
            return False
        rh = SubscribeOptions.RETAIN_SEND_IF_NEW_SUB if only_new else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
        for i in range(0, len(filters), SUBSCRIBE_BATCH):
            batch = [(f, SubscribeOptions(qos=1, retainHandling=rh)) for f in filters[i : i + SUBSCRIBE_BATCH]]
            rc, mid = self.client.subscribe(batch)
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                return False
            self._asked[mid] = [f for f, _ in batch]
            for f, _ in batch:
                what = "chunk" if "/chunk/" in f else f.rsplit("/", 1)[-1]
                self.filters_sent[what] = self.filters_sent.get(what, 0) + 1
        return True

    def probe(self, never_held: str) -> int | None:
        """The agent's probe (agent.transport.Transport.probe): an UNSUBSCRIBE of a filter never
        held, answered behind whatever the broker queued for this client."""
        if not self.connected:
            return None
        rc, mid = self.client.unsubscribe(never_held)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return None
        if len(self._probes) > 64:  # lost with an old connection
            self._probes.clear()
            self._answers.clear()
        self._probes[mid] = self.messages_in
        return mid

    def probe_answer(self, probe: int) -> tuple[float, bool] | None:
        """``(answered at, quiet)`` once answered (quiet: no message arrived in between)."""
        return self._answers.pop(probe, None)

    def unsubscribe(self, filters: list[str]) -> None:
        self.confirmed.difference_update(filters)
        if self.connected:
            for i in range(0, len(filters), SUBSCRIBE_BATCH):
                self.client.unsubscribe(filters[i : i + SUBSCRIBE_BATCH])


def connector(loop: Loop, host: str, port: int) -> Callable[[str, tuple[str, bytes], Handler], Link]:
    """A factory of links to one broker, for the fleet."""

    def make(client_id: str, will: tuple[str, bytes], handler: Handler) -> Link:
        return Link(loop, client_id, host, port, will, handler)

    return make
