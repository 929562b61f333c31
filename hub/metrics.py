"""Every Prometheus metric the hub exports, declared here and nowhere else.

One :class:`HubMetrics` per hub process, in its own registry (tests build several hubs in one
interpreter without colliding). Served on ``GET /metrics``; ``promtool check metrics`` is clean
on it (tests/hub/test_metrics.py).

**Fleet series** (:class:`FleetSeries`): what devices report in telemetry windows, counted when
the hub stores a window (a window replayed from a device's offline backlog counts when it
arrives). Latency is a real histogram, ``edgefleet_fleet_latency_seconds``, whose buckets are
the window sketches' own (:data:`protocol.sketch.HISTOGRAM_BOUNDS_S`), so
``histogram_quantile(0.95, sum by (le, model) (rate(edgefleet_fleet_latency_seconds_bucket[10m])))``
is the fleet's p95 of the last 10 minutes. Counters beside it: inferences by path (tpu, cpu,
cloud), errors, cloud fallbacks. Labels, all bounded:

* ``model``, ``version``: the bundle's name and version from the registry (a digest the registry
  does not know is ``unknown``/``unknown``: a device cannot mint series). At every scrape the
  series of bundles no device runs any more are dropped (:meth:`FleetSeries.retain`), so the set
  is the bundles active somewhere (plus ``unknown``);
* ``cohort``: the 0-based rollout cohort through which the device got this bundle, while that
  rollout is active (``"0"``..``"9"``, then ``"10+"``), else ``"none"``.

Each hub replica counts the windows it stored: sum over instances.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from protocol.sketch import HISTOGRAM_BOUNDS_S, LatencySketch, merge_all

UNKNOWN = "unknown"
NO_COHORT = "none"
PATHS = ("tpu", "cpu", "cloud")
MAX_COHORT_LABEL = 10


def cohort_label(cohort: int | None) -> str:
    """The ``cohort`` label of a window: bounded whatever a policy says."""
    if cohort is None or cohort < 0:
        return NO_COHORT
    return str(cohort) if cohort < MAX_COHORT_LABEL else f"{MAX_COHORT_LABEL}+"


Key = tuple[str, str, str]  # model, version, cohort


class _Series:
    __slots__ = ("buckets", "sum", "paths", "errors")

    def __init__(self) -> None:
        self.buckets = [0] * (len(HISTOGRAM_BOUNDS_S) + 1)
        self.sum = 0.0
        self.paths = dict.fromkeys(PATHS, 0)
        self.errors = 0


class FleetSeries(Collector):
    """Cumulative fleet counters per (model, version, cohort), fed one stored window at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[Key, _Series] = {}

    def add(self, key: Key, sketch: LatencySketch, counts: dict[str, int]) -> None:
        """Fold one stored telemetry window in (``counts`` as the window's: inferences, errors,
        tpu, cpu, cloud)."""
        self._fold(key, sketch.histogram(), sketch.total, counts)

    def _fold(self, key: Key, hist: list[int], total: float, counts: dict[str, int]) -> None:
        with self._lock:
            s = self._series.get(key)
            if s is None:
                s = self._series[key] = _Series()
            for i, c in enumerate(hist):
                s.buckets[i] += c
            s.sum += total
            for p in PATHS:
                s.paths[p] += max(0, int(counts.get(p, 0)))
            s.errors += max(0, int(counts.get("errors", 0)))

    def add_batch(self, windows: Iterable[tuple[Key, LatencySketch, dict[str, int]]]) -> None:
        """A batch's stored windows, folded once per key: a batch's windows mostly share one, and
        every series value is a sum (sketches merge exactly), so this equals adding them one by
        one at a fraction of the cost (it was a tenth of the ingest worker's time)."""
        by_key: dict[Key, tuple[list[LatencySketch], dict[str, int]]] = {}
        for key, sketch, counts in windows:
            sketches, summed = by_key.setdefault(key, ([], {}))
            sketches.append(sketch)
            for k, v in counts.items():
                summed[k] = summed.get(k, 0) + max(0, int(v))
        for key, (sketches, summed) in by_key.items():
            merged = merge_all(LatencySketch(), sketches)
            self._fold(key, merged.histogram(), merged.total, summed)

    def retain(self, bundles: Iterable[tuple[str, str]]) -> None:
        """Drop the series of every (model, version) not in ``bundles``."""
        keep = set(bundles)
        with self._lock:
            for key in [k for k in self._series if (k[0], k[1]) not in keep]:
                del self._series[key]

    def keys(self) -> list[Key]:
        with self._lock:
            return sorted(self._series)

    def describe(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        return iter(self._families({}))

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        with self._lock:
            snapshot = {k: (list(s.buckets), s.sum, dict(s.paths), s.errors) for k, s in self._series.items()}
        return iter(self._families(snapshot))

    @staticmethod
    def _families(
        snapshot: dict[Key, tuple[list[int], float, dict[str, int], int]],
    ) -> list[HistogramMetricFamily | CounterMetricFamily]:
        labels = ["model", "version", "cohort"]
        latency = HistogramMetricFamily(
            "edgefleet_fleet_latency_seconds",
            "Inference latency reported by devices in telemetry windows, by bundle and rollout cohort",
            labels=labels,
        )
        inferences = CounterMetricFamily(
            "edgefleet_fleet_inferences",
            "Successful inferences reported by devices, by bundle, cohort and path (tpu, cpu, cloud)",
            labels=[*labels, "path"],
        )
        errors = CounterMetricFamily(
            "edgefleet_fleet_errors", "Inference errors reported by devices, by bundle and cohort", labels=labels
        )
        fallbacks = CounterMetricFamily(
            "edgefleet_fleet_fallbacks",
            "Inferences devices answered through the cloud fallback, by bundle and cohort",
            labels=labels,
        )
        for key, (buckets, total, paths, errs) in sorted(snapshot.items()):
            cumulative, running = [], 0
            for bound, c in zip((*map(str, HISTOGRAM_BOUNDS_S), "+Inf"), buckets, strict=True):
                running += c
                cumulative.append((bound, float(running)))
            latency.add_metric(list(key), cumulative, total)
            for p in PATHS:
                inferences.add_metric([*key, p], paths[p])
            errors.add_metric(list(key), errs)
            fallbacks.add_metric(list(key), paths["cloud"])
        return [latency, inferences, errors, fallbacks]


INSTALL_RESULTS = ("installed", "failed", "rolled_back")
ALERT_KINDS = ("offline", "latency_regression", "drift", "rollout_gate")  # hub.alerts.KINDS + the rollout gate


def install_result(stage: str, status: str) -> str | None:
    """What a device's report says of an install, or None for progress and other stages."""
    if status == "failed":
        return "failed"
    if status == "ok" and stage == "commit":
        return "installed"
    if status == "ok" and stage == "rollback":
        return "rolled_back"
    return None


class HubMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter(
            "edgefleet_hub_messages_total",
            "MQTT messages handled by kind and outcome (stored, duplicate, malformed, rejected, error)",
            ["kind", "outcome"],
            registry=r,
        )
        self.queue_dropped = Counter(
            "edgefleet_hub_ingest_dropped_total", "Messages dropped because the ingest queue was full", registry=r
        )
        self.queue_depth = Gauge(
            "edgefleet_hub_ingest_queue_depth", "Messages waiting for the ingest worker", registry=r
        )
        self.batch_size = Histogram(
            "edgefleet_hub_ingest_batch_size",
            "Messages per ingest transaction",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "edgefleet_hub_ingest_batch_seconds", "Time to parse and commit one ingest batch", registry=r
        )
        self.published = Counter(
            "edgefleet_hub_published_total", "Messages the hub published by kind", ["kind"], registry=r
        )
        self.publish_waiting = Gauge(
            "edgefleet_hub_publish_waiting",
            "Messages to publish held by the hub because the broker has not acknowledged the earlier ones",
            registry=r,
        )
        self.gate_windows_held = Gauge(
            "edgefleet_hub_gate_windows_held",
            "Telemetry windows this hub process holds for its running rollouts' gates (hub.evidence.MAX_HELD at most)",
            registry=r,
        )
        self.publish_dropped = Counter(
            "edgefleet_hub_publish_dropped_total",
            "Messages to publish dropped because the hub already held OVERFLOW_MAX for the broker",
            registry=r,
        )
        self.devices = Gauge(
            "edgefleet_hub_devices", "Devices known to the hub by online state", ["online"], registry=r
        )
        self.rollouts = Gauge(
            "edgefleet_hub_rollouts",
            "Rollouts by phase (running, paused, awaiting_approval, completed, aborted, rolled_back, cancelled)",
            ["phase"],
            registry=r,
        )
        self.rollout_info = Gauge(
            "edgefleet_hub_rollout_info",
            "1 per active rollout: its bundle and the version most of its devices ran before (none if new)",
            ["rollout", "phase", "model", "version", "previous_version"],
            registry=r,
        )
        self.rollout_devices = Gauge(
            "edgefleet_hub_rollout_devices", "Devices per state in active rollouts", ["rollout", "state"], registry=r
        )
        self.fleet = FleetSeries()
        r.register(self.fleet)
        self.installs = Counter(
            "edgefleet_fleet_installs_total",
            "Install results devices reported (installed, failed, rolled_back), by reason code",
            ["result", "reason"],
            registry=r,
        )
        self.alerts = Counter("edgefleet_hub_alerts_total", "Alerts raised by kind", ["kind"], registry=r)
        for kind in ALERT_KINDS:  # present from the start: increase() sees the first alert of a kind
            self.alerts.labels(kind)
        self.http_errors = Counter(
            "edgefleet_hub_http_errors_total", "4xx/5xx API responses by status", ["status"], registry=r
        )
        self.fleet_devices_on_bundle = Gauge(
            "edgefleet_fleet_devices_on_bundle", "Devices running each bundle", ["model", "version"], registry=r
        )
        self.alerts_open = Gauge("edgefleet_hub_alerts_open", "Unresolved alerts by kind", ["kind"], registry=r)
        self.rollups_behind = Gauge(
            "edgefleet_hub_rollups_behind_seconds",
            "Age of the oldest telemetry window not yet in a minute rollup (0: none waiting); a few "
            "minutes is normal, more means the housekeeping (hub ticker or edgefleet-hub housekeep) "
            "is behind or not running",
            registry=r,
        )
        self.mqtt_connected = Gauge("edgefleet_hub_mqtt_connected", "1 while the bridge is connected", registry=r)
