"""The simulator's one typed config: the fleet (size, broker, trust root, timings) and what each
device does (simulated inference and faults). Built by the CLI, a bench or a test; validated
here, so a bad value is refused naming it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import SimError


@dataclass(frozen=True)
class Inference:
    """Simulated inference on one device: ``rate`` requests per second, latency lognormal around
    ``latency_ms`` (``sigma``), times ``slowdown``; ``error_rate`` of them fail; ``drift`` shifts
    the input feature values by that many baseline-widths (0 = the traffic the baseline saw; a
    fraction shifts that share of the values one bin further, so 0.3 moves 30 % of them one bin);
    ``cloud_rate`` of the answered ones went to the cloud fallback; with ``shadow_agreement`` set,
    a shadow model compares every answer and agrees with that share of them."""

    rate: float = 5.0
    latency_ms: float = 8.0
    sigma: float = 0.25
    slowdown: float = 1.0
    error_rate: float = 0.0
    drift: float = 0.0
    cloud_rate: float = 0.0
    shadow_agreement: float | None = None

    def __post_init__(self) -> None:
        for name in ("rate", "latency_ms", "sigma", "error_rate", "drift", "cloud_rate"):
            if getattr(self, name) < 0:
                raise SimError(f"inference {name} must be >= 0, got {getattr(self, name)}")
        if self.slowdown <= 0:
            raise SimError(f"inference slowdown must be > 0, got {self.slowdown}")
        for name in ("error_rate", "cloud_rate", "shadow_agreement"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise SimError(f"inference {name} must be within 0..1, got {v}")


@dataclass(frozen=True)
class Faults:
    """Simulated faults, per device: ``offline_every_s`` (mean seconds between link losses, 0 =
    never) for ``offline_s`` each; ``slow_link_bps`` caps how fast the device reads (0 = no cap);
    ``churn_every_s`` (mean seconds until the device is replaced by a fresh one with empty slots,
    0 = never); ``lost_chunks``: chunk indexes whose first delivery each device loses after the
    broker counted it delivered (an agent killed between acknowledging a chunk and writing it)."""

    offline_every_s: float = 0.0
    offline_s: float = 5.0
    slow_link_bps: float = 0.0
    churn_every_s: float = 0.0
    lost_chunks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("offline_every_s", "offline_s", "slow_link_bps", "churn_every_s"):
            if getattr(self, name) < 0:
                raise SimError(f"fault {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class SimConfig:
    broker_host: str
    broker_port: int
    root: Path  # the pinned trust root every simulated device starts with
    devices: int = 100
    prefix: str = "sim"
    board: str = "rpi4"
    telemetry_interval_s: float = 10.0
    status_interval_s: float = 60.0
    fetch_repair_s: float = 5.0  # no chunk for this long: ask the hub for the missing ones (backing off)
    progress_interval_s: float = 5.0  # download progress: a report a tenth, at most one this often (the agent's)
    resend_after_s: float = 10.0  # unacked reports/telemetry are sent again after this
    probation_inferences: int = 20
    probation_max_errors: int = 5
    connect_per_s: float = 2000.0  # new connections per second at start (the broker's accept queue)
    # a TCP connect not accepted within this is abandoned and retried later: a broker too busy to
    # accept (its queue full, SYNs dropped) must not stop every other simulated device meanwhile
    connect_timeout_s: float = 0.05
    free_disk: int = 8 * 2**30
    plan_by_reference: bool = True  # announce protocol.planref, as the agent does by default
    inference: Inference = field(default_factory=Inference)
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 100_000:
            raise SimError(f"devices must be within 1..100000, got {self.devices}")
        if not 0 < self.broker_port < 65536:
            raise SimError(f"broker port must be within 1..65535, got {self.broker_port}")
        for name in (
            "telemetry_interval_s",
            "status_interval_s",
            "fetch_repair_s",
            "progress_interval_s",
            "resend_after_s",
            "connect_per_s",
            "connect_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise SimError(f"{name} must be > 0, got {getattr(self, name)}")

    def device_ids(self) -> list[str]:
        width = max(4, len(str(self.devices - 1)))
        return [f"{self.prefix}-{i:0{width}d}" for i in range(self.devices)]


def parse_broker(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` -> (host, port); refuses anything else naming it."""
    if not url.startswith("mqtt://"):
        raise SimError(f"broker must look like mqtt://host:port, got {url!r}")
    host, _, port = url[len("mqtt://") :].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise SimError(f"broker must look like mqtt://host:port, got {url!r}")
    return host, int(port)
