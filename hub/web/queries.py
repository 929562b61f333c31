"""Read-only queries behind the dashboard pages. Nothing here writes: every operator action
goes through the REST API (role-checked and audited there).

Aggregations run in SQL where the row count grows with the fleet (device counts, the
paginated device list); time series merge at most ``MAX_WINDOWS`` telemetry rows in Python
because latency sketches and drift bins merge by addition, not by SQL aggregates.
Functions take a ``Session`` and plain values; drift needs the bundle's baseline, which the
caller supplies as ``baselines(digest) -> Baseline | None`` (the store reads files; this module
does not). A chart's PSI is the one drift verdict's (:meth:`protocol.baseline.Baseline.verdict`),
as on the device page, in the alerts and in the rollout gate; a window (device chart) or time
bucket (fleet chart) too small to judge is merged with the ones before it, drawn hollow, and the
words under the chart say so (:mod:`hub.web.series`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, cast, func, literal, or_
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col, select

from protocol.baseline import Baseline
from protocol.sketch import LatencySketch

from .. import rollups, tallies
from ..db import has_tag
from ..devices import device_public, rollout_states
from ..fleet import Fleet
from ..models import Alert, Bundle, Device, ReportRecord, Rollout, RolloutDevice, TelemetryRollup, TelemetryWindow
from ..rollout import ACTIVE_PHASES
from ..telemetry import Merged, merge
from . import series

MAX_WINDOWS = 20_000  # telemetry rows (windows or rollups) merged for one fleet chart
ROLLUP_SPAN_S = 6 * 3600  # fleet charts this long read 1-minute rollups (hub.rollups)
DEVICE_WINDOWS = 120  # points in a device's charts
PAGE_SIZES = (25, 50, 100, 200)
SORTS = ("health", "id")
MAX_OFFSET = 10_000_000

Baselines = Callable[[str], Baseline | None]


class QueryError(ValueError):
    """A dashboard filter or form value is invalid; the message names it and the value."""


# ---- the fleet page ---------------------------------------------------------------------------
def _inv(key: str) -> Any:
    return col(Device.inventory)[key]


def _board_expr() -> Any:
    return func.coalesce(_inv("board").as_string(), "unknown")


def _tpu_expr() -> Any:
    # inventory.edgetpu is a bool (agent) or {"present": bool}; as text SQLite says 1/0 and
    # PostgreSQL true/false; the dict form comes back as its JSON text
    return func.lower(func.coalesce(_inv("edgetpu").as_string(), ""))


def _tpu_true() -> Any:
    x = _tpu_expr()
    return or_(x.in_(("true", "1")), x.like('%"present":%true%'))


def fleet_overview(s: Session, now: int, fleet: Fleet | None = None) -> dict[str, Any]:
    """The fleet page. Given the ``fleet``, its counts over every device and each active
    rollout's counts are :func:`hub.tallies.tally`'s (a few seconds old from 5,000 devices,
    counted off the request path; ``counted_at`` says when); alerts and rollouts are read now."""
    if fleet is None:
        counts = fleet_counts(s)
        counted_at = now
    else:
        tallied = tallies.tally(fleet, "fleet", lambda: _in_session(fleet, fleet_counts), lambda c: int(c["total"]))
        counts, counted_at = tallied.value, int(tallied.counted_at)
    alerts_open = s.exec(select(func.count()).select_from(Alert).where(Alert.resolved == 0)).one()
    recent_alerts = s.exec(select(Alert).where(Alert.resolved == 0).order_by(col(Alert.id).desc()).limit(8)).all()
    active = s.exec(
        select(Rollout).where(col(Rollout.phase).in_(ACTIVE_PHASES)).order_by(col(Rollout.serial).desc()).limit(10)
    ).all()
    return {
        "now": now,
        **counts,
        "counted_at": counted_at,
        "alerts_open": int(alerts_open),
        "alerts": [_alert_public(a) for a in recent_alerts],
        "rollouts": [rollout_brief(s, r, fleet) for r in active],
    }


def _in_session(fleet: Fleet, query: Callable[[Session], Any]) -> Any:
    with fleet.session() as s:
        return query(s)


def fleet_counts(s: Session) -> dict[str, Any]:
    """Devices online/offline/total, by version (top 20) and by board: one GROUP BY each."""
    online = dict(s.exec(select(Device.online, func.count()).group_by(col(Device.online))).all())
    by_version = [
        {"name": n or "(none)", "version": v or "", "digest": dg, "devices": c}
        for n, v, dg, c in s.exec(
            select(Device.active_name, Device.active_version, Device.active_digest, func.count())
            .group_by(col(Device.active_name), col(Device.active_version), col(Device.active_digest))
            .order_by(func.count().desc())
            .limit(20)
        ).all()
    ]
    by_board: dict[tuple[str, str], int] = {}
    # via a subquery: PostgreSQL will not match bound JSON-path parameters in GROUP BY
    inv = select(_board_expr().label("board"), _tpu_expr().label("tpu")).subquery()
    for board, tpu, n in s.exec(select(inv.c.board, inv.c.tpu, func.count()).group_by(inv.c.board, inv.c.tpu)).all():
        key = (str(board or "unknown"), _tpu_label(tpu))
        by_board[key] = by_board.get(key, 0) + int(n)
    return {
        "online": int(online.get(True, 0)),
        "offline": int(online.get(False, 0)),
        "total": int(sum(online.values())),
        "by_version": by_version,
        "by_board": [
            {"board": b, "tpu": t, "devices": n} for (b, t), n in sorted(by_board.items(), key=lambda kv: -kv[1])
        ],
    }


def _tpu_label(v: Any) -> str:
    if isinstance(v, dict):
        v = v.get("present")
    text = str(v).lower() if v is not None else ""
    if text in ("true", "1") or ('"present"' in text and "true" in text):
        return "Edge TPU"
    if text in ("false", "0") or '"present"' in text:
        return "no TPU"
    return "unknown"


def _alert_public(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "kind": a.kind,
        "severity": a.severity,
        "device": a.device,
        "rollout": a.rollout,
        "bundle": a.bundle,
        "message": a.message,
        "created": a.created,
        "resolved": a.resolved,
    }


def rollout_brief(s: Session, r: Rollout, fleet: Fleet | None = None) -> dict[str, Any]:
    """A rollout's line on the fleet and model pages; its counts tallied when given the fleet
    (the same figure as the rollout's status)."""
    if fleet is None:
        counts = rollout_counts(s, r.id)
    else:
        rid = r.id
        counts = tallies.tally(
            fleet, ("rollout", rid), lambda: _in_session(fleet, lambda s2: rollout_counts(s2, rid)), _total
        ).value
    total = int(sum(counts.values()))
    b = s.get(Bundle, r.bundle)
    return {
        "id": r.id,
        "phase": r.phase,
        "cohort": r.cohort,
        "bundle": r.bundle,
        "bundle_name": f"{b.name}@{b.version}" if b else r.bundle[:12],
        "counts": counts,
        "total": total,
        "installed": int(counts.get("installed", 0)),
        "reason": r.reason,
        "created": r.created,
        "updated": r.updated,
        "created_by": r.created_by,
        "target": r.target,
    }


def rollout_counts(s: Session, rid: str) -> dict[str, int]:
    q = select(RolloutDevice.state, func.count()).where(RolloutDevice.rollout_id == rid).group_by(RolloutDevice.state)
    return {state: int(n) for state, n in s.exec(q).all()}


def _total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def fleet_series(s: Session, now: int, baselines: Baselines, span_s: int = 3600, buckets: int = 30) -> dict[str, Any]:
    """Fleet latency p50/p95 (ms) and drift score (worst feature PSI) per time bucket, by the
    hub's receive time. A bucket with no telemetry is ``None`` (a gap in the chart)."""
    if span_s < 60 or buckets < 1:
        raise QueryError(f"span must be >= 60 s and buckets >= 1, got span {span_s}, buckets {buckets}")
    start = now - span_s
    step = span_s / buckets
    t, r = TelemetryWindow, TelemetryRollup
    # long spans read 1-minute rollups up to what is rolled and raw windows after it: a rollup
    # merges every window of its device and minute, so the rows to merge shrink by that many
    cut = (rollups.rolled_until(s) or start) if span_s >= ROLLUP_SPAN_S else start
    cut = max(start, cut)
    rows: list[Any] = list(
        s.exec(
            select(
                col(t.received),
                col(t.bundle),
                col(t.device),
                col(t.latency),  # type: ignore[call-overload]
                col(t.drift),
                col(t.shadow),
                col(t.inferences),
                col(t.errors),
                col(t.tpu),
                col(t.cpu),
                col(t.cloud),
            )
            .where(t.received > cut)
            .order_by(col(t.received).desc())
            .limit(MAX_WINDOWS)
        ).all()
    )
    if cut > start and len(rows) < MAX_WINDOWS:
        rows += s.exec(
            select(
                col(r.bucket).label("received"),
                col(r.bundle),
                col(r.device),
                col(r.latency),  # type: ignore[call-overload]
                col(r.drift),
                col(r.shadow),
                col(r.inferences),
                col(r.errors),
                col(r.tpu),
                col(r.cpu),
                col(r.cloud),
                col(r.windows),
            )
            .where(r.resolution == rollups.MINUTE, r.bucket >= rollups.bucket_of(start, rollups.MINUTE), r.bucket < cut)
            .order_by(col(r.bucket).desc())
            .limit(MAX_WINDOWS - len(rows))
        ).all()
    # which windows go together: per time bucket and bundle (drift is judged per bundle's baseline)
    groups: list[dict[str | None, list[Any]]] = [{} for _ in range(buckets)]
    w: Any
    for w in rows:
        i = min(buckets - 1, max(0, int((w.received - start) / step)))
        groups[i].setdefault(w.bundle or None, []).append(w)  # a rollup's "" is a window's None
    x = [int(start + step * (i + 1)) for i in range(buckets)]
    merged = [{bundle: merge(ws) for bundle, ws in group.items()} for group in groups]
    sketches = []
    for parts in merged:
        sk = LatencySketch()
        for part in parts.values():
            sk = sk.merge(part.sketch)
        sketches.append(Merged(sketch=sk))
    lat = series.latency([series.Window(t, None, m) for t, m in zip(x, sketches, strict=True)], "time buckets")
    # drift per bundle (each against its own baseline; a bucket too small to judge merges back
    # through the buckets before it, as a device chart does), then the worst feature per bucket
    score: list[float | None] = [None] * buckets
    hollow = [False] * buckets
    notes: list[tuple[int, str, str]] = []
    for bundle in sorted({b for parts in merged for b in parts if b}):
        ws = [series.Window(t, bundle, parts.get(bundle, Merged())) for t, parts in zip(x, merged, strict=True)]
        dr = series.drift(ws, baselines, "time buckets")
        notes.append((dr["samples"], bundle, dr["note"]))
        for key, values in dr["drift_psi"].items():
            for i, v in enumerate(values):
                cur = score[i]
                if v is not None and (cur is None or v > cur):
                    score[i], hollow[i] = v, dr["hollow"][key][i]
    notes.sort(reverse=True)
    drift_note = notes[0][2] if len(notes) == 1 else "; ".join(f"{b[:12]}: {n}" for _, b, n in notes[:3])
    return {
        "x": x,
        "p50_ms": lat["p50_ms"],
        "p95_ms": lat["p95_ms"],
        "drift_psi": score,
        "inferences": [sum(part.counts["inferences"] for part in parts.values()) for parts in merged],
        "hollow": {**lat["hollow"], "drift_psi": hollow},
        "notes": {"latency": lat["note"], "drift": drift_note or "No drift counts in the charted time buckets yet."},
        "windows": sum(getattr(w, "windows", 1) for w in rows),
        "span_s": span_s,
    }


# ---- devices ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceFilter:
    q: str = ""
    online: bool | None = None
    group: str = ""
    board: str = ""
    tpu: bool | None = None
    tag: str = ""
    bundle: str = ""
    limit: int = 50
    offset: int = 0
    sort: str = "health"  # "health": open alerts, then offline, then the rest; "id"

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise QueryError(f"sort must be one of {SORTS}, got {self.sort!r}")
        if self.limit not in PAGE_SIZES:
            raise QueryError(f"page size must be one of {PAGE_SIZES}, got {self.limit}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise QueryError(f"offset must be within 0..{MAX_OFFSET}, got {self.offset}")
        if len(self.q) > 64:
            raise QueryError(f"search text must be at most 64 characters, got {len(self.q)}")
        if len(self.tag) > 64:
            raise QueryError(f"tag must be at most 64 characters, got {len(self.tag)}")

    @property
    def narrowed(self) -> bool:
        """Whether any filter (not paging) is set."""
        return bool(
            self.q
            or self.online is not None
            or self.group
            or self.board
            or self.tpu is not None
            or self.tag
            or self.bundle
        )

    def params(self, **override: Any) -> dict[str, Any]:
        """Query-string values for links (pagination keeps the filters)."""
        out = {
            "q": self.q,
            "online": "" if self.online is None else str(self.online).lower(),
            "group": self.group,
            "board": self.board,
            "tpu": "" if self.tpu is None else str(self.tpu).lower(),
            "tag": self.tag,
            "bundle": self.bundle,
            "limit": self.limit,
            "offset": self.offset,
            "sort": "" if self.sort == "health" else self.sort,
        }
        out.update(override)
        return {k: v for k, v in out.items() if v not in ("", None)}


def _dialect(s: Session) -> str:
    return str(s.get_bind().dialect.name)


def device_page(s: Session, f: DeviceFilter) -> dict[str, Any]:
    """One page of devices, filtered and counted in SQL (indexed columns; JSON inventory for
    board/TPU; JSON tags list for tag). Trouble first by default (``sort="health"``): devices
    with an open alert, then offline ones, then the rest, each by id; ``sort="id"`` by id only.
    Each item carries ``alerts``, the kinds of its open alerts."""
    conds: list[Any] = []
    if f.online is not None:
        conds.append(Device.online == f.online)
    if f.q:
        like = f"%{f.q}%"
        conds.append(or_(col(Device.id).like(like), col(Device.active_name).like(like), col(Device.group).like(like)))
    if f.group:
        conds.append(Device.group == f.group)
    if f.board:
        conds.append(_board_expr() == f.board)
    if f.tpu is not None:
        conds.append(_tpu_true() if f.tpu else ~_tpu_true())
    if f.tag:
        conds.append(has_tag(_dialect(s), f.tag))
    if f.bundle:
        conds.append(Device.active_digest == f.bundle)
    where = and_(*conds) if conds else None
    count_q = select(func.count()).select_from(Device)
    rows_q = select(Device)
    if where is not None:
        count_q, rows_q = count_q.where(where), rows_q.where(where)
    total = int(s.exec(count_q).one())
    if f.sort == "health":
        alerting = select(Alert.device).where(Alert.resolved == 0, col(Alert.device).is_not(None)).distinct()
        rank = case((col(Device.id).in_(alerting), 0), (col(Device.online).is_(False), 1), else_=2)
        rows_q = rows_q.order_by(rank, col(Device.id))
    else:
        rows_q = rows_q.order_by(col(Device.id))
    rows = s.exec(rows_q.offset(f.offset).limit(f.limit)).all()
    states = rollout_states(s, [d.id for d in rows])
    open_kinds: dict[str, list[str]] = {}
    for dev, kind in s.exec(
        select(Alert.device, Alert.kind)
        .where(Alert.resolved == 0, col(Alert.device).in_([d.id for d in rows]))
        .order_by(col(Alert.kind))
    ).all():
        if dev is not None and kind not in open_kinds.setdefault(dev, []):
            open_kinds[dev].append(kind)
    items = []
    for d in rows:
        pub = device_public(d, states.get(d.id))
        pub["board"] = str((d.inventory or {}).get("board") or "unknown")
        pub["tpu"] = _tpu_label((d.inventory or {}).get("edgetpu"))
        pub["alerts"] = open_kinds.get(d.id, [])
        items.append(pub)
    return {
        "items": items,
        "total": total,
        "limit": f.limit,
        "offset": f.offset,
        "page": f.offset // f.limit + 1,
        "pages": max(1, -(-total // f.limit)),
    }


def device_facets(s: Session) -> dict[str, list[str]]:
    """Values for the filter selects and suggestions (groups, boards, tags); bounded."""
    groups = [g for g in s.exec(select(Device.group).distinct().order_by(Device.group).limit(200)).all() if g]
    boards = sorted({str(b) for b in s.exec(select(_board_expr()).distinct().limit(200)).all() if b})
    return {"groups": groups, "boards": boards, "tags": _known_tags(s)}


def _known_tags(s: Session, limit: int = 200) -> list[str]:
    """Distinct tags over the fleet, unnested in SQL."""
    if _dialect(s) == "postgresql":
        tags = cast(col(Device.tags), JSONB)
        elem = func.jsonb_array_elements_text(tags).label("tag")
        inner = select(elem).where(func.jsonb_typeof(tags) == "array").subquery()
    else:
        each = func.json_each(col(Device.tags)).table_valued("value")
        inner = select(each.c.value.label("tag")).select_from(Device).join(each, literal(True)).subquery()
    rows = s.exec(select(inner.c.tag).distinct().order_by(inner.c.tag).limit(limit)).all()
    return [str(t) for t in rows if isinstance(t, str) and t]


def device_history(s: Session, device_id: str, limit: int = 50) -> list[dict[str, Any]]:
    rows = s.exec(
        select(ReportRecord)
        .where(ReportRecord.device == device_id)
        .order_by(col(ReportRecord.ts).desc(), col(ReportRecord.seq).desc())
        .limit(limit)
    ).all()
    return [
        {
            "ts": r.ts,
            "seq": r.seq,
            "stage": r.stage,
            "status": r.status,
            "reason": r.reason,
            "detail": r.detail,
            "bundle": r.bundle,
            "desired_seq": r.desired_seq,
            "progress": r.progress,
        }
        for r in rows
    ]


def device_series(s: Session, device_id: str, baselines: Baselines, limit: int = DEVICE_WINDOWS) -> dict[str, Any]:
    """Per telemetry window (oldest first): p50/p95 ms and each drift feature's PSI against the
    baseline of the bundle that window ran, which points are hollow (few samples, or merged
    with earlier windows to reach the verdict's ``min_samples``: :mod:`hub.web.series`) and the
    words under each chart; plus the newest window's health."""
    rows = list(
        reversed(
            s.exec(
                select(TelemetryWindow)
                .where(TelemetryWindow.device == device_id)
                .order_by(col(TelemetryWindow.window_end).desc())
                .limit(limit)
            ).all()
        )
    )
    windows = [series.Window(w.window_end or w.received, w.bundle, merge([w])) for w in rows]
    health = rows[-1].health if rows else {}
    return {**series.device_chart(windows, baselines), "health": health or {}}
