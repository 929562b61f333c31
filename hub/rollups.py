"""Telemetry at scale: raw windows for hours, 1-minute and 1-hour rollups for weeks.

A rollup row (:class:`hub.models.TelemetryRollup`) is every window of one device and one bundle
whose hub receive time falls in one bucket, merged by :func:`hub.telemetry.merge`: counts add,
latency sketches and drift bins merge exactly, shadow comparisons add. :func:`hub.telemetry.merge`
reads a rollup row like a window standing for ``windows`` windows, so a summary over rollups is
the summary over the windows they hold, bit for bit in its counts and sketch buckets.

Rules (the job is :func:`roll`, run by :mod:`hub.ticker`; :func:`span` and :func:`fold` are pure):

* A window belongs to the 1-minute bucket ``received // 60 * 60``; a 1-minute rollup to the
  1-hour bucket ``bucket // 3600 * 3600``. Hour rollups are built from minute rollups.
* Only closed buckets are rolled: those ending ``GRACE_S`` before now (a batch stamped
  ``received`` commits within it; ingest commits in well under a second).
* Each resolution resumes after its newest rollup (its watermark) and skips to the first bucket
  that holds anything, at most ``MAX_BUCKETS`` buckets per run: a hub that was down catches up
  over a few runs, never in one transaction of unbounded size.
* Idempotent: the unique key (resolution, bucket, device, bundle) refuses a second row, so two
  replicas rolling at once cost one of them its transaction, never a double count.
* Retention (:func:`prune`): raw windows older than ``raw_retention`` go, but never one not yet
  rolled into a minute (below the minute watermark); minute rollups older than
  ``minute_retention`` go, never one not yet rolled into an hour; hour rollups older than
  ``hour_retention`` go.
* Readers (:func:`read_since`): a range reaching further back than the raw windows still kept
  reads minute rollups up to the boundary and raw windows after it, each window counted once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, literal, select as columns
from sqlmodel import Session, select

from protocol.messages import COUNT_KEYS

from .fleet import Fleet
from .models import TelemetryRollup, TelemetryWindow
from .telemetry import Merged, WindowRow, merge

log = logging.getLogger(__name__)

MINUTE, HOUR = 60, 3600
RESOLUTIONS = (MINUTE, HOUR)
GRACE_S = 120
MAX_BUCKETS = {MINUTE: 5, HOUR: 2}  # per run (every 30 s): 100,000 devices send ~100,000 windows a minute
Key = tuple[int, str, str]  # (bucket, device, bundle or "")
_ROLLUPS = TelemetryRollup.__table__  # type: ignore[attr-defined]
_WINDOWS = TelemetryWindow.__table__  # type: ignore[attr-defined]
# what a minute's rollup reads of each window (besides its times): what telemetry.merge adds up
MERGED_COLUMNS = ("device", "bundle", "latency", *COUNT_KEYS, "drift", "shadow")


def bucket_of(ts: int, resolution: int) -> int:
    return ts // resolution * resolution


def span(watermark: int | None, first_pending: int | None, now: int, resolution: int) -> tuple[int, int] | None:
    """The buckets one run rolls, ``[start, end)``: from the first bucket holding anything at or
    after the watermark, at most ``MAX_BUCKETS`` of them, ending before the open bucket (and its
    grace). ``None``: nothing to roll. ``watermark`` is the start of the bucket after the newest
    rollup (``None``: none yet); ``first_pending`` the oldest source time at or after it."""
    if first_pending is None:
        return None
    start = bucket_of(first_pending, resolution)
    if watermark is not None:
        start = max(start, watermark)
    end = min(bucket_of(now - GRACE_S, resolution), start + MAX_BUCKETS[resolution] * resolution)
    return (start, end) if end > start else None


@dataclass
class Folded:
    merged: Merged
    window_start: int
    window_end: int


def fold(rows: Iterable[tuple[int, WindowRow, str | None, int, int]], resolution: int) -> dict[Key, Folded]:
    """Group ``(time, row, bundle, window_start, window_end)`` by (bucket of time, device,
    bundle) and merge each group (:func:`hub.telemetry.merge`)."""
    groups: dict[Key, list[WindowRow]] = {}
    bounds: dict[Key, tuple[int, int]] = {}
    for t, row, bundle, ws, we in rows:
        key = (bucket_of(t, resolution), row.device, bundle or "")
        groups.setdefault(key, []).append(row)
        lo, hi = bounds.get(key, (ws, we))
        bounds[key] = (min(lo, ws), max(hi, we))
    return {k: Folded(merge(rs), *bounds[k]) for k, rs in groups.items()}


def to_row(key: Key, f: Folded, resolution: int) -> dict[str, Any]:
    """A rollup row's columns; ``drift`` keeps every bin count a feature came in."""
    bucket, device, bundle = key
    m = f.merged
    drift: dict[str, dict[str, list[list[int]]]] = {}
    for feature, by_bins in m.drift.items():
        side, name = feature.split(".", 1)
        drift.setdefault(side, {})[name] = [by_bins[n] for n in sorted(by_bins)]
    shadow = None
    if m.shadow_total:
        # Shadow.agreed is round(agreement * samples): the share gives back the count exactly
        shadow = {"samples": m.shadow_total, "errors": 0, "agreement": m.shadow_agree / m.shadow_total}
    return {
        "resolution": resolution,
        "bucket": bucket,
        "device": device,
        "bundle": bundle,
        "windows": m.windows,
        "window_start": f.window_start,
        "window_end": f.window_end,
        **m.counts,
        "latency": m.sketch.to_dict() if m.sketch.count else {},
        "drift": drift,
        "shadow": shadow,
    }


def _watermark(s: Session, resolution: int) -> int | None:
    r = TelemetryRollup
    newest = s.exec(select(func.max(r.bucket)).where(r.resolution == resolution)).one()
    return None if newest is None else int(newest) + resolution


def _minutes_pending(s: Session) -> tuple[int | None, int | None]:
    """(the minute watermark, the oldest window received at or after it)."""
    t, wm = TelemetryWindow, _watermark(s, MINUTE)
    first = s.exec(select(func.min(t.received)).where(t.received >= (wm or 0))).one()
    return wm, None if first is None else int(first)


def _roll_minutes(s: Session, now: int) -> int:
    wm, first = _minutes_pending(s)
    sp = span(wm, first, now, MINUTE)
    if sp is None:
        return 0
    c = _WINDOWS.c
    # the columns merge reads, as plain rows (not ORM): a minute of 100,000 devices is 100,000 rows
    rows: Any = (
        s.connection()
        .execute(
            columns(
                *(c[k] for k in MERGED_COLUMNS),
                c.received,
                c.window_start,
                c.window_end,
                literal(1).label("windows"),  # as a rollup row names it (telemetry.merge reads it)
            ).where(c.received >= sp[0], c.received < sp[1])
        )
        .all()
    )
    folded = fold(((w.received, w, w.bundle, w.window_start, w.window_end) for w in rows), MINUTE)
    if folded:  # a table insert, not ORM: thousands of rows a minute
        s.connection().execute(insert(_ROLLUPS), [to_row(k, f, MINUTE) for k, f in folded.items()])
    return len(folded)


def _roll_hours(s: Session, now: int) -> int:
    r, wm = TelemetryRollup, _watermark(s, HOUR)
    first = s.exec(select(func.min(r.bucket)).where(r.resolution == MINUTE, r.bucket >= (wm or 0))).one()
    sp = span(wm, first, now, HOUR)
    # an hour is closed once its last minute rollup can exist: the minutes must have caught up
    minute_wm = _watermark(s, MINUTE)
    if sp is None or minute_wm is None:
        return 0
    sp = (sp[0], min(sp[1], bucket_of(minute_wm, HOUR)))
    if sp[1] <= sp[0]:
        return 0
    rows = s.exec(select(r).where(r.resolution == MINUTE, r.bucket >= sp[0], r.bucket < sp[1])).all()
    folded = fold(((m.bucket, m, m.bundle, m.window_start, m.window_end) for m in rows), HOUR)
    if folded:
        s.connection().execute(insert(_ROLLUPS), [to_row(k, f, HOUR) for k, f in folded.items()])
    return len(folded)


def roll(fleet: Fleet) -> dict[int, int]:
    """Roll the closed buckets of each resolution (one transaction each); rows written per
    resolution."""
    now = fleet.clock()
    out = {}
    for resolution, step in ((MINUTE, _roll_minutes), (HOUR, _roll_hours)):
        with fleet.session() as s:
            out[resolution] = step(s, now)
            s.commit()
    return out


def rolled_until(s: Session) -> int | None:
    """Every window received before this time is in a minute rollup (``None``: none rolled yet)."""
    return _watermark(s, MINUTE)


def waiting_since(s: Session) -> int | None:
    """When the oldest window not yet in a minute rollup was received (``None``: none waits). A
    closed minute is rolled within ``GRACE_S`` + a minute + one scan; a wait much longer than that
    means nobody rolls them (``--housekeeping apart`` and no ``edgefleet-hub housekeep``)."""
    return _minutes_pending(s)[1]


def boundary(s: Session, now: int, raw_retention: int) -> int:
    """The time before which readers take minute rollups and from which raw windows: the raw
    retention cutoff on a minute, but never past what is rolled (the minute watermark)."""
    wm = _watermark(s, MINUTE)
    return min(bucket_of(now - raw_retention, MINUTE), wm if wm is not None else 0)


def prune(fleet: Fleet) -> dict[str, int]:
    """Drop what is past its retention (see the module's rules); rows deleted per table."""
    cfg, now = fleet.config, fleet.clock()
    with fleet.session() as s:
        raw_cut = boundary(s, now, cfg.raw_retention)
        hour_wm = _watermark(s, HOUR)
        minute_cut = min(now - cfg.minute_retention, hour_wm if hour_wm is not None else 0)
        tw, tr = TelemetryWindow.__table__, TelemetryRollup.__table__  # type: ignore[attr-defined]
        conn = s.connection()
        raw = conn.execute(delete(tw).where(tw.c.received < raw_cut)).rowcount
        minutes = conn.execute(delete(tr).where(tr.c.resolution == MINUTE, tr.c.bucket + MINUTE <= minute_cut)).rowcount
        hours = conn.execute(
            delete(tr).where(tr.c.resolution == HOUR, tr.c.bucket + HOUR <= now - cfg.hour_retention)
        ).rowcount
        s.commit()
    return {"raw": int(raw or 0), "minute": int(minutes or 0), "hour": int(hours or 0)}


def read_since(
    s: Session,
    since: int,
    now: int,
    raw_retention: int,
    where_raw: Iterable[Any] = (),
    where_rollup: Iterable[Any] = (),
) -> tuple[list[Any], list[Any]]:
    """Windows received at or after ``since``: minute rollups before :func:`boundary` (when the
    range reaches past it), raw windows from it on. Extra conditions apply to each table."""
    cut = boundary(s, now, raw_retention)
    t, r = TelemetryWindow, TelemetryRollup
    raw = s.exec(select(t).where(t.received >= max(since, cut), *where_raw)).all()
    rolled: list[Any] = []
    if since < cut:
        rolled = list(
            s.exec(
                select(r).where(
                    r.resolution == MINUTE, r.bucket >= bucket_of(since, MINUTE), r.bucket < cut, *where_rollup
                )
            ).all()
        )
    return list(raw), rolled
