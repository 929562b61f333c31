"""Fleet alerts: offline devices, latency regressions, drift. Pure decisions over facts the
shell gathers; one open alert per ``(kind, device)``, resolved when the condition clears.

* ``offline``: the device said it is offline (last will) or nothing arrived from it for
  ``offline_after`` seconds.
* ``latency_regression``: p95 of the recent window is more than ``ratio`` times the device's
  trailing p95 on the same bundle (both with at least ``min_samples`` inferences).
* ``drift``: the device's recent windows on its active bundle give a drift ``alert`` verdict
  (:mod:`hub.drift`); ``insufficient_data`` never raises one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = ("offline", "latency_regression", "drift")


@dataclass(frozen=True)
class DeviceFacts:
    device: str
    online: bool
    last_seen: int
    bundle: str | None = None
    recent_p95_ms: float | None = None
    recent_samples: int = 0
    trailing_p95_ms: float | None = None
    trailing_samples: int = 0
    drift_status: str = "insufficient_data"
    drift_detail: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class AlertRules:
    offline_after: int = 300
    latency_ratio: float = 1.5
    min_samples: int = 100


@dataclass(frozen=True)
class Raise:
    kind: str
    device: str
    severity: str
    message: str
    bundle: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Resolve:
    kind: str
    device: str


def evaluate(
    facts: Iterable[DeviceFacts], open_alerts: set[tuple[str, str]], now: int, rules: AlertRules = AlertRules()
) -> list[Raise | Resolve]:
    out: list[Raise | Resolve] = []
    for f in facts:
        conds: dict[str, Raise | None] = {k: None for k in KINDS}
        stale = now - f.last_seen
        if not f.online or stale >= rules.offline_after:
            why = "sent its last will" if not f.online else f"silent for {stale}s"
            conds["offline"] = Raise(
                "offline", f.device, "warn", f"device {f.device} offline: {why}", f.bundle, {"last_seen": f.last_seen}
            )
        if (
            f.recent_p95_ms is not None
            and f.trailing_p95_ms
            and f.recent_samples >= rules.min_samples
            and f.trailing_samples >= rules.min_samples
            and f.recent_p95_ms > rules.latency_ratio * f.trailing_p95_ms
        ):
            conds["latency_regression"] = Raise(
                "latency_regression",
                f.device,
                "alert",
                f"device {f.device} p95 {f.recent_p95_ms:.2f} ms vs {f.trailing_p95_ms:.2f} ms before "
                f"(>{rules.latency_ratio}x)",
                f.bundle,
                {"recent_p95_ms": f.recent_p95_ms, "trailing_p95_ms": f.trailing_p95_ms},
            )
        if f.drift_status == "alert":
            conds["drift"] = Raise(
                "drift",
                f.device,
                "alert",
                f"device {f.device} input/output drift on its bundle",
                f.bundle,
                dict(f.drift_detail),
            )
        for kind, r in conds.items():
            is_open = (kind, f.device) in open_alerts
            if r is not None and not is_open:
                out.append(r)
            elif r is None and is_open and (kind != "drift" or f.drift_status in ("ok", "warn")):
                out.append(Resolve(kind, f.device))
    return out
