"""A device's chart series: what each telemetry window shows, how sure it is, and the words
under the chart. Pure: windows and baselines in, a JSON-ready dict out.

Why this exists: below ~10 requests/s every window alone held fewer samples than the drift
verdict's ``min_samples`` (100), so each window's PSI was "insufficient data" and the drift
chart stayed empty, while the device table, which judges the last 30 windows merged, said
"Alert". The rules now:

* **Latency**: every window with requests is a point (p50, p95). A window with fewer than
  :data:`LATENCY_MIN_SAMPLES` requests is drawn hollow: its p95 is one of a handful of values.
* **Drift** (per feature, against the baseline of the bundle the window ran): a window with
  at least the feature's ``min_samples`` is judged alone by the one verdict
  (:meth:`protocol.baseline.Baseline.verdict`). A window with fewer is merged with the windows
  before it (same bundle, counts add exactly) until the counts reach ``min_samples``, judged
  by the same verdict and drawn hollow. Where even that is too little, there is no point: a PSI
  of a few samples is mostly noise, and the note says so instead.
* **Notes**: one line per chart naming the samples charted and, when some are too few, the
  threshold and what the hollow points or gaps mean.

Bounded: a device chart reads at most ``DEVICE_WINDOWS`` (120) rows, and a merge walks back
through at most those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.baseline import Baseline
from protocol.errors import BadPayload

from ..telemetry import Merged, latency_summary

LATENCY_MIN_SAMPLES = 20  # below this a window's p95 is one of its few slowest requests


@dataclass(frozen=True)
class Window:
    """One telemetry window as the charts read it: when it ended, which bundle ran, its counts."""

    x: int
    bundle: str | None
    merged: Merged


def _round(v: float | None, nd: int = 3) -> float | None:
    return round(v, nd) if v is not None else None


def latency(windows: Sequence[Window], unit: str = "windows") -> dict[str, Any]:
    """p50/p95 per window, the request count per window, which points are hollow, and the note
    (``unit`` names the points in it: telemetry windows, or the fleet chart's time buckets)."""
    p50: list[float | None] = []
    p95: list[float | None] = []
    samples: list[int] = []
    for w in windows:
        lat = latency_summary(w.merged.sketch.to_dict())
        p50.append(_round(lat["p50_ms"]))
        p95.append(_round(lat["p95_ms"]))
        samples.append(w.merged.sketch.count)
    few = [0 < n < LATENCY_MIN_SAMPLES for n in samples]
    total, n_few = sum(samples), sum(few)
    if not windows or not total:
        note = f"No requests in the charted {unit} yet."
    elif n_few:
        note = (
            f"{total} requests in the last {len(windows)} {unit}; {n_few} of them had fewer than "
            f"{LATENCY_MIN_SAMPLES} requests (hollow points): too few to judge a p95 by."
        )
    else:
        note = f"{total} requests in the last {len(windows)} {unit}."
    return {"p50_ms": p50, "p95_ms": p95, "samples": samples, "hollow": {"p50_ms": few, "p95_ms": few}, "note": note}


@dataclass
class _Feature:
    base: dict[int, tuple[Baseline, int]]  # window index -> (baseline, bins) where the window has counts
    psi: list[float | None]
    hollow: list[bool]
    samples: list[int]
    merged_windows: list[int]


def drift(
    windows: Sequence[Window], baselines: Callable[[str], Baseline | None], unit: str = "windows"
) -> dict[str, Any]:
    """Per feature: PSI per window (alone, or merged back to ``min_samples``), the samples each
    point was judged on, which points are hollow (merged), and one note for the chart."""
    feats: dict[str, _Feature] = {}
    counts: dict[str, list[list[int] | None]] = {}
    for i, w in enumerate(windows):
        base = baselines(w.bundle) if w.bundle else None
        known = base.features() if base is not None else {}
        for key in w.merged.drift:
            feat = known.get(key)
            if base is None or feat is None:
                continue
            c = w.merged.drift_counts(key, len(feat.ref))
            if c is None:
                continue
            f = feats.setdefault(
                key, _Feature({}, [None] * len(windows), [False] * len(windows), [0] * len(windows), [0] * len(windows))
            )
            f.base[i] = (base, len(feat.ref))
            counts.setdefault(key, [None] * len(windows))[i] = c
    need_max, total_max, deepest = 0, 0, 1
    gaps: set[int] = set()  # windows with data that no feature could judge, even merged
    judged: set[int] = set()
    for key, f in feats.items():
        cs = counts[key]
        for i, (base, bins) in f.base.items():
            own = cs[i]
            if own is None or not sum(own):
                continue
            need = base.thresholds_for(key).min_samples
            need_max = max(need_max, need)
            acc, j = list(own), i
            # merge back through the windows before it that ran the same bundle on the same bins
            while sum(acc) < need and j > 0 and windows[j - 1].bundle == windows[i].bundle:
                j -= 1
                prev = cs[j]
                if prev is not None and len(prev) == bins:
                    acc = [a + b for a, b in zip(acc, prev, strict=True)]
            try:
                v = base.verdict(key, acc)
            except BadPayload:
                continue
            if v.psi is None:
                gaps.add(i)
                continue
            judged.add(i)
            f.psi[i] = round(v.psi, 4)
            f.samples[i] = v.samples
            f.merged_windows[i] = i - j + 1
            f.hollow[i] = j < i
            deepest = max(deepest, i - j + 1)
        total_max = max(total_max, sum(sum(c) for c in cs if c is not None))
    hollow = any(any(f.hollow) for f in feats.values())
    points = any(v is not None for f in feats.values() for v in f.psi)
    n = len(windows)
    if not feats or not total_max:
        note = f"No drift counts in the charted {unit} yet."
    elif not points:
        note = (
            f"{total_max} samples in the last {n} {unit}: drift needs >= {need_max} per point, too little to judge yet."
        )
    else:
        note = f"{total_max} samples in the last {n} {unit}; drift needs >= {need_max} per point"
        if hollow:
            note += f", so one with fewer is merged with the {unit} before it (hollow points, up to {deepest} {unit})"
        else:
            note += f", and every point is judged on its own {unit[:-1]}"
        if gaps - judged:
            note += f"; {len(gaps - judged)} of them too little to judge even merged (gaps)"
        note += "."
    return {
        "drift_psi": {k: f.psi for k, f in feats.items()},
        "drift_samples": {k: f.samples for k, f in feats.items()},
        "drift_merged_windows": {k: f.merged_windows for k, f in feats.items()},
        "hollow": {k: f.hollow for k, f in feats.items()},
        "note": note,
        "samples": total_max,
    }


def device_chart(windows: Sequence[Window], baselines: Callable[[str], Baseline | None]) -> dict[str, Any]:
    """Both device charts' data (``x`` oldest first), hollow flags by series key and the notes."""
    lat, dr = latency(windows), drift(windows, baselines)
    return {
        "x": [w.x for w in windows],
        "p50_ms": lat["p50_ms"],
        "p95_ms": lat["p95_ms"],
        "samples": lat["samples"],
        "drift_psi": dr["drift_psi"],
        "drift_samples": dr["drift_samples"],
        "drift_merged_windows": dr["drift_merged_windows"],
        "hollow": {**lat["hollow"], **dr["hollow"]},
        "notes": {"latency": lat["note"], "drift": dr["note"]},
    }
