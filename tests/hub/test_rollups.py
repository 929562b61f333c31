"""hub.rollups: raw windows become 1-minute then 1-hour rollups that merge to exactly what the
windows merge to; retention never drops what is not rolled up yet; readers count each window once."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from hub import rollups
from hub.models import TelemetryRollup, TelemetryWindow
from hub.rollups import GRACE_S, HOUR, MAX_BUCKETS, MINUTE, fold, span, to_row
from hub.server import Hub
from hub.telemetry import merge
from hub.transport import MemoryPublisher
from protocol.messages import Telemetry
from protocol.sketch import LatencySketch

A, B = "a" * 64, "b" * 64
T0 = 1_800_000_000 // HOUR * HOUR  # an hour boundary


@pytest.mark.parametrize(
    ("watermark", "first", "now", "res", "expected"),
    [
        (None, None, T0 + 999, MINUTE, None),  # nothing stored
        (None, T0 + 5, T0 + 60 + GRACE_S - 1, MINUTE, None),  # first minute still within its grace
        (None, T0 + 5, T0 + 60 + GRACE_S, MINUTE, (T0, T0 + 60)),  # ... and closed
        (T0 + 120, T0 + 130, T0 + 3600, MINUTE, (T0 + 120, T0 + 120 + MAX_BUCKETS[MINUTE] * 60)),  # bounded
        (T0 + 120, T0 + 3300, T0 + 3600, MINUTE, (T0 + 3300, T0 + 3600 - GRACE_S)),  # gap skipped
        (T0, T0 - 500, T0 + 360, MINUTE, (T0, T0 + 240)),  # a source row older than the watermark: never re-rolled
        (None, T0 + 10, T0 + HOUR + GRACE_S, HOUR, (T0, T0 + HOUR)),
        (T0 + HOUR, T0 + HOUR, T0 + HOUR + 60, HOUR, None),  # the open hour
    ],
)
def test_span_rolls_closed_buckets_from_the_watermark_a_bounded_number_at_a_time(watermark, first, now, res, expected):
    assert span(watermark, first, now, res) == expected


@dataclass
class Row:
    device: str
    latency: dict[str, Any]
    inferences: int
    errors: int
    tpu: int
    cpu: int
    cloud: int
    drift: dict[str, Any]
    shadow: dict[str, Any] | None


def _random_rows(rng: random.Random, n: int) -> list[tuple[int, Row, str | None, int, int]]:
    out = []
    for i in range(n):
        sk = LatencySketch()
        for _ in range(rng.randrange(0, 20)):
            sk.add(rng.uniform(0.0005, 0.2))
        bins = rng.choice([5, 5, 5, 10])  # a feature binned two ways (a baseline changed mid-bucket)
        shadow = None
        if rng.random() < 0.5:
            samples = rng.randrange(1, 50)
            shadow = {"samples": samples, "errors": 0, "agreement": rng.randrange(0, samples + 1) / samples}
        row = Row(
            device=rng.choice(["d1", "d2"]),
            latency=sk.to_dict() if sk.count else {},
            inferences=rng.randrange(100),
            errors=rng.randrange(3),
            tpu=rng.randrange(50),
            cpu=rng.randrange(50),
            cloud=rng.randrange(5),
            drift={"inputs": {"brightness": [rng.randrange(9) for _ in range(bins)]}, "outputs": {"top1": [i % 3, 1]}},
            shadow=shadow,
        )
        t = T0 + rng.randrange(0, 3 * HOUR)
        out.append((t, row, rng.choice([A, B, None]), t - 10, t))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_rollups_merge_to_exactly_what_their_windows_merge_to(seed: int) -> None:
    rows = _random_rows(random.Random(seed), 400)
    minutes = {k: to_row(k, f, MINUTE) for k, f in fold(rows, MINUTE).items()}
    minute_rows = [TelemetryRollup(**r) for r in minutes.values()]
    hours = fold(((m.bucket, m, m.bundle, m.window_start, m.window_end) for m in minute_rows), HOUR)
    hour_rows = [TelemetryRollup(**to_row(k, f, HOUR)) for k, f in hours.items()]
    for device in ("d1", "d2"):
        for bundle in (A, B, None):
            raw = merge(r for _, r, b, _, _ in rows if r.device == device and b == bundle)
            for rolled in (minute_rows, hour_rows):
                m = merge(x for x in rolled if x.device == device and x.bundle == (bundle or ""))
                assert m.windows == raw.windows and m.counts == raw.counts
                assert m.sketch.counts == raw.sketch.counts and m.sketch.count == raw.sketch.count
                assert m.sketch.total == pytest.approx(raw.sketch.total) and m.sketch.max == raw.sketch.max
                assert m.drift == raw.drift
                assert (m.shadow_agree, m.shadow_total) == (raw.shadow_agree, raw.shadow_total)
    assert sum(r.windows for r in hour_rows) == len(rows)


def _feed(hub: Hub, at: int, dev: str, seq: int, ms: float, bundle: str = A) -> None:
    sk = LatencySketch()
    sk.add(ms / 1000, 10)
    t = Telemetry(
        dev, seq, at - 10, at, bundle, {"inferences": 10, "cpu": 10}, sk.to_dict(), {"inputs": {"f": [seq % 5, 1]}}
    )
    hub.fleet.clock = lambda: at
    hub.ingest.handle([(f"ef/v1/dev/{dev}/telemetry", t.to_bytes())])


def _count(hub: Hub, table: Any, **where: Any) -> int:
    with hub.fleet.session() as s:
        q = s.query(table)
        for k, v in where.items():
            q = q.filter(getattr(table, k) == v)
        return int(q.count())


def test_the_job_rolls_minutes_then_hours_and_retention_keeps_what_is_not_rolled(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    hub, _ = memhub
    # a window a minute for two devices over 2 hours
    seq = 0
    for at in range(T0 + 5, T0 + 2 * HOUR, 60):
        seq += 1
        _feed(hub, at, "r1", seq, 3.0)
        _feed(hub, at, "r2", seq, 9.0, B)
    total = _count(hub, TelemetryWindow)
    assert total == 2 * seq
    now = T0 + 2 * HOUR + GRACE_S
    hub.fleet.clock = lambda: now
    # before anything is rolled, retention drops no raw window however old
    cfg = hub.fleet.config
    assert rollups.prune(hub.fleet)["raw"] == 0
    while True:  # catch up a bounded number of buckets per run
        done = rollups.roll(hub.fleet)
        if not any(done.values()):
            break
    assert _count(hub, TelemetryRollup, resolution=MINUTE) == 2 * 120
    assert _count(hub, TelemetryRollup, resolution=HOUR) == 2 * 2
    assert rollups.roll(hub.fleet) == {MINUTE: 0, HOUR: 0}  # idempotent
    with hub.fleet.session() as s:
        for res in (MINUTE, HOUR):
            for dev, bundle in (("r1", A), ("r2", B)):
                raw = merge(s.query(TelemetryWindow).filter(TelemetryWindow.device == dev).all())
                rolled = merge(
                    s.query(TelemetryRollup)
                    .filter(TelemetryRollup.device == dev, TelemetryRollup.resolution == res)
                    .all()
                )
                assert rolled.windows == raw.windows == seq and rolled.counts == raw.counts
                assert rolled.sketch.counts == raw.sketch.counts and rolled.drift == raw.drift
                assert {r.bundle for r in s.query(TelemetryRollup).filter(TelemetryRollup.device == dev)} == {bundle}
    # hours later: raw windows past raw_retention go, rolled rows stay; readers see every window once
    later = T0 + 2 * HOUR + cfg.raw_retention + 30 * MINUTE
    hub.fleet.clock = lambda: later
    pruned = rollups.prune(hub.fleet)
    assert pruned["raw"] == total and pruned["minute"] == 0 and pruned["hour"] == 0
    with hub.fleet.session() as s:
        raw_rows, rolled_rows = rollups.read_since(s, T0, later, cfg.raw_retention)
        assert raw_rows == [] and sum(r.windows for r in rolled_rows) == total
    # weeks later: minute rollups past minute_retention go (they are in hours), then hours
    hub.fleet.clock = lambda: T0 + cfg.minute_retention + 3 * HOUR
    assert rollups.prune(hub.fleet)["minute"] == 2 * 120
    hub.fleet.clock = lambda: T0 + cfg.hour_retention + 3 * HOUR
    assert rollups.prune(hub.fleet)["hour"] == 4


def test_a_reader_across_the_boundary_counts_each_window_once(memhub: tuple[Hub, MemoryPublisher]) -> None:
    hub, _ = memhub
    for i, at in enumerate(range(T0 + 5, T0 + 40 * MINUTE, 30)):
        _feed(hub, at, "x1", i + 1, 4.0)
    now = T0 + 40 * MINUTE + GRACE_S
    hub.fleet.clock = lambda: now
    while any(rollups.roll(hub.fleet).values()):
        pass
    retention = 20 * MINUTE  # raw windows of the last 20 minutes, rollups before
    with hub.fleet.session() as s:
        raw_rows, rolled_rows = rollups.read_since(s, T0, now, retention)
        assert raw_rows and rolled_rows
        assert len(raw_rows) + sum(r.windows for r in rolled_rows) == 80
        cut = rollups.boundary(s, now, retention)
        assert all(w.received >= cut for w in raw_rows) and all(r.bucket < cut for r in rolled_rows)


def test_a_rollout_soaking_past_the_raw_retention_keeps_its_previous_bundles_latency_and_counts(
    memhub: tuple[Hub, MemoryPublisher],
) -> None:
    """The gates compare the new bundle's p95 and rates with the hour before the rollout; once
    those raw windows are pruned, the hour's minute rollups stand in for them, counted once."""
    from hub import evidence
    from hub.models import Rollout
    from hub.rollout import DeviceState, RolloutState

    hub, _ = memhub
    created = T0 + HOUR
    for i, at in enumerate(range(T0 + 5, created, 60)):  # the previous bundle (A), the hour before
        _feed(hub, at, "g1", i + 1, 5.0, A)
    hub.fleet.clock = lambda: created + 10 * MINUTE
    while any(rollups.roll(hub.fleet).values()):
        pass
    _feed(hub, created + 20 * MINUTE, "g1", 100, 50.0, B)  # the new bundle (B), after the switch
    r = Rollout(id="r1", bundle=B, created=created)
    st = RolloutState(B, cohort=0, devices=(DeviceState("g1", "installed", 0, from_bundle=A),))
    rows = {"g1": {"from_bundle": A, "updated": created, "state": "installed"}}

    def health():
        with hub.fleet.session() as s:
            (h,) = evidence.health(s, r, st, rows, set())
        return h

    before = health()  # raw windows still there
    assert LatencySketch.from_dict(dict(before.prev_latency)).count == 60 * 10
    assert (before.prev_inferences, before.prev_cloud, before.inferences) == (60 * 10, 0, 10)
    with hub.fleet.session() as s:  # the raw retention passes: the hour before the rollout is pruned
        s.query(TelemetryWindow).filter(TelemetryWindow.bundle == A).delete()
        s.commit()
    after = health()
    assert dict(after.prev_latency) == dict(before.prev_latency)
    assert (after.prev_inferences, after.prev_errors, after.prev_cloud) == (60 * 10, 0, 0)
    assert LatencySketch.from_dict(dict(after.latency)).count == 10


def test_a_summary_reaching_past_the_raw_retention_reads_the_rollups_once(memhub: tuple[Hub, MemoryPublisher]) -> None:
    from hub import telemetry

    hub, _ = memhub
    for i, at in enumerate(range(T0 + 5, T0 + HOUR, 60)):
        _feed(hub, at, "s1", i + 1, 4.0 + i % 7)
    hub.fleet.clock = lambda: T0 + HOUR + 5 * MINUTE
    while any(rollups.roll(hub.fleet).values()):
        pass
    before = telemetry.summary(hub.fleet, bundle=A, since=T0)
    assert before["windows"] == 60
    hub.fleet.clock = lambda: T0 + HOUR + hub.fleet.config.raw_retention  # the first hour is past raw
    mid = telemetry.summary(hub.fleet, bundle=A, since=T0)  # raw not pruned yet: still each window once
    assert rollups.prune(hub.fleet)["raw"] > 0
    after = telemetry.summary(hub.fleet, bundle=A, since=T0)
    for s in (mid, after):
        assert {k: s[k] for k in ("windows", "inferences", "p50_ms", "p95_ms", "devices")} == {
            k: before[k] for k in ("windows", "inferences", "p50_ms", "p95_ms", "devices")
        }
    assert after["since"] == before["since"] and after["until"] == before["until"]
