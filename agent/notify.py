"""systemd's service notification protocol (``sd_notify``) over the stdlib, no libsystemd.

The unit (``firmware_images/edgefleet-agent.service``) is ``Type=notify`` with ``WatchdogSec=``:
systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket path, or ``@name`` in the abstract
namespace) and ``WATCHDOG_USEC`` in the environment; :mod:`agent.config` reads them into the
config. The daemon then says:

* ``READY=1`` once the local API listens (systemd holds dependents back until then);
* ``WATCHDOG=1`` from its main loop, at most every half watchdog interval: a main loop that
  stops turning (a deadlock, a hung handler) is killed and restarted by systemd;
* ``STOPPING=1`` when it begins a clean shutdown.

Without ``NOTIFY_SOCKET`` (run by hand, in tests, under another supervisor) every call is a
no-op. A send that fails is logged once and never stops the agent: notification is advice to
the supervisor, not part of the agent's work.
"""

from __future__ import annotations

import logging
import socket
import time

log = logging.getLogger(__name__)


def socket_address(path: str) -> str | bytes:
    """``NOTIFY_SOCKET`` -> what ``socket.sendto`` takes (``@name`` is the abstract namespace)."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


class Notifier:
    """Sends ``sd_notify`` messages to ``socket_path`` (None: does nothing)."""

    def __init__(self, socket_path: str | None, watchdog_s: float | None = None) -> None:
        self.socket_path = socket_path
        self.watchdog_s = watchdog_s
        self._next_ping = 0.0
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def send(self, message: str) -> bool:
        """Send one datagram (``KEY=value`` lines); True when it was sent."""
        if self.socket_path is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message.encode(), socket_address(self.socket_path))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed (%s); systemd will not hear from the agent", self.socket_path, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self, now: float | None = None) -> bool:
        """Ping the watchdog if half its interval has passed since the last ping (call it often)."""
        if self.socket_path is None or self.watchdog_s is None:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next_ping:
            return False
        self._next_ping = now + self.watchdog_s / 2
        return self.send("WATCHDOG=1")
