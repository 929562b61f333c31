"""hub.ingest folds a batch's telemetry into each device's totals once per device: the totals and
the latency sketch are what folding window by window gives, whatever the batch boundaries."""

from __future__ import annotations

import json

from sqlalchemy import func
from sqlmodel import col, select

from hub.models import Device, ReportRecord, TelemetryWindow
from hub.server import Hub
from hub.totals import json_text
from hub.transport import MemoryPublisher
from protocol.device import Health
from protocol.messages import Report, Status, Telemetry
from protocol.sketch import LatencySketch

A, B = "a" * 64, "b" * 64


def _sketch(ms: float, n: int) -> LatencySketch:
    sk = LatencySketch()
    sk.add(ms / 1000, n)
    return sk


def _window(dev: str, seq: int, bundle: str, ms: float) -> tuple[str, bytes]:
    t = Telemetry(
        dev,
        seq,
        seq * 10,
        seq * 10 + 10,
        bundle,
        {"inferences": seq, "errors": 1, "cpu": seq},
        _sketch(ms, seq).to_dict(),
    )
    return f"ef/v1/dev/{dev}/telemetry", t.to_bytes()


def test_a_batch_with_a_bundle_change_keeps_only_the_new_bundles_latency(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    # seq 1-2 on A, 3-4 on B, 5 back on A (a rollback): the sketch is seq 5's alone, on A
    plan = [(1, A, 3.0), (2, A, 4.0), (3, B, 9.0), (4, B, 12.0), (5, A, 2.0)]
    for split in (1, 2, 5):  # the same windows in batches of 1, 2 and all at once
        dev = f"fold-{split}"
        msgs = [_window(dev, seq, bundle, ms) for seq, bundle, ms in plan]
        for i in range(0, len(msgs), split):
            hub.ingest.handle(msgs[i : i + split])
        with hub.fleet.session() as s:
            d = s.get(Device, dev)
            assert d is not None
            assert (d.windows, d.inferences, d.errors, d.cpu) == (5, 15, 5, 15)
            assert d.latency_bundle == A
            assert LatencySketch.from_dict(d.latency) == _sketch(2.0, 5)


def test_windows_of_one_bundle_merge_across_and_within_batches(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    plan = [(seq, B, float(seq)) for seq in range(1, 8)]
    expected = LatencySketch()
    for seq, _, ms in plan:
        expected = expected.merge(_sketch(ms, seq))
    msgs = [_window("merge-1", seq, bundle, ms) for seq, bundle, ms in plan]
    hub.ingest.handle(msgs[:3])
    hub.ingest.handle(msgs[3:] + msgs[:2])  # two resends: duplicates fold nothing in
    with hub.fleet.session() as s:
        d = s.get(Device, "merge-1")
        assert d is not None and d.windows == 7 and d.inferences == sum(range(1, 8))
        assert LatencySketch.from_dict(d.latency) == expected


def _status(dev: str, ts: int) -> tuple[str, bytes]:
    return f"ef/v1/dev/{dev}/status", Status(dev, True, ts).to_bytes()


def test_a_batch_mixing_status_and_telemetry_only_devices_keeps_every_total(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    """Telemetry-only devices get their totals in one statement, the others through their ORM
    rows (hub.totals): in one batch both add up, and a device whose windows were all resends
    still has last_seen moved."""
    hub, _ = memhub
    hub.ingest.handle([_window(d, 1, A, 3.0) for d in ("mix-t", "mix-s", "mix-r")])
    hub.fleet.clock = lambda: 1_000_000
    batch = [
        _window("mix-t", 2, A, 4.0),  # telemetry only: ADD_TOTALS
        _status("mix-s", 5),
        _window("mix-s", 2, A, 4.0),  # with a status: its ORM row
        _window("mix-r", 1, A, 3.0),  # a resend only: SEEN
        _window("mix-new", 1, B, 9.0),  # unknown device: created
    ]
    hub.ingest.handle(batch)
    with hub.fleet.session() as s:
        rows = {d: s.get(Device, d) for d in ("mix-t", "mix-s", "mix-r", "mix-new")}
    t, st, r, new = (rows[k] for k in ("mix-t", "mix-s", "mix-r", "mix-new"))
    assert t is not None and st is not None and r is not None and new is not None
    for d in (t, st):
        assert (d.windows, d.inferences, d.errors, d.cpu, d.last_seen) == (2, 3, 2, 3, 1_000_000)
        assert d.latency_bundle == A
        assert LatencySketch.from_dict(d.latency) == _sketch(3.0, 1).merge(_sketch(4.0, 2))
    assert st.online and st.status_ts == 5
    assert (r.windows, r.inferences, r.last_seen) == (1, 1, 1_000_000)
    assert (new.windows, new.latency_bundle) == (1, B)
    assert LatencySketch.from_dict(new.latency) == _sketch(9.0, 1)


def test_window_json_columns_read_back_and_a_missing_shadow_is_sql_null(memhub: tuple[Hub, MemoryPublisher]) -> None:
    """The window rows go in through the driver (hub.totals.insert_windows) with their JSON
    columns written by orjson: they read back as SQLAlchemy's JSON type wrote them, and a window
    without a shadow record stores SQL NULL on SQLite as on PostgreSQL (the shadow tally's
    ``IS NOT NULL`` filter sees only real records)."""
    hub, _ = memhub
    t = Telemetry(
        "json-cols",
        1,
        10,
        20,
        A,
        {"inferences": 4, "cpu": 4},
        _sketch(2.5, 4).to_dict(),
        drift={"inputs": {"brightness": [1, 2, 1]}},
        health=Health(load1=0.5, extra={"ünïcode": "ok"}),
    )
    hub.ingest.handle([("ef/v1/dev/json-cols/telemetry", t.to_bytes())])
    with hub.fleet.session() as s:
        row = s.exec(select(TelemetryWindow).where(TelemetryWindow.device == "json-cols")).one()
        nulls = s.exec(
            select(func.count())
            .select_from(TelemetryWindow)
            .where(TelemetryWindow.device == "json-cols", col(TelemetryWindow.shadow).is_(None))
        ).one()
    assert LatencySketch.from_dict(row.latency) == _sketch(2.5, 4)
    assert row.drift == {"inputs": {"brightness": [1, 2, 1]}}
    assert row.health == {"load1": 0.5, "ünïcode": "ok"}
    assert row.shadow is None and nulls == 1
    assert (row.inferences, row.cpu, row.window_start, row.window_end, row.bundle) == (4, 4, 10, 20, A)


def test_reports_go_in_through_the_driver_and_read_back_whatever_their_detail_holds(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    """Install reports go in as windows do (hub.totals.insert_reports: executemany on SQLite,
    COPY on PostgreSQL): a detail with tabs, newlines, backslashes, quotes and non-ASCII, a
    progress, no bundle and nested metrics read back as sent."""
    hub, _ = memhub
    detail = 'tab\there, line\nbreak, back\\slash \\N, "quoted", ünïcode ✓'
    sent = [
        Report(
            "rep-dev", 1, 1001, "download", "progress", "ok", detail, 3, A, 0.25, {"chunks": [1, 2], "x": {"y": None}}
        ),
        Report("rep-dev", 2, 1002, "commit", "ok", "ok", "", 3, None, None, {}),
    ]
    hub.ingest.handle([("ef/v1/dev/rep-dev/report", r.to_bytes()) for r in sent])
    with hub.fleet.session() as s:
        rows = s.exec(
            select(ReportRecord).where(ReportRecord.device == "rep-dev").order_by(col(ReportRecord.seq))
        ).all()
    got = [
        (r.seq, r.ts, r.stage, r.status, r.reason, r.detail, r.desired_seq, r.bundle, r.progress, r.metrics)
        for r in rows
    ]
    assert got == [
        (1, 1001, "download", "progress", "ok", detail, 3, A, 0.25, {"chunks": [1, 2], "x": {"y": None}}),
        (2, 1002, "commit", "ok", "ok", "", 3, None, None, {}),
    ]


def test_a_json_column_value_orjson_refuses_is_written_by_the_standard_encoder() -> None:
    """orjson writes no integer keys (nor numbers past 64 bits): those columns take json.dumps,
    as before, rather than failing the batch."""
    assert json_text({"a": [1, 2.5, None]}) == '{"a":[1,2.5,null]}'
    assert json.loads(json_text({1: "x"}) or "") == {"1": "x"}
    assert json.loads(json_text({"big": 2**70}) or "") == {"big": 2**70}
    assert json_text(None) is None


def test_a_sketch_another_writer_changed_between_batches_is_read_again(memhub: tuple[Hub, MemoryPublisher]) -> None:
    """The ingest remembers each device's sketch as it wrote it (hub.totals.Sketches); a row a
    replica (or an operator's repair) wrote since holds another sketch, which is the one merged."""
    hub, _ = memhub
    hub.ingest.handle([_window("other-writer", 1, A, 3.0)])
    theirs = _sketch(50.0, 3)
    with hub.fleet.session() as s:
        d = s.get(Device, "other-writer")
        assert d is not None
        d.latency = theirs.to_dict()
        s.add(d)
        s.commit()
    hub.ingest.handle([_window("other-writer", 2, A, 4.0)])  # a telemetry-only batch: the totals statement
    with hub.fleet.session() as s:
        d = s.get(Device, "other-writer")
        assert d is not None
        assert LatencySketch.from_dict(d.latency) == theirs.merge(_sketch(4.0, 2))
    hub.ingest.handle([_status("other-writer", 5), _window("other-writer", 3, A, 5.0)])  # the ORM row's way
    with hub.fleet.session() as s:
        d = s.get(Device, "other-writer")
        assert d is not None
        assert LatencySketch.from_dict(d.latency) == theirs.merge(_sketch(4.0, 2)).merge(_sketch(5.0, 3))


def test_the_remembered_sketches_stay_within_their_bucket_budget() -> None:
    from hub.totals import Sketches

    known = Sketches()
    known.MAX_BUCKETS = 10
    sk = _sketch(3.0, 1).merge(_sketch(9.0, 1)).merge(_sketch(30.0, 1))  # three buckets
    for dev in ("a", "b", "c", "a"):  # a again: replaced, not added
        known.wrote(dev, sk.to_dict(), sk)
    assert known._buckets == 9 and set(known._by_device) == {"a", "b", "c"}
    known.wrote("d", sk.to_dict(), sk)  # 12 > 10: the memory starts over with d
    assert known._buckets == 3 and set(known._by_device) == {"d"}
    assert known.parse("a", sk.to_dict()) == sk  # forgotten: parsed, the same answer
