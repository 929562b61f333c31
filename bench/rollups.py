"""`python -m bench rollups`: what the hub's ticker pays to roll one minute of telemetry up
(hub.rollups), per window, at fleet size.

N devices each send 6 windows in one minute (a latency sketch of 30 requests, three drift
features of 10 bins: what the simulator sends); the minute is rolled up as the ticker does, in a
transaction then rolled back, best of ``--rounds``:

* **ours**: ``hub.rollups`` as it runs in the hub (plain rows, JSON columns through orjson where
  that is json's answer, one table insert);
* **baseline**: the same windows loaded as ORM objects and folded (how the hub read them before);
* **limit**: only reading the rows the fold needs, JSON decoded, nothing merged or written: no
  rollup can cost less than reading what it rolls.

At 10,000 devices reporting every 10 s the hub receives 60,000 windows a minute; this job shares
the process (and the interpreter) with ingest, so its cost per window adds to the ingest lag
(``bench rollout --lag-only``). The bench checks that ours writes what the baseline folds.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select as columns
from sqlmodel import select

from bench import report
from hub import (
    ingest,  # noqa: F401 - gives protocol orjson, as the hub process does
    rollups,
)
from hub.db import make_engine, session
from hub.models import TelemetryRollup, TelemetryWindow
from protocol.messages import COUNT_KEYS
from protocol.sketch import LatencySketch

T0 = 1_800_000_000 // 3600 * 3600
PER_DEVICE = 6  # one window every 10 s


def seed(engine: Any, n: int, rng: random.Random) -> int:
    rows = []
    for i in range(n):
        for k in range(PER_DEVICE):
            sk = LatencySketch()
            for _ in range(30):
                sk.add(rng.uniform(0.002, 0.05))
            t = T0 + k * 10 + rng.randrange(10)
            drift = {
                "inputs": {f: [rng.randrange(9) for _ in range(10)] for f in ("brightness", "contrast")},
                "outputs": {"top1": [rng.randrange(9) for _ in range(10)]},
            }
            rows.append(
                dict(
                    device=f"dev-{i:06d}",
                    seq=k + 1,
                    window_start=t - 10,
                    window_end=t,
                    bundle="a" * 64,
                    inferences=30,
                    errors=rng.randrange(2),
                    tpu=0,
                    cpu=30,
                    cloud=0,
                    latency=sk.to_dict(),
                    drift=drift,
                    shadow=None,
                    health={},
                    received=t,
                )
            )
    with session(engine) as s:
        for at in range(0, len(rows), 20_000):
            s.execute(insert(TelemetryWindow), rows[at : at + 20_000])
        s.commit()
    return len(rows)


NOW = T0 + 60 + rollups.GRACE_S + 1  # the minute is closed
SPAN = (T0, T0 + 60)


def ours(engine: Any) -> tuple[float, list[dict[str, Any]]]:
    with session(engine) as s:
        t = time.perf_counter()
        rollups._roll_minutes(s, NOW)
        took = time.perf_counter() - t
        written = [dict(r._mapping) for r in s.connection().execute(columns(TelemetryRollup.__table__)).all()]  # type: ignore[attr-defined]
        s.rollback()
    return took, written


def baseline(engine: Any) -> tuple[float, list[dict[str, Any]]]:
    w = TelemetryWindow
    with session(engine) as s:
        t = time.perf_counter()
        objs = s.exec(select(w).where(w.received >= SPAN[0], w.received < SPAN[1])).all()
        folded = rollups.fold(((o.received, o, o.bundle, o.window_start, o.window_end) for o in objs), rollups.MINUTE)
        rows = [rollups.to_row(k, f, rollups.MINUTE) for k, f in folded.items()]
        s.execute(insert(TelemetryRollup), rows)
        took = time.perf_counter() - t
        s.rollback()
    return took, rows


def limit(engine: Any) -> float:
    c = TelemetryWindow.__table__.c  # type: ignore[attr-defined]
    with session(engine) as s:
        t = time.perf_counter()
        s.connection().execute(
            columns(
                *(c[k] for k in rollups.MERGED_COLUMNS),
                c.received,
                c.window_start,
                c.window_end,
            ).where(c.received >= SPAN[0], c.received < SPAN[1])
        ).all()
        took = time.perf_counter() - t
        s.rollback()
    return took


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    sk = r["latency"]
    return (r["device"], r["bundle"], r["windows"], *(r[k] for k in COUNT_KEYS), sk.get("b"), sk.get("n"), r["drift"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench rollups", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000, help="devices, 6 windows each in the minute")
    ap.add_argument("--rounds", type=int, default=3, help="measure each way this many times, keep the best")
    ap.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temporary directory)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-rollups-"))
    try:
        engine = make_engine(args.db or f"sqlite:///{work / 'hub.db'}")
        n = seed(engine, args.devices, random.Random(1))
        times: dict[str, list[float]] = {"ours": [], "baseline": [], "limit": []}
        for _ in range(args.rounds):  # interleaved: a machine that slows down slows each way alike
            took, written = ours(engine)
            times["ours"].append(took)
            took, expected = baseline(engine)
            times["baseline"].append(took)
            times["limit"].append(limit(engine))
        same = sorted(map(_key, written)) == sorted(map(_key, expected))
        if args.db:
            with session(engine) as s:
                s.execute(TelemetryWindow.__table__.delete())  # type: ignore[attr-defined]
                s.commit()
        engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    us = {k: min(v) / n * 1e6 for k, v in times.items()}
    params = {"devices": args.devices, "windows": n, "rounds": args.rounds, "db": "postgres" if args.db else "sqlite"}
    cases = [{"case": k, "us_per_window": us[k], "seconds": times[k]} for k in times] + [{"ours_equals_baseline": same}]
    path = report.write("rollups", "us/window", False, us["ours"], us["baseline"], us["limit"], params, cases)
    print(f"one minute of {args.devices} devices ({n} windows) rolled up, best of {args.rounds}:")
    labels = {"limit": "limit (read the rows)", "ours": "ours (hub.rollups)", "baseline": "baseline (ORM)"}
    for k, label in labels.items():
        print(f"  {label:<24} {us[k]:8.1f} us/window  {min(times[k]):7.2f} s")
    print(
        f"ours/baseline {us['baseline'] / us['ours']:.2f}x faster, ours/limit {us['ours'] / us['limit']:.2f}x "
        f"the cost of reading; rollups {'equal' if same else 'DIFFER'} to the baseline's; wrote {path}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
