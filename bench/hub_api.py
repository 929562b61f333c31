"""`python -m bench hub_api [--quick] [--devices N] [--db sqlite|postgres]`: p50/p99 of the hub's
device list, fleet page and rollout status with 10,000 devices (or N).

With ``--db postgres`` (issue 15 part 5: ``--devices 100000``) the registry is a fresh schema on
the machine's PostgreSQL (``EDGEFLEET_BENCH_PG``, default the tests' database), seeded by COPY,
not timed: N devices, one raw telemetry window each, 1-minute and 1-hour rollups
(:mod:`hub.rollups`), and one running rollout over all of them (rows, not N signed documents).
The rollout-engine ticks are measured on the SQLite path only, where the rollout is real.

Setup (not timed): a hub on SQLite (WAL) with 10,000 devices fed through the real ingest path
(retained status + one telemetry window each) and one rollout to all of them (10,000 signed
desired documents). The API runs under uvicorn in this process; one keep-alive HTTP client
sends sequential requests.

* **ours** - p99 of ``GET /api/v1/devices?limit=50&after=<random id>`` (a page by key, as a
  client following ``next_after`` reads it; ``?offset=<random>`` is measured beside it);
* **limit** - p99 of ``GET /healthz`` (HTTP + auth-free route + one ``SELECT 1``): the floor any
  API call pays on this stack;
* **baseline** - none exists in the seed (it had no device registry); ``null``.

Cases also cover a filtered list (online + substring), rollout status (counts over 10,000
rows + a page of devices), one device's detail (telemetry summary + drift), and the time of
one rollout-engine tick over the 10,000-device rollout.
"""

from __future__ import annotations

import argparse
import http.client
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report

TOKEN = "bench-token-0123456789"
GOAL_MS = 50.0  # issue 15 part 5: device list, fleet page and rollout status p99
GOAL_CASES = ("device list page", "rollout status", "fleet page")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _setup(work: Path, n: int, db: str | None = None) -> tuple[Any, str, str]:
    from hub import bundles, keys, rollouts
    from hub.config import HubConfig
    from hub.server import build
    from hub.store import read_bundle_dir
    from hub.transport import MemoryPublisher
    from protocol.bundle import MANIFEST_FILE, Artifact, Manifest, Requirements
    from protocol.device import Inventory
    from protocol.messages import BundleInfo, Status, Telemetry
    from protocol.signing import seal
    from protocol.sketch import LatencySketch

    keys.init(work / "keys")
    cfg = HubConfig(
        db=db or f"sqlite:///{work / 'hub.db'}",
        keys=work / "keys",
        store=work / "store",
        tokens={TOKEN: "admin"},
        tick=3600,
    )
    hub = build(cfg, publisher=MemoryPublisher(), with_broker=False)
    bdir = work / "bundle"
    bdir.mkdir()
    files = {"model_int8.tflite": bytes(range(256)) * 400, "labels.txt": b"a\nb\n"}
    arts = tuple(Artifact.of(k, "tflite_int8" if k.endswith("tflite") else "labels", v) for k, v in files.items())
    for k, v in files.items():
        (bdir / k).write_bytes(v)
    (bdir / MANIFEST_FILE).write_bytes(
        seal("manifest", Manifest("bench", "1.0.0", 1, arts, Requirements()).to_dict(), []).to_bytes()
    )
    old = bundles.push(hub.fleet, *read_bundle_dir(bdir))
    (bdir / "labels.txt").write_bytes(b"a\nb\nc\n")
    arts = tuple(
        Artifact.of(k, "tflite_int8" if k.endswith("tflite") else "labels", (bdir / k).read_bytes()) for k in files
    )
    (bdir / MANIFEST_FILE).write_bytes(
        seal("manifest", Manifest("bench", "2.0.0", 2, arts, Requirements()).to_dict(), []).to_bytes()
    )
    new = bundles.push(hub.fleet, *read_bundle_dir(bdir))
    if db is not None:
        return hub, _seed_copy(hub, n, old["digest"], new["digest"]), new["digest"]
    sk = LatencySketch()
    sk.add(0.004, 50)
    sk.add(0.009, 5)
    info = BundleInfo(old["digest"], "bench", "1.0.0")
    batch: list[tuple[str, bytes]] = []
    for i in range(n):
        dev = f"dev-{i:05d}"
        batch.append(
            (
                f"ef/v1/dev/{dev}/status",
                Status(dev, i % 10 != 0, 1000, "0.1.0", Inventory(board="rpi4"), info).to_bytes(),
            )
        )
        batch.append(
            (
                f"ef/v1/dev/{dev}/telemetry",
                Telemetry(
                    dev, 1, 0, 10, old["digest"], {"inferences": 55, "errors": 0, "cpu": 55}, sk.to_dict()
                ).to_bytes(),
            )
        )
        if len(batch) >= 1000:
            hub.ingest.handle(batch)
            batch = []
    hub.ingest.handle(batch)
    t = time.monotonic()
    # one cohort soaking for an hour: it stays running, so every tick judges the gates
    rid = rollouts.create(hub.fleet, new["digest"], {"all": True}, {"soak_s": 3600}, "bench")["id"]
    print(f"setup: {n} devices, rollout {rid} issued in {time.monotonic() - t:.1f}s", flush=True)
    return hub, rid, new["digest"]


PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_schema(url: str) -> tuple[str, str]:
    """A throwaway schema on PostgreSQL: (SQLAlchemy URL with its search_path, schema name)."""
    import uuid

    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}", schema


def _pg_drop(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _seed_copy(hub: Any, n: int, old: str, new: str) -> str:
    """N devices, their telemetry (a raw window, 3 minute and 1 hour rollups each) and a rollout
    over all of them, by COPY: minutes, where the ingest path and N signed documents take an hour
    on this machine."""
    import json

    from hub.models import Rollout
    from protocol.sketch import LatencySketch

    now = int(time.time())
    sk = LatencySketch()
    sk.add(0.004, 50)
    sk.add(0.009, 5)
    lat = json.dumps(sk.to_dict())
    drift = json.dumps({"inputs": {"brightness": [5, 20, 40, 25, 10]}})
    inv = [json.dumps({"board": b, "edgetpu": {"present": b != "rpi4"}}) for b in ("rpi4", "coral-dev", "x86")]
    raw = hub.fleet.engine.raw_connection()
    t = time.monotonic()
    try:
        cur = raw.driver_connection.cursor()
        cols = (
            "id, online, last_seen, status_ts, agent_version, inventory, active_digest, active_name, active_version, "
            'state, reported_desired_seq, desired_seq, "group", tags, enrolled, created, windows, inferences, errors, '
            "tpu, cpu, cloud, latency_bundle, latency"
        )
        with cur.copy(f"COPY device ({cols}) FROM STDIN") as cp:
            for i in range(n):
                cp.write_row(
                    (
                        f"dev-{i:06d}",
                        i % 10 != 0,
                        now - i % 600,
                        now,
                        "0.1.0",
                        inv[i % 3],
                        old,
                        "bench",
                        "1.0.0",
                        "idle",
                        1,
                        1,
                        f"site-{i % 50}",
                        "[]",
                        True,
                        now - 86400,
                        4,
                        220,
                        0,
                        0,
                        220,
                        0,
                        old,
                        lat,
                    )
                )
        with cur.copy(
            "COPY telemetry_window (device, seq, window_start, window_end, bundle, inferences, errors, tpu, cpu, "
            "cloud, latency, drift, shadow, health, received) FROM STDIN"
        ) as cp:
            for i in range(n):
                cp.write_row(
                    (f"dev-{i:06d}", 1, now - 70, now - 10, old, 55, 0, 0, 55, 0, lat, drift, None, "{}", now - 9)
                )
        with cur.copy(
            "COPY telemetry_rollup (resolution, bucket, device, bundle, windows, window_start, window_end, "
            "inferences, errors, tpu, cpu, cloud, latency, drift, shadow) FROM STDIN"
        ) as cp:
            hour = now // 3600 * 3600 - 3600
            for i in range(n):
                dev = f"dev-{i:06d}"
                cp.write_row((3600, hour, dev, old, 60, hour, hour + 3600, 3300, 0, 0, 3300, 0, lat, drift, None))
                for m in range(3):
                    b = now // 60 * 60 - 60 * (m + 3)
                    cp.write_row((60, b, dev, old, 1, b, b + 60, 55, 0, 0, 55, 0, lat, drift, None))
        raw.commit()
    finally:
        raw.close()
    rid = "bench-rollout-1"
    with hub.fleet.session() as s:
        s.add(
            Rollout(
                id=rid,
                serial=1,
                bundle=new,
                target={"all": True},
                policy={"soak_s": 3600},
                phase="running",
                cohort=0,
                cohort_started=now,
                created=now,
                updated=now,
                created_by="bench",
            )
        )
        s.commit()
    raw = hub.fleet.engine.raw_connection()
    try:
        cur = raw.driver_connection.cursor()
        with cur.copy(
            "COPY rollout_device (rollout_id, device_id, cohort, state, online, attempts, seq, issued_at, updated, "
            "reason, from_bundle) FROM STDIN"
        ) as cp:
            states = ("installed", "installed", "installed", "issued", "installing", "pending")
            for i in range(n):
                cp.write_row((rid, f"dev-{i:06d}", 0, states[i % 6], i % 10 != 0, 1, 2, now, now, "", old))
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    print(f"setup: {n} devices, their telemetry and rollout {rid} seeded by COPY in {time.monotonic() - t:.1f}s")
    return rid


def main(argv: list[str] | None = None) -> int:
    from hub import rollouts, ticker

    p = argparse.ArgumentParser(prog="python -m bench hub_api", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100 requests per case instead of 400")
    p.add_argument("--devices", type=int, default=10_000, help="fleet size (default 10000)")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="registry database (default sqlite)")
    args = p.parse_args(argv)
    import os

    pg = os.environ.get("EDGEFLEET_BENCH_PG", PG_DEFAULT) if args.db == "postgres" else None
    pg_url, schema = _pg_schema(pg) if pg else (None, "")
    import uvicorn

    reqs = 100 if args.quick else 400
    work = Path(tempfile.mkdtemp(prefix="bench-hubapi-"))
    try:
        hub, rid, new_digest = _setup(work, args.devices, pg_url)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(hub.app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        rng = random.Random(1)
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def get(path: str) -> float:
            t = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            dt = (time.perf_counter() - t) * 1000
            if resp.status != 200:
                raise RuntimeError(f"GET {path} -> {resp.status}: {body[:200]!r}")
            return dt

        n = args.devices

        def dev_id(i: int) -> str:
            return f"dev-{i:06d}" if pg else f"dev-{i:05d}"

        cases_def: list[tuple[str, Callable[[], str]]] = [
            ("healthz (limit)", lambda: "/healthz"),
            # the goal's three: pages by key (?after=<the previous page's next_after>), as the CLI,
            # the dashboard and any client that follows next_after page
            ("device list page", lambda: f"/api/v1/devices?limit=50&after={dev_id(rng.randrange(n))}"),
            ("device list online + q", lambda: f"/api/v1/devices?limit=50&online=true&q=dev-0{rng.randrange(10)}"),
            ("rollout status", lambda: f"/api/v1/rollouts/{rid}?limit=50&after={dev_id(rng.randrange(n))}"),
            # for reference: a random ?offset= reads every row it skips (compatible, not the goal)
            ("device list, offset", lambda: f"/api/v1/devices?limit=50&offset={rng.randrange(0, max(1, n - 50))}"),
            (
                "rollout status, offset",
                lambda: f"/api/v1/rollouts/{rid}?limit=50&offset={rng.randrange(0, max(1, n - 50))}",
            ),
            ("device detail", lambda: f"/api/v1/devices/{dev_id(rng.randrange(n))}"),
            ("fleet page", lambda: "/ui"),
            ("devices page", lambda: f"/ui/devices?limit=50&offset={rng.randrange(0, max(1, n - 50))}"),
            ("rollout page", lambda: f"/ui/rollouts/{rid}"),
        ]
        cases: list[dict[str, Any]] = []
        print(f"{'case':<26}{'p50 ms':>9}{'p99 ms':>9}{'mean':>9}   ({reqs} sequential requests)")
        for name, path in cases_def:
            for _ in range(10):
                get(path())  # warm-up
            xs = [get(path()) for _ in range(reqs)]
            p99 = _pct(xs, 0.99)
            c = {
                "case": name,
                "requests": reqs,
                "p50_ms": _pct(xs, 0.5),
                "p99_ms": _pct(xs, 0.99),
                "mean_ms": statistics.fmean(xs),
            }
            cases.append(c)
            goal = (
                f"  p99 {p99:.1f} <= {GOAL_MS:g} ms goal: met"
                if p99 <= GOAL_MS
                else f"  p99 {p99:.1f} > {GOAL_MS:g} ms goal: missed"
            )
            if name not in GOAL_CASES:
                goal = "" if name.startswith("healthz") else goal.replace("goal", "(not a goal case)")
            print(f"{name:<26}{c['p50_ms']:>9.2f}{c['p99_ms']:>9.2f}{c['mean_ms']:>9.2f}{goal}", flush=True)
        if pg:
            _finish(hub, server, th, args, n, reqs, cases, "postgresql (COPY-seeded)")
            return 0
        ticks = []
        for _ in range(3):
            t = time.perf_counter()
            ticker.tick(hub.fleet)
            ticks.append((time.perf_counter() - t) * 1000)
        cases.append(
            {
                "case": "rollout engine tick (all issued)",
                "devices": n,
                "p50_ms": statistics.median(ticks),
                "runs": len(ticks),
            }
        )
        print(f"{'tick, all issued':<26}{statistics.median(ticks):>9.0f} ms over {n} devices")
        # every device reports the install and one telemetry window: the gates now read
        # 10,000 devices' telemetry (new bundle and previous) on every tick
        from protocol.messages import Report, Telemetry
        from protocol.sketch import LatencySketch

        sk = LatencySketch()
        sk.add(0.004, 55)
        st = rollouts.status(hub.fleet, rid, limit=n)
        now = int(time.time())
        batch: list[tuple[str, bytes]] = []
        for d in st["devices"]:
            dev = d["device_id"]
            batch.append(
                (
                    f"ef/v1/dev/{dev}/report",
                    Report(dev, 1, now, "commit", "ok", desired_seq=d["seq"], bundle=new_digest).to_bytes(),
                )
            )
            batch.append(
                (
                    f"ef/v1/dev/{dev}/telemetry",
                    Telemetry(
                        dev, 2, now + 1, now + 11, new_digest, {"inferences": 55, "cpu": 55}, sk.to_dict()
                    ).to_bytes(),
                )
            )
            if len(batch) >= 2000:
                hub.ingest.handle(batch)
                batch = []
        hub.ingest.handle(batch)
        ticks = []
        for _ in range(3):
            t = time.perf_counter()
            ticker.tick(hub.fleet)
            ticks.append((time.perf_counter() - t) * 1000)
        after = rollouts.status(hub.fleet, rid, limit=1)
        cases.append(
            {
                "case": "rollout engine tick (all installed, gates on telemetry)",
                "devices": n,
                "p50_ms": statistics.median(ticks),
                "runs": len(ticks),
                "counts": after["counts"],
            }
        )
        print(
            f"{'tick, installed + gates':<26}{statistics.median(ticks):>9.0f} ms over {n} devices "
            f"({after['phase']}, {after['counts']})"
        )
        server.should_exit = True
        th.join(10)
        hub.fleet.engine.dispose()
        by: dict[str, dict[str, Any]] = {str(c["case"]): c for c in cases}
        out = report.write(
            "hub_api",
            "ms (p99)",
            False,
            float(by["device list page"]["p99_ms"]),
            None,
            float(by["healthz (limit)"]["p99_ms"]),
            {
                "devices": n,
                "requests_per_case": reqs,
                "db": "sqlite (WAL)",
                "client": "1 keep-alive",
                "rollout_status_p99_ms": by["rollout status"]["p99_ms"],
                "quick": args.quick,
            },
            cases,
        )
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if pg and schema:
            _pg_drop(pg, schema)
    return 0


def _finish(
    hub: Any, server: Any, th: threading.Thread, args: Any, n: int, reqs: int, cases: list[Any], db: str
) -> None:
    server.should_exit = True
    th.join(10)
    hub.fleet.engine.dispose()
    by: dict[str, dict[str, Any]] = {str(c["case"]): c for c in cases}
    out = report.write(
        "hub_api",
        "ms (p99)",
        False,
        float(by["device list page"]["p99_ms"]),
        None,
        float(by["healthz (limit)"]["p99_ms"]),
        {
            "devices": n,
            "requests_per_case": reqs,
            "db": db,
            "client": "1 keep-alive",
            "rollout_status_p99_ms": by["rollout status"]["p99_ms"],
            "fleet_page_p99_ms": by["fleet page"]["p99_ms"],
            "goal_p99_ms": GOAL_MS,
            "quick": args.quick,
        },
        cases,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
