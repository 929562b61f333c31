"""Wire the running hub together: config -> engine, keys, store, bridge, fleet, app, ticker.

``build`` is used by ``edgefleet-hub serve`` and by tests (with a MemoryPublisher instead of
a broker). The ticker calls ``ticker.tick(fleet)`` every ``config.tick`` seconds (rollout timeouts,
soak, offline detection).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from . import bundles, deltas, desired, enrollment, migrations, rotation, ticker
from .api import create_app
from .config import HubConfig
from .db import make_engine
from .fleet import Fleet
from .ingest import Ingest
from .keys import HubKeys
from .metrics import HubMetrics
from .mqtt import Bridge
from .store import BundleStore
from .transport import MemoryPublisher, Publisher
from .web import dashboard

log = logging.getLogger(__name__)

GC_YOUNG = 10_000  # container allocations between young collections (CPython's default: 700)
SWITCH_INTERVAL_S = 0.0005  # a busy thread holds the interpreter this long when another wants it (CPython: 5 ms)


def settle_gc() -> None:
    """Once the hub is built and started (``edgefleet-hub serve``; the benches' hubs, as deployed):
    what exists now (modules, FastAPI, SQLAlchemy's mappers and compiled statements) lives as long
    as the process, so it leaves the cyclic collector's full passes, which walked it again and
    again under load; and young collections run every 10,000 allocations instead of every 700
    (a batch of 500 telemetry windows allocates ~100 per window). Measured on ``Ingest.handle``
    (10,000 windows in batches of 500): ~21 us of a ~125 us window in the collector before,
    ~2-4 us after (docs/scale.md). Not done by :func:`build`: tests build many hubs in one process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def settle_threads() -> None:
    """Once the hub is started (``edgefleet-hub serve``; the benches' hubs, as deployed): a thread
    that wants the interpreter back gets it within 0.5 ms instead of CPython's 5 ms. paho's
    network thread gives the interpreter up on every socket call, several per message (the
    command byte, the length, the body, the PUBACK), and waits to get it back each time: while
    any other thread of the hub runs Python without pause (a rollout POST signing 10,000
    documents, a fleet page, the ticker's runs) the hub stored ~190 messages a second, against
    ~2,000 at 0.5 ms (``python -m bench ingest --busy``; ~6,000 with nothing busy), and the
    devices' reports and windows waited at the broker (docs/scale.md, ADR 0022). Not done by
    :func:`build`: tests build many hubs in one process."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


@dataclass
class Hub:
    config: HubConfig
    fleet: Fleet
    ingest: Ingest
    app: FastAPI
    bridge: Bridge | None
    _stop: threading.Event
    preparer: deltas.Preparer | None = None
    _ticker: threading.Thread | None = None
    _connects: int = 0  # broker connections so far: a republish stops when a newer one starts

    def start(self) -> None:
        if self.bridge is not None:
            # every (re)connect: the broker may have restarted without its retained messages
            self.bridge.on_connected = self._on_connected
            self.bridge.start(self.ingest.handle)
        else:
            self.fleet.publish([rotation.root_message(self.fleet)])
        enrollment.write_broker_auth(self.fleet)
        if self.preparer is not None:
            self.preparer.start()
        self._ticker = threading.Thread(target=self._tick_loop, name="hub-ticker", daemon=True)
        self._ticker.start()

    def _on_connected(self) -> None:
        if self.bridge is not None and self.bridge.disconnected_at is not None:
            down, self.bridge.disconnected_at = self.bridge.disconnected_at, None
            self.fleet.note_recovery(int(down), self.fleet.clock())
        if rotation.stale(self.fleet):  # keys rotated while the hub was down
            self.fleet.publish(rotation.resign_all(self.fleet))
        self.fleet.publish([rotation.root_message(self.fleet)])
        self.fleet.publish(bundles.plan_messages(self.fleet))  # agents reading chunk plans by reference
        if self.bridge is not None and self.bridge.session_present:
            # the broker kept our session, so it did not lose its retained messages either: sending
            # every document again (10,000 at scale) on each reconnect of a loaded hub is a storm;
            # a device that missed one still gets it (desired.republish_pending, every tick)
            log.info("the broker kept the hub's session: its retained desired documents stand")
            return
        self._connects += 1  # connects come seconds apart (paho backs off): no lock
        mine = self._connects
        desired.republish(self.fleet, lambda: mine == self._connects and not self._stop.is_set())

    def _tick_loop(self) -> None:
        wait = self.config.tick
        while not self._stop.wait(wait):
            t0 = time.monotonic()
            try:
                ticker.tick(self.fleet)
            except Exception:
                log.exception("rollout tick failed")
            took = time.monotonic() - t0
            wait = ticker.next_wait(self.config.tick, took)
            if wait > self.config.tick:
                log.info("the tick took %.2f s: the next in %.2f s, so ingest keeps the rest of the time", took, wait)

    def stop(self) -> None:
        self._stop.set()
        if self.bridge is not None:
            self.bridge.stop()
            if self.ingest.followups.held:  # what a busy worker held for the rollouts, told before we go
                try:
                    self.ingest.followups.run()
                except Exception:
                    log.exception("rollout follow-up at stop failed")
        if self._ticker is not None:
            self._ticker.join(timeout=10)
        if self.preparer is not None:
            self.preparer.stop()


def hub_client_id(config: HubConfig) -> str:
    """Stable across restarts of one hub (so its broker session persists), distinct for two
    hubs on one host (another database or port).

    A replica (``shared_group``) shares its database with the others, and a second connection
    under one client id takes the first one's place at the broker: the replicas would throw each
    other off in turn. Its session ends with its connection anyway (``hub.mqtt``), so its id
    only has to be unique: the listen address and the process id are added. (A listener with
    ``use_username_as_clientid``, as ``--mqtt-auth-dir`` writes, replaces any id by the broker
    username: replicas behind it need a broker user each.)"""
    key = f"{config.db}|{config.port}" + (f"|{config.host}" if config.shared_group else "")
    cid = f"edgefleet-hub-{socket.gethostname()[:40]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return f"{cid}-{os.getpid()}" if config.shared_group else cid


def build(config: HubConfig, publisher: Publisher | None = None, with_broker: bool = True, **engine_kwargs: Any) -> Hub:
    keys = HubKeys.load(config.keys)
    store = BundleStore(config.store, config.chunk_size)
    metrics = HubMetrics()
    engine = make_engine(config.db, create=False, **engine_kwargs)
    migrations.upgrade(engine)  # the registry schema is whatever Alembic says it is
    bridge = (
        Bridge(
            config.broker_url,
            metrics,
            config.batch_max,
            config.batch_wait,
            client_id=hub_client_id(config),
            shared_group=config.shared_group or None,
            tls=config.broker_tls,
        )
        if with_broker
        else None
    )
    pub: Publisher = publisher or bridge or MemoryPublisher()
    fleet = Fleet(config, engine, keys, store, pub, metrics)
    app = create_app(fleet, bridge.connected if bridge else None)
    dashboard.install(app)
    ingest = Ingest(fleet)
    if bridge is not None:  # more messages waiting: the rollouts hear of several batches at once (hub.followups)
        ingest.followups.behind = lambda: len(bridge.inbox) > 0
    preparer = deltas.Preparer(fleet)
    fleet.prepare_deltas, fleet.preparing_deltas = preparer.submit, preparer.preparing
    return Hub(config, fleet, ingest, app, bridge, threading.Event(), preparer=preparer)
