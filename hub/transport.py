"""What the hub sends over MQTT, and the publisher interface the rest of the hub talks to.

The real publisher is :class:`hub.mqtt.Bridge`; :class:`MemoryPublisher` records messages
for tests and for running the API without a broker.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1
    kind: str = ""


class Publisher(Protocol):
    def publish(self, messages: Sequence[Outgoing]) -> None: ...

    def backlog(self) -> int:
        """Messages the hub holds and has not dealt with yet: received and not yet handled,
        or to be published and not yet handed to the MQTT client."""
        ...


class MemoryPublisher:
    """Keeps every published message (and the retained ones by topic) in memory."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.retained: dict[str, bytes] = {}
        self.behind = 0  # what :meth:`backlog` answers (tests set it)
        self._lock = threading.Lock()

    def backlog(self) -> int:
        return self.behind

    def publish(self, messages: Sequence[Outgoing]) -> None:
        with self._lock:
            for m in messages:
                self.sent.append(m)
                if m.retain:
                    self.retained[m.topic] = m.payload

    def topics(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [m.topic for m in self.sent if kind is None or m.kind == kind]
