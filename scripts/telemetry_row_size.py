"""Bytes one stored telemetry window takes in PostgreSQL (heap + indexes), an input of the
capacity model in docs/scale.md.

Inserts N busy windows (a latency sketch of 600 samples, 9 drift features of 11 bins, the health
block of a real agent's window) through the hub's own table in a scratch schema, reads
``pg_total_relation_size``, drops the schema.

    .venv/bin/python scripts/telemetry_row_size.py [--rows 20000] [--db postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from sqlalchemy import text
from sqlmodel import Session, SQLModel, create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.models import TelemetryWindow  # noqa: E402
from protocol.sketch import LatencySketch  # noqa: E402

SCHEMA = "capacity_row_size"
HEALTH = {"disk_free_mb": 73096, "load1": 1.2, "mem_available_mb": 1970, "mem_total_mb": 3800, "rss_mb": 69.4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    eng = create_engine(f"{args.db}?options=-csearch_path%3D{SCHEMA}")
    with eng.begin() as c:
        c.execute(text(f"drop schema if exists {SCHEMA} cascade"))
        c.execute(text(f"create schema {SCHEMA}"))
    try:
        SQLModel.metadata.create_all(eng, tables=[TelemetryWindow.__table__])  # type: ignore[attr-defined]
        rng = random.Random(1)
        with Session(eng) as s:
            for i in range(args.rows):
                sketch = LatencySketch()
                for _ in range(600):
                    sketch.add(rng.lognormvariate(-4.5, 0.35))
                drift = {
                    "inputs": {f"f{k}": [rng.randint(0, 60) for _ in range(11)] for k in range(6)},
                    "outputs": {f"o{k}": [rng.randint(0, 60) for _ in range(11)] for k in range(3)},
                }
                s.add(
                    TelemetryWindow(
                        device=f"dev-{i % 500:04d}",
                        seq=i,
                        window_start=1,
                        window_end=11,
                        bundle="a" * 64,
                        inferences=600,
                        tpu=600,
                        latency=sketch.to_dict(),
                        drift=drift,
                        health=HEALTH,
                        received=int(time.time()),
                    )
                )
                if i % 2000 == 1999:
                    s.commit()
            s.commit()
        with eng.begin() as c:
            c.execute(text("analyze telemetry_window"))
            total, heap, idx = c.execute(
                text(
                    "select pg_total_relation_size('telemetry_window'), pg_relation_size('telemetry_window'),"
                    " pg_indexes_size('telemetry_window')"
                )
            ).one()
        n = args.rows
        print(f"{n} rows: {total / n:.0f} B a row (heap {heap / n:.0f}, indexes {idx / n:.0f})")
    finally:
        with eng.begin() as c:
            c.execute(text(f"drop schema if exists {SCHEMA} cascade"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
