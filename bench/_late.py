"""Which simulated devices finish a rollout late, and what they went through (``bench rollout``).

A 10,000-device rollout's median device committed at ~150 s and its last at ~400 s
(docs/scale.md): the tail decides ours/limit. This compares the last tenth to commit with the
rest on what each device's own counters and trace (:class:`sim.device.Counters`) recorded:
when its first chunk came, how long its download took once begun, its longest wait between
two chunks, probes, narrowed subscriptions, repair requests to the hub, and reconnects; and
lists the slowest devices' and every hub-asking device's trace, times from the rollout POST.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

SHOWN = 5  # slowest devices whose trace is listed
ASKERS_SHOWN = 10  # devices that asked the hub for chunks, traces listed


def _count(trace: list[tuple[float, str]], prefix: str) -> int:
    return sum(1 for _, e in trace if e.startswith(prefix))


def _profile(devs: Sequence[Any], t0: float) -> dict[str, Any]:
    if not devs:
        return {"devices": 0}

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    c = [d.counters for d in devs]
    return {
        "devices": len(devs),
        "first_chunk_s": med([x.first_chunk_at - t0 for x in c if x.first_chunk_at is not None]),
        "download_s": med(
            [
                x.committed_at - x.first_chunk_at
                for x in c
                if x.first_chunk_at is not None and x.committed_at is not None
            ]
        ),
        "longest_gap_s": med([x.max_chunk_gap for x in c]),
        "probes_mean": sum(x.probes for x in c) / len(c),
        "narrowed": sum(1 for x in c if _count(x.trace, "narrowed")),
        "asked_hub": sum(1 for x in c if x.fetch_requests),
        "reconnected": sum(1 for x in c if _count(x.trace, "connected")),
    }


def _trace(d: Any, t0: float) -> dict[str, Any]:
    c = d.counters
    return {
        "device": d.id,
        "events": [f"{at - t0:7.1f} s  {e}" for at, e in c.trace],
        "events_dropped": c.trace_dropped,
    }


def late_devices(devices: Sequence[Any], t0: float) -> dict[str, Any]:
    """The last tenth of ``devices`` to commit (uncommitted ones last) against the rest."""
    order = sorted(devices, key=lambda d: (d.counters.committed_at is None, d.counters.committed_at or 0.0))
    cut = len(order) - max(1, len(order) // 10)
    return {
        "rest": _profile(order[:cut], t0),
        "last_tenth": _profile(order[cut:], t0),
        "slowest": [_trace(d, t0) for d in order[-SHOWN:]],
        "asked_hub": [_trace(d, t0) for d in order if d.counters.fetch_requests][:ASKERS_SHOWN],
    }


def describe(late: dict[str, Any]) -> list[str]:
    """Two lines comparing the last tenth with the rest."""
    out = []
    for name in ("rest", "last_tenth"):
        p = late[name]
        if not p.get("devices"):
            continue

        def s(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        out.append(
            f"  {name.replace('_', ' '):<10} {p['devices']:>6} devices: first chunk {s(p['first_chunk_s'])} s, "
            f"download {s(p['download_s'])} s, longest gap {s(p['longest_gap_s'])} s (medians); "
            f"probes {p['probes_mean']:.1f}/device, narrowed {p['narrowed']}, asked the hub {p['asked_hub']}, "
            f"reconnected {p['reconnected']}"
        )
    return out
