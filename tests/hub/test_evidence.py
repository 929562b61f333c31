"""The gates' evidence read incrementally (``hub.evidence.WindowCache``): a rollout's runs read
the windows stored since the last run, not the fleet's telemetry of the hour before again, and
judge exactly what a full read judges."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from hub import evidence, rollout_rows, ticker
from hub.models import Rollout, TelemetryWindow

from .helpers import report, status, telemetry
from .test_api import push
from .test_rollouts import OLD_MS, fleet_on

# one cohort, a soak no test reaches: the rollout stays running while windows come in
POLICY = {"cohorts": ["100%"], "soak_s": 86400, "require_samples": True}


def _rollout(hub: Any, client: Any, pub: Any, bundle_dir: Any, n: int) -> tuple[Any, Any, str]:
    """n devices on v1 with a window of it each, and a running one-cohort rollout of v2 to all."""
    v1 = fleet_on(hub, client, pub, bundle_dir, n)
    v2 = push(client, bundle_dir(version="2.0.0"))
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": POLICY}
    ).json()["id"]
    return v1, v2, str(rid)


def _both(hub: Any, rid: str, cache: evidence.WindowCache, recovery: list[tuple[int, int]]) -> tuple[Any, Any]:
    """The gates' evidence read through ``cache`` and read whole, from one snapshot of the rows."""
    with hub.fleet.session() as s:
        r = s.get(Rollout, rid)
        assert r is not None
        st, rows = rollout_rows.load(hub.fleet, s, r)
        held = evidence.health(s, r, st, rows, set(), recovery, cache)
        whole = evidence.health(s, r, st, rows, set(), recovery)
    return held, whole


def _install(hub: Any, client: Any, rid: str, digest: str, devices: list[str], seq: int) -> None:
    rows = {d["device_id"]: d for d in client.get(f"/api/v1/rollouts/{rid}?limit=500").json()["devices"]}
    hub.ingest.handle(
        [
            m
            for dev in devices
            for m in (
                (f"ef/v1/dev/{dev}/report", report(dev, seq, rows[dev]["seq"], bundle=digest)),
                (f"ef/v1/dev/{dev}/status", status(dev, active=(digest, "digits", "2.0.0"))),
            )
        ]
    )


def _window(hub: Any, dev: str, seq: int, digest: str, ms: float, start: int | None = None) -> None:
    hub.ingest.handle([(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, seq, digest, (ms,) * 50, start=start))])


def test_runs_that_read_only_the_new_windows_judge_what_a_full_read_judges_as_devices_install(
    client, memhub, bundle_dir, monkeypatch
):
    hub, pub = memhub
    v1, v2, rid = _rollout(hub, client, pub, bundle_dir, 12)
    read: list[int] = []  # window rows each query read whole
    real = evidence._rows
    monkeypatch.setattr(evidence, "_rows", lambda s, *w: read.append(len(got := real(s, *w))) or got)
    cache = evidence.WindowCache()
    devices = [f"d{i}" for i in range(12)]
    seq = 100
    for step in range(4):  # three devices install a step; every device sends a window of what it runs
        _install(hub, client, rid, v2["digest"], devices[3 * step : 3 * step + 3], seq)
        for i, dev in enumerate(devices):
            seq += 1
            on_v2 = i < 3 * step + 3  # the old bundle's windows vary; the new one's pass the gates
            _window(hub, dev, seq, v2["digest"] if on_v2 else v1["digest"], OLD_MS if on_v2 else OLD_MS * (1 + i % 3))
        read.clear()
        held, whole = _both(hub, rid, cache, [])
        assert held == whole and len(held) == 3 * step + 3
        # each device has step + 2 windows (fleet_on's and one a step). Read whole: every window of
        # every installed device. Through the cache: the newest window of each device it held, and
        # the three devices it reads for the first time, whole
        assert sum(read[:-1]) == 3 * step + 3 * (step + 2), read
        assert read[-1] == (3 * step + 3) * (step + 2), read
    read.clear()
    held, whole = _both(hub, rid, cache, [])  # nothing new: the cache reads no window
    assert held == whole and read == [12 * 5]


def test_a_window_numbered_before_the_newest_one_read_but_committed_after_is_still_read(
    client, memhub, bundle_dir, monkeypatch
):
    """Hub replicas on PostgreSQL: a batch given lower ids can commit after a later batch was
    read. A window received within LATE_S of the newest one read is read again by id."""
    hub, pub = memhub
    _, v2, rid = _rollout(hub, client, pub, bundle_dir, 2)
    _install(hub, client, rid, v2["digest"], ["d0", "d1"], 50)
    _window(hub, "d0", 51, v2["digest"], OLD_MS)
    cache = evidence.WindowCache()
    with hub.fleet.session() as s:
        newest = s.exec(select(TelemetryWindow).where(TelemetryWindow.seq == 51)).one()
        base = newest.model_dump(exclude={"id", "seq"})
        s.add(TelemetryWindow(**{**base, "id": 10_000_000, "seq": 52}))  # read first...
        s.commit()
    held, whole = _both(hub, rid, cache, [])
    assert held == whole
    with hub.fleet.session() as s:  # ...then one numbered before it commits, slow latencies
        s.add(TelemetryWindow(**{**base, "id": 5_000_000, "seq": 53, "latency": _slow_sketch()}))
        s.commit()
    held, whole = _both(hub, rid, cache, [])
    assert held == whole
    d0 = next(h for h in held if h.device == "d0")
    assert d0.inferences == 150  # three windows of 50
    # the look for late windows runs at most every LATE_EVERY_S (it reads a minute of the fleet's
    # ids): one committed right after a look waits for the next
    with hub.fleet.session() as s:
        s.add(TelemetryWindow(**{**base, "id": 6_000_000, "seq": 54}))
        s.commit()
    held, whole = _both(hub, rid, cache, [])
    assert next(h for h in held if h.device == "d0").inferences == 150 and held != whole
    monkeypatch.setattr(evidence, "LATE_EVERY_S", 0.0)
    held, whole = _both(hub, rid, cache, [])
    assert held == whole and next(h for h in held if h.device == "d0").inferences == 200


def test_windows_in_a_broker_recovery_are_left_out_the_same_way_when_read_incrementally(client, memhub, bundle_dir):
    hub, pub = memhub
    _, v2, rid = _rollout(hub, client, pub, bundle_dir, 4)
    _install(hub, client, rid, v2["digest"], ["d0", "d1", "d2", "d3"], 50)
    cache = evidence.WindowCache()
    t0 = hub.fleet.clock()
    for k in range(3):
        for i in range(4):
            _window(hub, f"d{i}", 60 + 4 * k + i, v2["digest"], OLD_MS, start=t0 + 20 * k)
        recovery = [(t0 + 15, t0 + 25)]  # overlaps the second round's windows
        held, whole = _both(hub, rid, cache, recovery)
        assert held == whole
    assert all(h.recovery_windows == 1 for h in held), held


@pytest.mark.parametrize("idle", [False, True])
def test_a_rollout_whose_bundles_change_or_that_idles_is_read_whole_again(
    client, memhub, bundle_dir, monkeypatch, idle
):
    hub, pub = memhub
    _, v2, rid = _rollout(hub, client, pub, bundle_dir, 2)
    _install(hub, client, rid, v2["digest"], ["d0", "d1"], 50)
    _window(hub, "d0", 51, v2["digest"], OLD_MS)
    cache = evidence.WindowCache()
    _both(hub, rid, cache, [])
    first = cache._held[rid]
    if idle:
        monkeypatch.setattr(evidence, "KEEP_IDLE_S", -1.0)
        _both(hub, rid, cache, [])
        assert cache._held[rid] is not first  # let go and read again
    else:
        with hub.fleet.session() as s:
            r = s.get(Rollout, rid)
            assert r is not None
            cache.windows(s, rid, ["d0"], [v2["digest"], "0" * 64], r.created - evidence.PREVIOUS_WINDOW_S)
        assert cache._held[rid] is not first and cache._held[rid].bundles == tuple(sorted([v2["digest"], "0" * 64]))


def _slow_sketch() -> dict[str, Any]:
    from protocol.sketch import LatencySketch

    sk = LatencySketch()
    for _ in range(50):
        sk.add(OLD_MS * 10)
    return sk.to_dict()


def test_a_device_with_no_new_window_is_not_judged_again_and_one_with_a_new_window_merges_only_its_new_ones(
    client, memhub, bundle_dir, monkeypatch
):
    hub, pub = memhub
    _, v2, rid = _rollout(hub, client, pub, bundle_dir, 5)
    devices = [f"d{i}" for i in range(5)]
    _install(hub, client, rid, v2["digest"], devices, 50)
    for i, dev in enumerate(devices):
        _window(hub, dev, 60 + i, v2["digest"], OLD_MS)
    merged: list[int] = []
    real = evidence.merge
    monkeypatch.setattr(evidence, "merge", lambda ws: merged.append(len(ws)) or real(ws))
    cache = evidence.WindowCache()
    with hub.fleet.session() as s:
        r = s.get(Rollout, rid)
        assert r is not None
        st, rows = rollout_rows.load(hub.fleet, s, r)
        first = evidence.health(s, r, st, rows, set(), (), cache)
        assert len(merged) == 10  # the new and the previous bundle's windows of each device
        merged.clear()
        assert evidence.health(s, r, st, rows, set(), (), cache) == first and merged == []
    _window(hub, "d3", 70, v2["digest"], OLD_MS * 10)
    held, whole = _both(hub, rid, cache, [])
    assert held == whole
    # through the cache: d3's two windows of the candidate merged again, its previous bundle's
    # window not (it did not change); then the whole read merged everything
    assert merged[0] == 2 and len(merged) == 1 + 10, merged
    d3 = next(h for h in held if h.device == "d3")
    assert d3.latency != next(h for h in first if h.device == "d3").latency


def test_a_rollout_whose_windows_would_pass_what_the_process_holds_is_read_whole_and_says_so(
    client, memhub, bundle_dir, caplog
):
    hub, pub = memhub
    _, v2, rid = _rollout(hub, client, pub, bundle_dir, 4)
    _install(hub, client, rid, v2["digest"], ["d0", "d1", "d2", "d3"], 50)
    for i in range(4):
        _window(hub, f"d{i}", 60 + i, v2["digest"], OLD_MS)
    cache = evidence.WindowCache(max_windows=5)  # 8 windows: 4 of each bundle
    held, whole = _both(hub, rid, cache, [])
    assert held == whole and rid not in cache._held
    assert "more than this process holds (5" in caplog.text
    _window(hub, "d0", 70, v2["digest"], OLD_MS * 10)
    held, whole = _both(hub, rid, cache, [])  # still judged, from a whole read
    assert held == whole and next(h for h in held if h.device == "d0").inferences == 100


def test_the_hub_holds_a_running_rollouts_windows_shows_them_in_its_gauge_and_lets_them_go_when_it_completes(
    client, memhub, bundle_dir
):
    hub, pub = memhub
    fleet_on(hub, client, pub, bundle_dir, 3)
    v2 = push(client, bundle_dir(version="2.0.0"))
    policy = {"cohorts": ["100%"], "soak_s": 0, "require_samples": True, "gates": {"min_samples": 100}}
    rid = client.post(
        "/api/v1/rollouts", json={"bundle": v2["digest"], "target": {"all": True}, "policy": policy}
    ).json()["id"]
    gauge = hub.fleet.metrics.gate_windows_held
    devices = ["d0", "d1", "d2"]
    _install(hub, client, rid, v2["digest"], devices[:2], 50)  # two installed: the gates wait for the third
    ticker.tick(hub.fleet)
    assert client.get(f"/api/v1/rollouts/{rid}").json()["phase"] == "running"
    held = hub.fleet.gate_windows._held[rid].count
    assert held >= 2 and gauge._value.get() == held  # each installed device's window of v1
    _install(hub, client, rid, v2["digest"], devices[2:], 60)
    for i, dev in enumerate(devices):
        hub.ingest.handle([(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 70 + i, v2["digest"], (OLD_MS,) * 200))])
    ticker.tick(hub.fleet)
    assert client.get(f"/api/v1/rollouts/{rid}").json()["phase"] == "completed"
    assert rid not in hub.fleet.gate_windows._held and gauge._value.get() == 0


def _fleet_windows(n: int) -> Any:
    """A registry of ``n`` devices with 5 windows each of bundle A, plus, for the first device, one
    of another bundle and one from before the floor."""
    import tempfile

    from hub import migrations
    from hub.db import make_engine

    e = make_engine(f"sqlite:///{tempfile.mkdtemp()}/hub.db", create=False)
    migrations.upgrade(e)
    row = (
        "INSERT INTO telemetry_window (device, seq, window_start, window_end, bundle, inferences, errors, tpu, "
        "cpu, cloud, latency, drift, health, received) VALUES (?,?,0,?,?,0,0,0,0,0,'{}','{}','{}',?)"
    )
    with e.begin() as c:
        c.exec_driver_sql(row, [(f"d{i:05d}", k, 1000 + k, "a" * 64, 1000 + k) for i in range(n) for k in range(5)])
        c.exec_driver_sql(row, [("d00000", 5, 1005, "c" * 64, 1005), ("d00000", 6, 10, "a" * 64, 10)])
    return e


def _steps(e: Any, ids: list[str]) -> tuple[int, list[Any]]:
    """SQLite virtual-machine steps (in thousands) a cache read of ``ids`` as newly installed took, and what it read."""
    from sqlmodel import Session

    n = [0]

    def count() -> int:
        n[0] += 1
        return 0

    with Session(e) as s:
        raw = s.connection().connection.dbapi_connection
        assert raw is not None
        raw.set_progress_handler(count, 1000)
        got = evidence.WindowCache().windows(s, "r1", ids, ["a" * 64, "b" * 64], 500)
        raw.set_progress_handler(None, 0)
    assert got is not None
    return n[0], [w for ws in got.values() for w in ws]


def test_reading_newly_installed_devices_windows_costs_the_same_in_a_fleet_ten_times_larger() -> None:
    """A run that finds devices newly installed reads their windows by device: with the bundle in
    the query SQLite walked the bundle's index, every window of the fleet, so each run's cost grew
    with the fleet (a fifth of the hub's CPU in a 10,000-device upgrade)."""
    ids = [f"d{i:05d}" for i in range(10)]
    small, got = _steps(_fleet_windows(200), ids)
    large, got_large = _steps(_fleet_windows(2000), ids)
    assert len(got) == len(got_large) == 50  # 5 a device: not the other bundle's, not before the floor
    assert {w.bundle for w in got} == {"a" * 64} and min(w.received for w in got) >= 500
    assert large <= 2 * max(small, 1), (small, large)
