"""``edgefleet-hub housekeep``: the hub's housekeeping (:func:`hub.ticker.housekeep`: the alert
scan, telemetry rollups, pruning) in a process of its own, beside hubs started with
``--housekeeping apart``.

Why a process: at 10,000 devices the housekeeping was a fifth of the serving process's CPU, in
the one interpreter its ingest worker needs (docs/scale.md); apart, it runs on another core. It
reads telemetry and devices and writes alerts, rollups and deletions on the same database and
bundle store; it publishes nothing (a publish would be a bug: it raises) and serves only its
own ``/metrics`` (its alert counters) on ``--port``. One housekeeper per database is enough; two
are safe (a rollup's unique key refuses the second writer's rows, docs/scale.md) but do the work
twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import migrations, ticker
from .config import HubConfig
from .db import make_engine
from .errors import HubError
from .fleet import Fleet
from .keys import HubKeys
from .metrics import HubMetrics
from .store import BundleStore
from .transport import Outgoing

log = logging.getLogger(__name__)


class PublishesNothing:
    """The housekeeper's publisher: housekeeping sends no MQTT message, so one is a bug."""

    def publish(self, messages: Sequence[Outgoing]) -> None:
        topics = ", ".join(m.topic for m in messages[:3])
        raise HubError(f"the housekeeper publishes nothing, yet was asked to publish {len(messages)} ({topics})")

    def backlog(self) -> int:
        return 0


class _Only(Collector):
    def __init__(self, registry: CollectorRegistry, names: frozenset[str]) -> None:
        self.registry, self.names = registry, names

    def collect(self) -> Iterator[Metric]:
        return (m for m in self.registry.collect() if m.name in self.names)


def exposed(metrics: HubMetrics) -> CollectorRegistry:
    """What the housekeeper's ``/metrics`` shows: the alert counters it raises. Not the rest of
    a hub's registry: its zeros (``edgefleet_hub_mqtt_connected 0``, empty queues) would read as a
    disconnected hub on the fleet dashboard."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Only(metrics.registry, frozenset({"edgefleet_hub_alerts"})))
    return registry


def build(config: HubConfig) -> Fleet:
    """The fleet the housekeeping needs: the database (migrated, as a hub replica does at start),
    keys, store; no broker, no API."""
    engine = make_engine(config.db, create=False)
    migrations.upgrade(engine)  # whoever starts first migrates (on PostgreSQL under a lock, as replicas do)
    return Fleet(
        config,
        engine,
        HubKeys.load(config.keys),
        BundleStore(config.store, config.chunk_size),
        PublishesNothing(),
        HubMetrics(),
    )


def run(fleet: Fleet, stop: threading.Event, every: float = ticker.ALERT_SCAN_S) -> int:
    """Housekeep every ``every`` seconds (or twice what a round took, when longer: the database
    is shared with ingest) until ``stop``; returns the rounds run."""
    rounds = 0
    wait = 0.0
    while not stop.wait(wait):
        t0 = time.monotonic()
        ticker.housekeep(fleet)
        rounds += 1
        took = time.monotonic() - t0
        log.debug("housekeeping round %d took %.2f s", rounds, took)
        wait = ticker.next_wait(every, took)
    return rounds
