"""`python -m bench evidence`: what one run of a rollout's gates pays to read and merge its
devices' telemetry (hub.evidence), on a fleet with an hour of history.

N devices ran the previous bundle for ``--hours`` (a window every 10 s: 360 an hour each) and
have all installed the candidate, a minute of its windows each. Between two runs (a run follows
every ingest batch with install reports or status changes, and every tick) a tenth of the
devices send one more window. Each round adds such a batch, then measures, on the same rows:

* **ours**: ``hub.evidence.health`` with the fleet's ``WindowCache`` (warm: the runs before it
  read the rest): the windows stored since the last run are read, and only the devices with a
  new window are merged again;
* **baseline**: ``health`` without the cache: all of the devices' windows of both bundles since
  an hour before the rollout read, decoded and merged, as every run did before 2026-12-05 (that
  code read them through the ORM, ~1.6x slower again: 13.9-14.9 s at 1,000 devices);
* **limit**: reading the batch's new windows alone (JSON decoded), nothing merged: no run that
  sees them can cost less.

The bench checks ours judges what the baseline judges (the Health of every device equal) and
exits 1 when it does not.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from bench import report
from bench.hub_api import PG_DEFAULT, _pg_drop, _pg_schema
from hub import (
    evidence,
    ingest,  # noqa: F401 - gives protocol orjson, as the hub process does
)
from hub.db import make_engine, session
from hub.models import Rollout, TelemetryWindow
from hub.rollout import DeviceState, RolloutState
from hub.totals import insert_windows
from protocol.sketch import LatencySketch

OLD, NEW = "a" * 64, "b" * 64
T0 = 1_800_000_000
WINDOW_S = 10


def _window(rng: random.Random, device: str, seq: int, bundle: str, end: int, received: int) -> dict[str, Any]:
    sk = LatencySketch()
    for _ in range(30):
        sk.add(rng.uniform(0.002, 0.05))
    return dict(
        device=device, seq=seq, window_start=end - WINDOW_S, window_end=end, bundle=bundle, inferences=30,
        errors=rng.randrange(2), tpu=0, cpu=30, cloud=0, latency=sk.to_dict(),
        drift={"inputs": {f: [rng.randrange(9) for _ in range(10)] for f in ("brightness", "contrast")}},
        shadow=None, health={}, received=received,
    )  # fmt: skip


def _insert(engine: Any, rows: list[dict[str, Any]]) -> None:
    with session(engine) as s:
        insert_windows(s, rows)  # as the hub's ingest stores them
        s.commit()


def seed(engine: Any, n: int, hours: float, rng: random.Random) -> tuple[int, int]:
    """The previous bundle's history, the rollout at its end, a minute of the candidate's
    windows a device. Returns (rollout created, the next free time)."""
    per = int(hours * 3600 / WINDOW_S)
    created = T0 + per * WINDOW_S
    rows = []
    for i in range(n):
        dev = f"dev-{i:06d}"
        for k in range(per):  # the previous bundle, up to the rollout
            t = T0 + (k + 1) * WINDOW_S
            rows.append(_window(rng, dev, k + 1, OLD, t, t))
        for k in range(6):  # the candidate's first minute, from a minute after the rollout
            t = created + 60 + (k + 1) * WINDOW_S
            rows.append(_window(rng, dev, per + k + 1, NEW, t, t))
    _insert(engine, rows)
    return created, created + 60 + 7 * WINDOW_S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench evidence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000, help="devices in the rollout (default 1000)")
    ap.add_argument("--hours", type=float, default=1.0, help="hours of the previous bundle's windows (default 1)")
    ap.add_argument("--rounds", type=int, default=5, help="batches added and measured (default 5; medians)")
    ap.add_argument("--quick", action="store_true", help="200 devices")
    ap.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="registry database (default sqlite: a file in a temporary directory; postgres: a schema of "
        "its own on $EDGEFLEET_BENCH_PG or the local test database, dropped after)",
    )
    args = ap.parse_args(argv)
    n = 200 if args.quick else args.devices
    rng = random.Random(1)
    work = Path(tempfile.mkdtemp(prefix="bench-evidence-"))
    pg = os.environ.get("EDGEFLEET_BENCH_PG", PG_DEFAULT) if args.db == "postgres" else None
    url, schema = _pg_schema(pg) if pg else (f"sqlite:///{work / 'hub.db'}", "")
    try:
        engine = make_engine(url)
        t_seed = time.perf_counter()
        created, now = seed(engine, n, args.hours, rng)
        seeded_s = time.perf_counter() - t_seed
        ids = [f"dev-{i:06d}" for i in range(n)]
        r = Rollout(id="bench-evidence", serial=1, bundle=NEW, created=created)
        st = RolloutState(NEW, devices=tuple(DeviceState(i, "installed", 0, 1, created, OLD) for i in ids))
        rows = {i: {"from_bundle": OLD, "updated": created + 60, "state": "installed"} for i in ids}
        cache = evidence.WindowCache()
        with session(engine) as s:
            evidence.health(s, r, st, rows, set(), (), cache)  # the runs before: the cache is warm
        times: dict[str, list[float]] = {"ours": [], "baseline": [], "limit": []}
        same = True
        seq = 10**6
        for _ in range(args.rounds):  # a batch arrives, then each way reads it, interleaved
            batch = []
            for dev in rng.sample(ids, max(1, n // 10)):
                seq += 1
                batch.append(_window(rng, dev, seq, NEW, now, now))
            now += 1
            _insert(engine, batch)
            with session(engine) as s:
                t = time.perf_counter()
                held = evidence.health(s, r, st, rows, set(), (), cache)
                times["ours"].append(time.perf_counter() - t)
            with session(engine) as s:
                t = time.perf_counter()
                whole = evidence.health(s, r, st, rows, set(), ())
                times["baseline"].append(time.perf_counter() - t)
            with session(engine) as s:
                t = time.perf_counter()
                new_ids = s.exec(select(TelemetryWindow.id).where(TelemetryWindow.received == now - 1)).all()
                evidence._rows(s, col(TelemetryWindow.id).in_(new_ids))
                times["limit"].append(time.perf_counter() - t)
            same = same and held == whole
        with session(engine) as s:
            total = len(s.exec(select(TelemetryWindow.id)).all())
        engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if pg:
            _pg_drop(pg, schema)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    params = {
        "devices": n,
        "hours": args.hours,
        "windows": total,
        "batch": max(1, n // 10),
        "rounds": args.rounds,
        "db": args.db,
        "seed_seconds": round(seeded_s, 1),
    }
    cases = [{"case": k, "ms_per_run": ms[k], "seconds": times[k]} for k in times] + [{"ours_equals_baseline": same}]
    path = report.write("evidence", "ms/run", False, ms["ours"], ms["baseline"], ms["limit"], params, cases)
    print(
        f"{n} devices, {args.hours:g} h of the previous bundle's windows ({total} windows), "
        f"{max(1, n // 10)} new windows a run; medians of {args.rounds}:"
    )
    labels = {
        "limit": "limit (read the new windows)",
        "ours": "ours (WindowCache)",
        "baseline": "baseline (read all, merge all)",
    }
    for k, label in labels.items():
        print(f"  {label:<32} {ms[k]:9.1f} ms a run")
    print(
        f"ours {ms['baseline'] / ms['ours']:.1f}x faster than the baseline, {ms['ours'] / ms['limit']:.1f}x the limit; "
        f"every device's evidence {'equal' if same else 'DIFFERS'} to the baseline's; wrote {path}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
