"""Every Prometheus metric the hub exports, declared here and nowhere else.

One :class:`HubMetrics` per hub process, in its own registry (tests build several hubs in one
interpreter without colliding). Served on ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.devices = Gauge(
            "edgefleet_hub_devices", "Devices known to the hub by online state", ["online"], registry=r
        )
        self.rollout_devices = Gauge(
            "edgefleet_hub_rollout_devices", "Devices per state in active rollouts", ["rollout", "state"], registry=r
        )
        self.inferences = Counter(
            "edgefleet_fleet_inferences_total", "Inferences reported by devices", ["path"], registry=r
        )
        self.device_errors = Counter("edgefleet_fleet_errors_total", "Inference errors reported by devices", registry=r)
        self.alerts = Counter("edgefleet_hub_alerts_total", "Alerts raised by kind", ["kind"], registry=r)
        self.http_errors = Counter(
            "edgefleet_hub_http_errors_total", "4xx/5xx API responses by status", ["status"], registry=r
        )
        self.fleet_latency = Gauge(
            "edgefleet_fleet_latency_seconds",
            "Inference latency quantiles merged over devices, by active bundle",
            ["bundle", "quantile"],
            registry=r,
        )
        self.fleet_devices_on_bundle = Gauge(
            "edgefleet_fleet_devices_on_bundle", "Devices running each bundle", ["bundle"], registry=r
        )
        self.alerts_open = Gauge("edgefleet_hub_alerts_open", "Unresolved alerts by kind", ["kind"], registry=r)
        self.mqtt_connected = Gauge("edgefleet_hub_mqtt_connected", "1 while the bridge is connected", registry=r)
