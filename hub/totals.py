"""A batch's telemetry (:mod:`hub.ingest`): its window rows in one statement, and each device's
running totals folded once; its reports' rows for one statement too."""

from __future__ import annotations

import json
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select as columns, update
from sqlmodel import Session

from protocol.messages import COUNT_KEYS, Report
from protocol.sketch import LatencySketch, merge_all

from .models import Device, ReportRecord, TelemetryWindow


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

    def apply(self, d: Device, known: Sketches) -> None:
        """Onto a device's ORM row (a batch that also changes its status or reports)."""
        d.windows += self.windows
        d.inferences += self.counts["inferences"]
        d.errors += self.counts["errors"]
        d.tpu += self.counts["tpu"]
        d.cpu += self.counts["cpu"]
        d.cloud += self.counts["cloud"]
        d.latency_bundle = self.bundle  # unchanged unless the bundle changed (reset)
        d.latency = self.latency(d.latency, d.id, known)

    def latency(self, stored: dict[str, Any], device: str, known: Sketches) -> dict[str, Any]:
        """The device's latency sketch after the batch, given the stored one (parsed again
        unless ``known`` holds it)."""
        base = LatencySketch() if self.reset else known.parse(device, stored)
        merged = merge_all(base, self.sketches)
        out = merged.to_dict()
        known.wrote(device, out, merged)
        return out

    def params(self, device: str, stored: dict[str, Any], now: int, known: Sketches) -> dict[str, Any]:
        """The bind parameters of :data:`ADD_TOTALS` for a device whose row the batch did not load."""
        c = self.counts
        return {
            "b_id": device,
            "b_seen": now,
            "b_windows": self.windows,
            "b_inferences": c["inferences"],
            "b_errors": c["errors"],
            "b_tpu": c["tpu"],
            "b_cpu": c["cpu"],
            "b_cloud": c["cloud"],
            "b_bundle": self.bundle,
            "b_latency": self.latency(stored, device, known),
        }


class Sketches:
    """The latency sketch this process last wrote to each device's row, with the dict it wrote.
    A device's running sketch holds every window since its bundle changed (hundreds of buckets);
    parsing it again for every batch was half of what a batch's totals cost. A stored dict equal
    to the one written (compared whole) is that sketch; any other (a rolled-back batch, another
    replica's write) is parsed as before, so the answer is the same either way."""

    # buckets remembered (the written dict's and the sketch's, ~170 bytes a bucket: ~170 MB; a
    # device's sketch spans ~50 buckets from 1 to 100 ms); past it the memory starts over
    MAX_BUCKETS = 1_000_000

    def __init__(self) -> None:
        self._by_device: dict[str, tuple[dict[str, Any], LatencySketch]] = {}
        self._buckets = 0

    def parse(self, device: str, stored: dict[str, Any]) -> LatencySketch:
        hit = self._by_device.get(device)
        if hit is not None and hit[0] == stored:
            return hit[1]
        return LatencySketch.from_dict(stored)

    def wrote(self, device: str, written: dict[str, Any], sketch: LatencySketch) -> None:
        old = self._by_device.get(device)
        self._buckets += len(sketch.counts) - (len(old[1].counts) if old else 0)
        if self._buckets > self.MAX_BUCKETS:
            self._by_device.clear()
            self._buckets = len(sketch.counts)
        self._by_device[device] = (written, sketch)


_T = Device.__table__  # type: ignore[attr-defined]
# A batch's windows added to the totals of devices it only has telemetry from, in one executemany:
# loading, dirtying and flushing ORM rows for them was a third of Ingest.handle (docs/scale.md).
ADD_TOTALS = (
    update(_T)
    .where(_T.c.id == bindparam("b_id"))
    .values(
        last_seen=bindparam("b_seen"),
        windows=_T.c.windows + bindparam("b_windows"),
        inferences=_T.c.inferences + bindparam("b_inferences"),
        errors=_T.c.errors + bindparam("b_errors"),
        tpu=_T.c.tpu + bindparam("b_tpu"),
        cpu=_T.c.cpu + bindparam("b_cpu"),
        cloud=_T.c.cloud + bindparam("b_cloud"),
        latency_bundle=bindparam("b_bundle"),
        latency=bindparam("b_latency", type_=_T.c.latency.type),
    )
)
# ...and of those whose windows were all resends (or another channel's): only last_seen moves
SEEN = update(_T).where(_T.c.id == bindparam("b_id")).values(last_seen=bindparam("b_seen"))


# (device, seq) pairs already stored among a batch's, per table: built once, as building an IN
# query cost more than running it (hub.ingest)
STORED: dict[Any, Any] = {}
for _m in (TelemetryWindow, ReportRecord):
    _c: Any = _m.__table__.c  # type: ignore[union-attr]
    STORED[_m] = columns(_c.device, _c.seq).where(
        _c.device.in_(bindparam("devs", expanding=True)), _c.seq.in_(bindparam("seqs", expanding=True))
    )


_WINDOW_COLUMNS = (
    "device", "seq", "window_start", "window_end", "bundle", "latency", "drift", "shadow", "health", "received",
    *COUNT_KEYS,
)  # fmt: skip
_JSON_COLUMNS = frozenset({"latency", "drift", "shadow", "health"})


def report_row(m: Report, now: int) -> dict[str, Any]:
    """A report's registry row, inserted with the batch's others in one statement (an ORM
    object each was a sixth of the worker's time during a 1,000-device rollout)."""
    return {
        "device": m.device,
        "seq": m.seq,
        "ts": m.ts,
        "stage": m.stage,
        "status": m.status,
        "reason": m.reason,
        "detail": m.detail,
        "desired_seq": m.desired_seq,
        "bundle": m.bundle,
        "progress": m.progress,
        "metrics": m.metrics,
        "received": now,
    }


def json_text(value: Any) -> str | None:
    """A JSON column's text, as SQLAlchemy's JSON type would store it, at a tenth of the cost:
    orjson (the columns hold parsed messages: string keys, finite numbers); anything orjson will
    not write goes through :func:`json.dumps` as before. ``None`` is SQL NULL."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def insert_windows(s: Session, rows: list[dict[str, Any]]) -> None:
    """A batch's window rows in one statement, inside the batch's transaction: COPY on
    PostgreSQL (no per-row round trip or bind), the driver's executemany on SQLite (SQLAlchemy's
    bulk insert built a parameter dict and encoded every JSON column again: a third of
    ``Ingest.handle``); the ORM's bulk insert elsewhere. A duplicate key fails either way, and
    the batch is retried message by message (:meth:`Ingest.handle`)."""
    _insert(s, TelemetryWindow, _WINDOW_COLUMNS, _JSON_COLUMNS, rows)


def insert_reports(s: Session, rows: list[dict[str, Any]]) -> None:
    """A batch's install reports (:func:`report_row`: its keys are the columns), as
    :func:`insert_windows` inserts windows (through the ORM's bulk insert they took ~50 us each,
    py-spy of ``bench rollout``'s hub)."""
    if rows:
        _insert(s, ReportRecord, tuple(rows[0]), frozenset({"metrics"}), rows)


def _insert(
    s: Session, model: Any, cols: tuple[str, ...], json_cols: frozenset[str], rows: list[dict[str, Any]]
) -> None:
    conn = s.connection()
    if conn.dialect.name not in ("sqlite", "postgresql"):
        s.execute(insert(model), rows)
        return
    table = model.__tablename__
    values = [[json_text(r[c]) if c in json_cols else r[c] for c in cols] for r in rows]
    names = ", ".join(cols)
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(cols))
        conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", [tuple(v) for v in values])
        return
    driver: Any = conn.connection.driver_connection  # psycopg's, in the session's transaction
    with (
        driver.cursor() as cur,
        cur.copy(f"COPY {table} ({names}) FROM STDIN") as cp,
    ):
        for v in values:
            cp.write_row(v)
