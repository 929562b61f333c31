"""A batch's telemetry windows folded into each device row's running totals once (:mod:`hub.ingest`)."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.messages import COUNT_KEYS
from protocol.sketch import LatencySketch

from .models import Device


class Fold:
    """One device's telemetry windows of one batch, added up before they touch its ORM row:
    setting a SQLModel attribute costs more than parsing the message, and seven per window
    (last_seen and the totals) were a quarter of the worker's time. Applied once per device
    per batch by :meth:`apply`, with the same result as folding window by window: the latency
    sketch restarts when the bundle changes, else the windows' sketches merge onto the stored
    one (sketch merges are exact and order-free)."""

    __slots__ = ("bundle", "counts", "has_latency", "reset", "sketches", "windows")

    def __init__(self, bundle: str | None, has_latency: bool) -> None:
        self.bundle = bundle
        self.has_latency = has_latency
        self.reset = False
        self.windows = 0
        self.counts = dict.fromkeys(COUNT_KEYS, 0)
        self.sketches: list[LatencySketch] = []

    def add(self, bundle: str | None, counts: dict[str, int], sketch: LatencySketch) -> None:
        self.windows += 1
        for k, v in counts.items():
            self.counts[k] += v
        if bundle != self.bundle or not self.has_latency:
            self.bundle, self.has_latency, self.reset = bundle, True, True
            self.sketches = [sketch]
        else:
            self.sketches.append(sketch)

    def apply(self, d: Device) -> None:
        d.windows += self.windows
        d.inferences += self.counts["inferences"]
        d.errors += self.counts["errors"]
        d.tpu += self.counts["tpu"]
        d.cpu += self.counts["cpu"]
        d.cloud += self.counts["cloud"]
        if self.reset:
            d.latency_bundle = self.bundle
            base = LatencySketch()
        else:
            base = LatencySketch.from_dict(d.latency)
        d.latency = merge_sketches(base, self.sketches).to_dict()


def merge_sketches(base: LatencySketch, parts: Sequence[LatencySketch]) -> LatencySketch:
    """``base.merge(p)`` for each part in turn, without an intermediate sketch per part."""
    counts = dict(base.counts)
    n, total, lo, hi = base.count, base.total, base.min, base.max
    for p in parts:
        for i, c in p.counts.items():
            counts[i] = counts.get(i, 0) + c
        n += p.count
        total += p.total
        lo = min(lo, p.min)
        hi = max(hi, p.max)
    return LatencySketch(counts, n, total, lo, hi)
