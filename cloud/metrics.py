"""Every Prometheus metric the cloud service exports, declared in this one module.

Each app gets its own :class:`CollectorRegistry` so several apps (tests, benchmarks) can live in
one process. ``promtool check metrics`` is clean on it (tests/cloud/test_metrics.py). Saturation
is ``edgefleet_cloud_queue_depth / edgefleet_cloud_queue_capacity`` per model and
``edgefleet_cloud_inflight / edgefleet_cloud_service_rate`` (the latency admission expects);
every 429/503 shed is counted as ``edgefleet_cloud_errors_total{code="overloaded"}`` and by why
in ``edgefleet_cloud_shed_total{reason}``. Labels are bounded: model names and versions come
from verified bundles, API keys are counted by *slot* (their position in the
config: ``/metrics`` needs no key, so neither key names nor secrets appear), routes from the
route table.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram(
            "edgefleet_cloud_request_seconds",
            "HTTP request latency, by route and status code",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "edgefleet_cloud_batch_size", "Samples per onnxruntime run", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "edgefleet_cloud_batch_seconds",
            "Time of one onnxruntime run",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "edgefleet_cloud_queue_depth", "Samples waiting for a batch", ["model", "version"], registry=r
        )
        self.queue_capacity = Gauge(
            "edgefleet_cloud_queue_capacity",
            "Samples that may wait for a batch before requests are refused with 429 (max_queue)",
            ["model", "version"],
            registry=r,
        )
        self.predictions = Counter(
            "edgefleet_cloud_predictions_total", "Samples predicted", ["model", "version"], registry=r
        )
        self.errors = Counter(
            "edgefleet_cloud_errors_total", "Requests answered with an error, by error code", ["code"], registry=r
        )
        self.shed = Counter(
            "edgefleet_cloud_shed_total",
            "Requests refused to bound queueing (429/503), by reason: max_inflight, latency_budget, "
            "queue_full, queue_timeout, key_inflight",
            ["reason"],
            registry=r,
        )
        self.inflight = Gauge("edgefleet_cloud_inflight", "Prediction requests in flight (admitted)", registry=r)
        self.service_rate = Gauge(
            "edgefleet_cloud_service_rate",
            "Requests completed per second while busy, as admission measures it (0: not measured yet)",
            registry=r,
        )
        self.requests_by_key = Counter(
            "edgefleet_cloud_key_requests_total",
            "Authenticated requests per API key slot (1-based position in the configuration)",
            ["slot"],
            registry=r,
        )
        self.models_loaded = Gauge("edgefleet_cloud_models_loaded", "Model versions being served", registry=r)
        self.bundles_refused = Counter(
            "edgefleet_cloud_bundles_refused_total", "Bundles refused at load, by reason code", ["reason"], registry=r
        )

    def track_queue(self, model: str, version: str, depth: Callable[[], float], capacity: int | None = None) -> None:
        self.queue_depth.labels(model, version).set_function(depth)
        if capacity is not None:
            self.queue_capacity.labels(model, version).set(capacity)

    def forget_model(self, model: str, version: str) -> None:
        for metric in (self.queue_depth, self.queue_capacity, self.predictions):
            try:
                metric.remove(model, version)
            except KeyError:
                pass
