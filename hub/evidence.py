"""The rollout gates' evidence: what each device's telemetry says about the bundle it was
issued, beside the bundle it ran before. Read by :func:`hub.rollouts._run` before every
decision that can open a cohort; the judging itself is pure (:func:`hub.rollout.evaluate_gates`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Text, cast
from sqlmodel import Session, col, select

from protocol.codec import loads_stored

from .models import Rollout, TelemetryRollup, TelemetryWindow
from .rollout import Health, RolloutState
from .rollups import MINUTE
from .telemetry import Merged, merge

log = logging.getLogger(__name__)

HEALTH_WINDOWS = 500  # newest windows per device and bundle that count
PREVIOUS_WINDOW_S = 3600  # how far back before the rollout the previous bundle's windows count
# windows received within this of the newest one seen, and not seen yet, are read (by id): a batch
# another hub replica numbered earlier may commit after a later one was read
LATE_S = 60
LATE_EVERY_S = 5.0  # ... at most this often (each look reads the ids of LATE_S of the fleet's windows)
KEEP_IDLE_S = 900  # a rollout's windows are let go when no run read them this long
MAX_HELD = 1_000_000  # windows a hub process holds for all rollouts (~850 B each: 1,000 devices' hour is 366,000)
PAGE = 5000
Rows = dict[str, dict[str, Any]]
_W = TelemetryWindow
# the JSON columns as the text stored, decoded when a merge reads them (_Window): a window held
# decoded took ~2.2 kB, ~800 MB for 1,000 devices' hour
_COLUMNS = (_W.id, _W.device, _W.bundle, _W.window_start, _W.window_end, _W.received, _W.inferences, _W.errors,
            _W.tpu, _W.cpu, _W.cloud, cast(_W.latency, Text), cast(_W.drift, Text), cast(_W.shadow, Text))  # fmt: skip


class _Window:
    """One telemetry window as the gates read it: what :func:`hub.telemetry.merge` asks of a row,
    its JSON parts kept as stored text and decoded on each read (a merge reads each once or twice)."""

    __slots__ = ("id", "device", "bundle", "window_start", "window_end", "received",
                 "inferences", "errors", "tpu", "cpu", "cloud", "_latency", "_drift", "_shadow")  # fmt: skip

    def __init__(self, row: Sequence[Any]) -> None:
        (self.id, device, bundle, self.window_start, self.window_end, self.received, self.inferences,
         self.errors, self.tpu, self.cpu, self.cloud, self._latency, self._drift, self._shadow) = row  # fmt: skip
        self.device = sys.intern(device)  # one string a device and a bundle, not one a window
        self.bundle = None if bundle is None else sys.intern(bundle)

    @property
    def latency(self) -> Any:
        return None if self._latency is None else loads_stored(self._latency)

    @property
    def drift(self) -> Any:
        return None if self._drift is None else loads_stored(self._drift)

    @property
    def shadow(self) -> Any:
        return None if self._shadow is None else loads_stored(self._shadow)


@dataclass
class _Held:
    """One rollout's windows read so far: of ``bundles`` received since ``floor``, for ``devices``."""

    bundles: tuple[str, ...]
    floor: int
    devices: set[str] = field(default_factory=set)
    windows: dict[str, list[Any]] = field(default_factory=dict)  # device -> rows
    top_id: int = 0  # the highest window id seen (of any device: a device read later is read whole)
    mark: int = 0  # the newest receive time seen
    recent: dict[int, int] = field(default_factory=dict)  # id -> received, of windows seen within LATE_S of mark
    used: float = 0.0
    late_at: float = 0.0  # when the last look for late windows ran (monotonic)
    count: int = 0  # windows held
    # device -> (what its evidence was judged from, the evidence): a device none of whose inputs
    # changed since the last run (most of them, between two runs a batch apart) is not judged again
    health: dict[str, tuple[tuple[Any, ...], Health]] = field(default_factory=dict)
    # device -> (the previous bundle's windows it chose, by id; their merge): they stop coming
    # once the device switched, so a new window of the candidate does not merge them again
    before: dict[str, tuple[tuple[int, ...], Merged]] = field(default_factory=dict)


class WindowCache:
    """The windows each rollout's gates have read (:func:`health`), so a run reads only those
    stored since the last one, not the fleet's telemetry of the hour before the rollout again
    (at 1,000 devices reporting every 10 s, 360,000 rows a run after an hour; the runs follow
    every ingest batch with reports). Held per process on the fleet; a replica taking a rollout
    over reads it whole once. Rows the retention deletes stay held while the rollout runs (the
    gates judged them before; never counted twice: the previous bundle's rollups are read only
    for a device with no raw window held)."""

    def __init__(self, max_windows: int = MAX_HELD, on_count: Callable[[int], None] = lambda n: None) -> None:
        self._held: dict[str, _Held] = {}
        self.max_windows = max_windows
        self.on_count = on_count  # told the windows held after each read (the hub's gauge)
        self._too_big: set[str] = set()  # rollouts read whole each run: holding them passed max_windows

    def windows(
        self, s: Session, rollout: str, ids: list[str], bundles: Sequence[str], floor: int
    ) -> dict[str, list[Any]] | None:
        """Per device in ``ids``, its windows of ``bundles`` received at or after ``floor``; None
        when holding them would pass ``max_windows`` in this process (the caller reads them whole,
        as every run did before the cache)."""
        if rollout in self._too_big:
            return None
        now = time.monotonic()
        for k in [k for k, h in self._held.items() if now - h.used > KEEP_IDLE_S]:
            del self._held[k]
        key = tuple(sorted(set(bundles)))
        h = self._held.get(rollout)
        if h is None or h.bundles != key or h.floor != floor:
            h = self._held[rollout] = _Held(key, floor)
        h.used = now
        read: list[Any] = []
        if h.devices:  # what was stored since the last run, for the devices read before
            since = max(floor, h.mark - LATE_S)
            # ids first (only the windows not held are read whole, their JSON decoded): those
            # above the highest read, and, every LATE_EVERY_S, those received since LATE_S before
            # the newest read that were not read (a late commit); the rest is checked here, not
            # in the query (with the bundle in it, SQLite walked the bundle's index: the hour)
            conds = [col(_W.id) > h.top_id]
            if now - h.late_at >= LATE_EVERY_S:
                h.late_at = now
                c = s.connection()
                late = [i for (i,) in c.execute(select(_W.id).where(_W.received >= since)) if i not in h.recent]
                conds += [col(_W.id).in_(late[p : p + PAGE]) for p in range(0, len(late), PAGE)]
            found: set[Any] = set()
            for cond in conds:
                for i, d, b, rec in s.connection().execute(
                    select(_W.id, _W.device, _W.bundle, _W.received).where(cond)
                ):
                    if i in h.recent:
                        continue
                    self._note(h, i, rec)  # seen, whatever its device: not looked for again
                    if d in h.devices and b in key and rec >= floor:
                        found.add(i)
            fresh = sorted(found)
            for p in range(0, len(fresh), PAGE):
                read.extend(_rows(s, col(_W.id).in_(fresh[p : p + PAGE])))
        new = [i for i in ids if i not in h.devices]
        rows = _of_devices(s, new, key, floor)
        read.extend(rows)
        for w in rows:
            self._note(h, w.id, w.received)
        h.devices.update(new)
        for w in read:
            h.windows.setdefault(w.device, []).append(w)
        for d in {w.device for w in read}:
            h.windows[d].sort(key=_newest_first, reverse=True)
        h.recent = {i: r for i, r in h.recent.items() if r >= h.mark - LATE_S}
        h.count += len(read)
        total = sum(x.count for x in self._held.values())
        if total > self.max_windows:
            del self._held[rollout]
            self._too_big.add(rollout)
            self.on_count(total - h.count)
            log.warning(
                "rollout %s: its gates' %d telemetry windows are more than this process holds (%d, "
                "hub.evidence.MAX_HELD): each run reads them whole",
                rollout,
                h.count,
                self.max_windows,
            )
            return None
        self.on_count(total)
        return {i: h.windows.get(i, []) for i in ids}

    def forget(self, rollout: str) -> None:
        """Let the rollout's windows go (it ended)."""
        if self._held.pop(rollout, None) is not None:
            self.on_count(sum(x.count for x in self._held.values()))

    def health_of(self, rollout: str, device: str, key: tuple[Any, ...]) -> Health | None:
        """The device's evidence from an earlier run judged from the same ``key``, if any."""
        h = self._held.get(rollout)
        hit = h.health.get(device) if h is not None else None
        return hit[1] if hit is not None and hit[0] == key else None

    def keep_health(self, rollout: str, device: str, key: tuple[Any, ...], health: Health) -> None:
        h = self._held.get(rollout)
        if h is not None:
            h.health[device] = (key, health)

    def merged_before(self, rollout: str, device: str, ws: Sequence[Any]) -> Merged:
        """``merge(ws)`` of the device's previous bundle's windows, again only when they changed."""
        key = tuple(-(w.id or 0) if isinstance(w, TelemetryRollup) else w.id for w in ws)  # rollups: own ids
        h = self._held.get(rollout)
        hit = h.before.get(device) if h is not None else None
        if hit is not None and hit[0] == key:
            return hit[1]
        m = merge(ws)
        if h is not None:
            h.before[device] = (key, m)
        return m

    @staticmethod
    def _note(h: _Held, i: int, received: int) -> None:
        h.top_id = max(h.top_id, i)
        h.mark = max(h.mark, received)
        h.recent[i] = received


def _newest_first(w: Any) -> tuple[int, int]:
    """The order windows are chosen in (reversed): by end, ties by id, so sketches merge in one
    order whichever way they were read (float sums depend on it)."""
    return (w.window_end, w.id)


def _rows(s: Session, *where: Any) -> list[_Window]:
    return [_Window(r) for r in s.connection().execute(select(*_COLUMNS).where(*where))]  # type: ignore[call-overload]


def _of_devices(s: Session, ids: Sequence[str], bundles: Sequence[str], floor: int) -> list[_Window]:
    """The windows of ``bundles`` received at or after ``floor`` of the devices ``ids``, read by
    device (a page of ids a query) and the bundle checked here. With the bundle in the query,
    SQLite (no statistics) chose the bundle's index and walked every window the fleet sent with
    the bundles, whatever the devices asked for: each run that found devices newly installed read
    the whole fleet's windows, and at 10,000 devices an upgrade's runs took a fifth of the hub's
    CPU (docs/scale.md, 2026-12-06)."""
    want = set(bundles)
    out: list[_Window] = []
    for p in range(0, len(ids), PAGE):
        out += [w for w in _rows(s, col(_W.device).in_(ids[p : p + PAGE]), _W.received >= floor) if w.bundle in want]
    return out


def health(
    s: Session,
    r: Rollout,
    st: RolloutState,
    rows: Rows,
    reporting: set[str],
    recovery: Sequence[tuple[int, int]] = (),
    cache: WindowCache | None = None,
) -> list[Health]:
    """Per installed device (and any device reporting in this run, which the run may install
    before the gates are judged): merged telemetry of the target bundle since the rollout
    began, and of the bundle it ran before (the hour before) for the latency comparison.
    Windows overlapping a ``recovery`` period (:meth:`Fleet.note_recovery`) are counted, not
    merged. With a ``cache`` (the fleet's), a run reads only the windows stored since the last.
    """
    ids = [
        d.id
        for d in st.devices
        if d.cohort is not None
        and d.cohort >= st.gate_floor
        and (d.state == "installed" or (d.id in reporting and d.state in ("issued", "installing")))
    ]
    if not ids:
        return []
    prevs = {rows[i]["from_bundle"] for i in ids if rows[i]["from_bundle"]}
    # a window that began before the device switched can mix the old model's samples into the
    # new one's (agents label a window by the bundle active when it closes): judge only windows
    # that started after the hub saw the device installed
    since = {i: rows[i]["updated"] if rows[i]["state"] == "installed" else 0 for i in ids}
    floor = r.created - PREVIOUS_WINDOW_S
    bundles = [st.bundle, *sorted(prevs)]
    got = cache.windows(s, r.id, ids, bundles, floor) if cache is not None else None
    if got is not None:
        held = got
    else:
        cache = None  # nothing held: nothing to judge again from
        held = {i: [] for i in ids}
        for w in sorted(_of_devices(s, ids, bundles, floor), key=_newest_first, reverse=True):
            held[w.device].append(w)
    periods = tuple(recovery)
    shape = (st.bundle, tuple((k, len(ref)) for k, ref in st.baseline.items()), periods)
    out: dict[str, Health] = {}
    new: dict[str, list[Any]] = {}
    old: dict[str, list[Any]] = {}
    left_out: dict[str, int] = {}
    keys: dict[str, tuple[Any, ...]] = {}
    for i in ids:
        # a device's evidence is a function of its windows (held newest first, only ever added
        # to), when it switched, what it ran before and the recovery periods: the same as the
        # last run's when none of them changed
        keys[i] = (len(held[i]), since[i], rows[i]["from_bundle"], shape)
        hit = cache.health_of(r.id, i, keys[i]) if cache is not None else None
        if hit is not None:
            out[i] = hit
        else:
            new[i], old[i], left_out[i] = _choose(held[i], st.bundle, rows[i]["from_bundle"], since[i], periods)
    from_rollups = _previous_from_rollups(s, r, rows, old, left_out, recovery)
    for i in new:
        m = merge(new[i])
        before = cache.merged_before(r.id, i, old[i]) if cache is not None else merge(old[i])
        prev = before.sketch
        out[i] = Health(
            i,
            m.counts["inferences"],
            m.counts["errors"],
            m.counts["cloud"],
            m.sketch.to_dict() if m.sketch.count else {},
            prev.to_dict() if prev.count else {},
            {k: c for k, ref in st.baseline.items() if (c := m.drift_counts(k, len(ref))) is not None},
            m.shadow_agree,
            m.shadow_total,
            left_out[i],
            before.counts["inferences"],
            before.counts["errors"],
            before.counts["cloud"],
        )
        if cache is not None and i not in from_rollups:  # rollups are read again each run, as before
            cache.keep_health(r.id, i, keys[i], out[i])
    return [out[i] for i in ids]


def _choose(
    ws: Sequence[Any], target: str, before: str | None, since: int, recovery: Sequence[tuple[int, int]]
) -> tuple[list[Any], list[Any], int]:
    """Which of a device's windows (newest first) count (the merging is hub.telemetry.merge): the
    newest HEALTH_WINDOWS of the target bundle since the switch or of the bundle it ran before;
    those overlapping a recovery period are counted, not merged."""
    new: list[Any] = []
    old: list[Any] = []
    left_out = 0
    for w in ws:
        if any(w.window_start <= up and w.window_end >= down for down, up in recovery):
            left_out += 1
            continue
        is_new = w.bundle == target
        if not is_new and w.bundle != before:
            continue
        if is_new and w.window_start < since:
            continue
        if len(new) + len(old) >= HEALTH_WINDOWS:
            continue
        (new if is_new else old).append(w)
    return new, old, left_out


def _previous_from_rollups(
    s: Session,
    r: Rollout,
    rows: Rows,
    old: dict[str, list[Any]],
    left_out: dict[str, int],
    recovery: Sequence[tuple[int, int]],
) -> set[str]:
    """A rollout soaking past the raw retention (:mod:`hub.rollups`) has lost the raw windows of
    the hour before it: a device with none of its previous bundle's raw windows left gets its
    1-minute rollups of that hour instead (never both, so no window counts twice)."""
    missing = [i for i, ws in old.items() if not ws and rows[i]["from_bundle"]]
    if not missing:
        return set()
    t = TelemetryRollup
    q = select(t).where(
        t.resolution == MINUTE,
        col(t.device).in_(missing),
        col(t.bundle).in_(sorted({rows[i]["from_bundle"] for i in missing})),
        t.bucket >= r.created - PREVIOUS_WINDOW_S,
        t.bucket < r.created + MINUTE,
    )
    for w in s.exec(q.order_by(col(t.bucket).desc())).all():
        if w.bundle != rows[w.device]["from_bundle"] or sum(x.windows for x in old[w.device]) >= HEALTH_WINDOWS:
            continue
        if any(w.window_start <= up and w.window_end >= down for down, up in recovery):
            left_out[w.device] += w.windows
            continue
        old[w.device].append(w)
    return set(missing)
