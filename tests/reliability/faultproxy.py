"""A TCP relay on loopback that makes a bad link between agents and the broker: a bandwidth
cap, a delay on every chunk of bytes, and "dark" periods in which nothing moves (connections
stay open and silent, as when a cellular link stalls) or every connection is reset.

Used where network namespaces are unavailable: on this machine a veth pair passes no ARP, and
the kernel has no netem module (tests/reliability/test_network_faults.py says so)."""

from __future__ import annotations

import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int, rate_bps: float = 2e6 / 8, delay_s: float = 0.03) -> None:
        self.target_port = target_port
        self.rate_bps = rate_bps
        self.delay_s = delay_s
        self.dark = threading.Event()
        self.resets = 0
        self.bytes = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(64)
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the target is down: so is the link (the client sees it closed)
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(16384)
                if not data:
                    break
                while self.dark.is_set() and not self._stop.is_set():
                    time.sleep(0.05)  # the link is down: bytes wait, nothing is lost
                time.sleep(self.delay_s + len(data) / self.rate_bps)
                dst.sendall(data)
                self.bytes += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def reset_all(self) -> None:
        """Every open connection cut at once (a NAT timeout, a cell handover)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.resets += 1

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        self.reset_all()
