"""`python -m bench hub_api [--quick]`: p50/p99 of the hub's device list and rollout status
with 10,000 devices.

Setup (not timed): a hub on SQLite (WAL) with 10,000 devices fed through the real ingest path
(retained status + one telemetry window each) and one rollout to all of them (10,000 signed
desired documents). The API runs under uvicorn in this process; one keep-alive HTTP client
sends sequential requests.

* **ours** - p99 of ``GET /api/v1/devices?limit=50&offset=<random>`` (the dashboard's page);
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _setup(work: Path, n: int) -> tuple[Any, str, str]:
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
        db=f"sqlite:///{work / 'hub.db'}", keys=work / "keys", store=work / "store", tokens={TOKEN: "admin"}, tick=3600
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


def main(argv: list[str] | None = None) -> int:
    from hub import rollouts, ticker

    p = argparse.ArgumentParser(prog="python -m bench hub_api", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100 requests per case instead of 400")
    p.add_argument("--devices", type=int, default=10_000, help="fleet size (default 10000)")
    args = p.parse_args(argv)
    import uvicorn

    reqs = 100 if args.quick else 400
    work = Path(tempfile.mkdtemp(prefix="bench-hubapi-"))
    try:
        hub, rid, new_digest = _setup(work, args.devices)
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
        cases_def: list[tuple[str, Callable[[], str]]] = [
            ("healthz (limit)", lambda: "/healthz"),
            ("device list page", lambda: f"/api/v1/devices?limit=50&offset={rng.randrange(0, max(1, n - 50))}"),
            ("device list online + q", lambda: f"/api/v1/devices?limit=50&online=true&q=dev-0{rng.randrange(10)}"),
            ("rollout status", lambda: f"/api/v1/rollouts/{rid}?limit=50&offset={rng.randrange(0, max(1, n - 50))}"),
            ("device detail", lambda: f"/api/v1/devices/dev-{rng.randrange(n):05d}"),
        ]
        cases: list[dict[str, Any]] = []
        print(f"{'case':<26}{'p50 ms':>9}{'p99 ms':>9}{'mean':>9}   ({reqs} sequential requests)")
        for name, path in cases_def:
            for _ in range(10):
                get(path())  # warm-up
            xs = [get(path()) for _ in range(reqs)]
            c = {
                "case": name,
                "requests": reqs,
                "p50_ms": _pct(xs, 0.5),
                "p99_ms": _pct(xs, 0.99),
                "mean_ms": statistics.fmean(xs),
            }
            cases.append(c)
            print(f"{name:<26}{c['p50_ms']:>9.2f}{c['p99_ms']:>9.2f}{c['mean_ms']:>9.2f}", flush=True)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
