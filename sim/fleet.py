"""N simulated devices in one process: one MQTT connection each, one selector loop, one thread.

:meth:`SimFleet.step` is one turn of the loop: socket I/O for every ready connection, then (a
few times a second) the devices' timers (telemetry windows, repair requests, resends, status,
simulated inference), connection pacing and faults. Whoever owns the fleet (the CLI, a bench,
a test) calls :meth:`run_until` / :meth:`run_for`; nothing here starts a thread.

Connections: devices connect at ``connect_per_s`` at start (a burst of 10,000 SYNs overflows a
listener's accept queue); a link that drops by itself is reconnected after 0.5-1 s (the
daemon's first backoff step, jittered); a link cut on purpose (:meth:`take_offline`, the
``offline_every_s`` fault, churn) stays down for its offline period, then resumes its session.
"""

from __future__ import annotations

import random
import resource
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.signing import load_root_unverified

from .archives import Archives
from .config import Inference, SimConfig
from .device import SimDevice
from .errors import SimError
from .link import Link, Loop

TICK_S = 0.25
MISC_S = 5.0


def raise_fd_limit(need: int) -> int:
    """Raise this process's open-file limit towards ``need`` (up to the hard limit); return it.
    Refuses (SimError naming both) when the hard limit is below ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < need:
        raise SimError(f"{need} open files needed, the hard limit (ulimit -Hn) is {hard}")
    return soft


@dataclass
class Totals:
    devices: int
    connected: int
    chunk_bytes: int
    duplicate_bytes: int
    fetch_requests: int
    committed: int
    plan_requests: int = 0
    filters_subscribed: dict[str, int] = field(default_factory=dict)  # filters the devices subscribed to, by kind
    reports_sent: int = 0  # install reports the devices made
    probes: int = 0  # quiet downloads' round trips to the broker (agent.stall)
    resent: int = 0  # reports and windows sent again because the hub had not acked them


class SimFleet:
    def __init__(
        self,
        cfg: SimConfig,
        inference: Callable[[int, str], Inference] | None = None,
        seed: int = 0,
    ) -> None:
        try:
            root = load_root_unverified(cfg.root.read_bytes())
        except OSError as exc:
            raise SimError(f"trust root {str(cfg.root)!r}: {exc.strerror}") from None
        raise_fd_limit(cfg.devices + 256)
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.loop = Loop()
        self.archives = Archives()
        self.devices: list[SimDevice] = []
        self.by_id: dict[str, SimDevice] = {}
        for i, dev_id in enumerate(cfg.device_ids()):
            inf = inference(i, dev_id) if inference else cfg.inference
            d = SimDevice(dev_id, cfg, root, self.archives, random.Random(self.rng.random()), inf)
            link = self._link(f"ef-agent-{dev_id}", d)
            if cfg.faults.slow_link_bps:
                link.read_rate = cfg.faults.slow_link_bps
            d.link = link
            self.devices.append(d)
            self.by_id[dev_id] = d
        self._to_connect: deque[SimDevice] = deque(self.devices)
        self._never: set[str] = {d.id for d in self.devices}  # not asked to connect yet
        self._down_until: dict[str, float] = {}  # devices kept offline on purpose, until then
        self._retry_at: dict[str, float] = {}  # devices whose link dropped by itself: reconnect then
        self._last_tick = time.monotonic()
        self._last_misc = self._last_tick
        self._last_connect = self._last_tick
        self._next_fault = {d.id: self._fault_after(self.cfg.faults.offline_every_s) for d in self.devices}
        self._next_churn = {d.id: self._fault_after(self.cfg.faults.churn_every_s) for d in self.devices}
        self.reconnects = 0
        self.connect_failures = 0  # TCP connects refused or not accepted within connect_timeout_s

    def _link(self, client_id: str, d: SimDevice) -> Link:
        c = self.cfg
        return Link(
            self.loop, client_id, c.broker_host, c.broker_port, d.will(), d, connect_timeout=c.connect_timeout_s
        )

    def _fault_after(self, mean: float) -> float:
        return time.monotonic() + self.rng.expovariate(1.0 / mean) if mean > 0 else float("inf")

    # the loop ------------------------------------------------------------------------------------
    def step(self, timeout: float = 0.05) -> None:
        self.loop.poll(timeout)
        now = time.monotonic()
        if now - self._last_tick >= TICK_S:
            dt, self._last_tick = now - self._last_tick, now
            self._connect_some(now)
            self._faults(now)
            for d in self.devices:
                d.tick(now, dt)
            if now - self._last_misc >= MISC_S:
                self._last_misc = now
                for d in self.devices:
                    assert d.link is not None
                    d.link.misc()
                    d.link.refill()
            elif self.cfg.faults.slow_link_bps:
                for d in self.devices:
                    assert d.link is not None
                    d.link.refill()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()

    def run_until(self, done: Callable[[], bool], timeout: float, check_every: float = 0.25) -> bool:
        end = time.monotonic() + timeout
        next_check = 0.0
        while time.monotonic() < end:
            self.step()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + check_every
                if done():
                    return True
        return done()

    def _connect_some(self, now: float) -> None:
        """New devices (at ``connect_per_s``), devices back from a planned outage and devices
        whose link dropped. The first connect that fails or times out in a step ends the step's
        connecting: the broker is not accepting, and each attempt blocks the loop (every device's
        I/O) up to ``connect_timeout_s``; the rest try again next step."""
        budget = max(1, int(self.cfg.connect_per_s * (now - self._last_connect)))
        self._last_connect = now
        while self._to_connect and budget > 0:
            d = self._to_connect.popleft()
            budget -= 1
            if not self._connect(d, now):
                return
        for dev_id, at in list(self._down_until.items()):
            if now >= at:
                del self._down_until[dev_id]
                if not self._connect(self.by_id[dev_id], now):
                    return
        for d in self.devices:
            link = d.link
            assert link is not None
            if link.busy or d.id in self._down_until or d.id in self._never:
                continue
            retry = self._retry_at.get(d.id)
            if retry is None:
                self._retry_at[d.id] = now + self.rng.uniform(0.5, 1.0)
            elif now >= retry and not self._connect(d, now):
                return

    def _connect(self, d: SimDevice, now: float) -> bool:
        assert d.link is not None
        self._never.discard(d.id)
        self._retry_at.pop(d.id, None)
        if d.link.connection:
            self.reconnects += 1
        if not d.link.connect():
            self.connect_failures += 1
            self._retry_at[d.id] = now + self.rng.uniform(0.5, 1.0)
            return False
        return True

    def _faults(self, now: float) -> None:
        f = self.cfg.faults
        if f.offline_every_s <= 0 and f.churn_every_s <= 0:
            return
        for d in self.devices:
            if now >= self._next_fault[d.id]:
                self._next_fault[d.id] = now + f.offline_s + self.rng.expovariate(1.0 / f.offline_every_s)
                self.take_offline(d.id, f.offline_s)
            if now >= self._next_churn[d.id]:
                self._next_churn[d.id] = self._fault_after(f.churn_every_s)
                self.churn(d.id)

    # faults and control ------------------------------------------------------------------------------
    def take_offline(self, device_id: str, seconds: float) -> None:
        """Lose the device's link (the broker sees no DISCONNECT); it reconnects after ``seconds``."""
        d = self.by_id[device_id]
        assert d.link is not None
        d.link.cut()
        self._down_until[device_id] = time.monotonic() + seconds

    def churn(self, device_id: str) -> None:
        """Replace the device by a fresh one (same id, nothing installed); it connects clean."""
        d = self.by_id[device_id]
        assert d.link is not None
        d.link.cut()
        d.wipe()
        fresh = self._link(d.link.client._client_id.decode(), d)
        fresh.read_rate = d.link.read_rate
        d.link = fresh
        self._down_until[device_id] = time.monotonic() + 1.0

    def stop(self) -> None:
        """Disconnect every device cleanly (DISCONNECT; the broker does not publish their wills)."""
        for d in self.devices:
            if d.link is not None:
                d.link.close()
        self.loop.close()

    def stop_telemetry(self) -> None:
        """No device opens a new telemetry window from now on (their backlogs are still resent
        until acked): for counting every window sent against what the hub stored."""
        for d in self.devices:
            d.telemetry_stopped = True

    # figures ---------------------------------------------------------------------------------------
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.link is not None and d.link.connected)

    def unacked(self) -> int:
        """Messages (reports, telemetry) sent and not yet acknowledged by the hub, fleet-wide."""
        return sum(len(d.unacked) for d in self.devices)

    def installed(self, digest: str) -> int:
        return sum(1 for d in self.devices if d.active == digest)

    def totals(self) -> Totals:
        c = [d.counters for d in self.devices]
        return Totals(
            len(self.devices),
            self.connected(),
            sum(x.chunk_bytes for x in c),
            sum(x.duplicate_bytes for x in c),
            sum(x.fetch_requests for x in c),
            sum(1 for x in c if x.committed_at is not None),
            sum(x.plan_requests for x in c),
            dict(sum((Counter(d.link.filters_sent) for d in self.devices if d.link is not None), Counter())),
            sum(x.reports_sent for x in c),
            sum(x.probes for x in c),
            sum(x.resent for x in c),
        )
