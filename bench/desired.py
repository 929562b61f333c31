"""`python -m bench desired [--devices N]`: a rollout's desired documents to N devices (issue 15: 10,000 in <= 10 s).

One simulated device (the fleet simulator, the agent's own code) connects and announces itself,
so the hub stores what a real agent announces; its device row is then copied N times in the hub's
database (a 10,000-device rollout does not complete on one 2-core machine, docs/scale.md, and
this measures only its first step). A rollout of a bundle to all of them is POSTed, and one plain
subscriber on ``ef/v1/dev/+/desired`` records when each device's document arrives.

* ours: from the POST to the last of the N documents received (the hub builds, signs, stores and
  publishes them; the POST's own time is printed beside it). Every document is then verified as
  an agent does (:func:`protocol.messages.verify_desired`: signature by the hub's online key under
  the trust root, device, sequence), outside the timing.
* limit: the same N document bytes published by a plain paho client (QoS 1, retained, as the hub
  publishes them) through the same broker to the same kind of subscriber.
* baseline: none; no earlier way of ours publishes documents, and the issue's goal is absolute
  (<= 10 s), printed as a goal line.

The hub runs in its own process, on SQLite, as in ``python -m bench rollout``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import report
from bench.rollout import KINDS, _Broker, _hub_process, hub_config
from demo.launcher import free_port
from sim.bundle import synthetic_archive
from sim.config import Inference, SimConfig
from sim.fleet import SimFleet

GOAL_S = 10.0
TOKEN = "bench-token-0123456789"


class _Collector:
    """One subscriber: the first arrival time and bytes of each device's document matching ``filt``."""

    def __init__(self, port: int, filt: str, expect: int) -> None:
        self.expect = expect
        self.got: dict[str, tuple[float, bytes]] = {}
        self.done = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-desired-{free_port()}", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(filt, qos=1)
        if not subscribed.wait(10):
            raise RuntimeError(f"no SUBACK for {filt} within 10 s")

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        device = m.topic.split("/")[-2]
        if device not in self.got and m.payload:
            self.got[device] = (time.monotonic(), bytes(m.payload))
            if len(self.got) >= self.expect:
                self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _clone_devices(db: Path, template: str, n: int) -> list[str]:
    """N copies of the simulated device's row (what its agent announced), ids ``bench-d-000000``..."""
    con = sqlite3.connect(db, timeout=60)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(device)")]
        quoted = ", ".join(f'"{c}"' for c in cols)
        row = con.execute(f"SELECT {quoted} FROM device WHERE id = ?", (template,)).fetchone()
        if row is None:
            raise RuntimeError(f"the simulated device {template} is not in the hub's registry")
        ids = [f"bench-d-{i:06d}" for i in range(n)]
        at = cols.index("id")
        marks = ", ".join("?" * len(cols))
        con.executemany(
            f"INSERT INTO device ({quoted}) VALUES ({marks})",
            [tuple(d if j == at else v for j, v in enumerate(row)) for d in ids],
        )
        con.execute("DELETE FROM device WHERE id = ?", (template,))  # its agent is gone: not a target
        con.commit()
        return ids
    finally:
        con.close()


def _limit(port: int, docs: dict[str, bytes]) -> dict[str, Any]:
    """The same bytes through the same broker from a plain publisher: what publishing them costs."""
    sink = _Collector(port, "bench/limit/dev/+/desired", len(docs))
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-desired-limit", protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(100)  # as the hub's bridge
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        t0 = time.monotonic()
        for device, payload in docs.items():
            pub.publish(f"bench/limit/dev/{device}/desired", payload, qos=1, retain=True)
        sink.done.wait(600)
        last = max(t for t, _ in sink.got.values()) if sink.got else time.monotonic()
        return {"case": "plain publisher, same bytes (limit)", "received": len(sink.got), "seconds": last - t0}
    finally:
        pub.disconnect()
        pub.loop_stop()
        sink.close()


def _verify(docs: dict[str, bytes], root_path: Path) -> list[str]:
    """Each document as an agent checks it; the devices whose document fails, with the reason."""
    from protocol.messages import verify_desired
    from protocol.signing import load_root_unverified

    root = load_root_unverified(root_path.read_bytes())
    now = int(time.time())
    bad = []
    for device, payload in docs.items():
        try:
            verify_desired(payload, root, device, 0, now)
        except Exception as exc:  # noqa: BLE001 - reported, the bench fails
            bad.append(f"{device}: {exc}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench desired", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000, help="devices the rollout names (default 10,000)")
    ap.add_argument("--quick", action="store_true", help="1,000 devices")
    ap.add_argument("--bundle-mb", type=float, default=4.0, help="bundle size in MB (default 4, as bench rollout)")
    args = ap.parse_args(argv)
    n = 1_000 if args.quick else args.devices
    work = Path(tempfile.mkdtemp(prefix="bench-desired-"))
    import httpx

    from hub import keys

    keys.init(work / "keys")
    http_port = free_port()
    with _Broker(work / "broker", inflight=100) as broker:
        cfg = hub_config(work, broker.port, TOKEN, http_port)
        ctx = multiprocessing.get_context("spawn")
        counters = {k: ctx.Value("q", 0) for k in KINDS}
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_hub_process, args=(cfg, counters, ready, stop), name="bench-hub")
        proc.start()
        try:
            if not ready.wait(120):
                raise RuntimeError("the hub did not start within 120 s")
            api = httpx.Client(
                base_url=f"http://127.0.0.1:{http_port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600
            )
            sim = SimFleet(
                SimConfig(
                    "127.0.0.1",
                    broker.port,
                    work / "keys" / "root.json",
                    devices=1,
                    prefix="bench-template",
                    telemetry_interval_s=3600.0,
                    inference=Inference(rate=0.0),
                )
            )
            template = sim.devices[0].id
            if not sim.run_until(
                lambda: api.get("/api/v1/devices?online=true&limit=1").json()["total"] >= 1, timeout=60
            ):
                raise RuntimeError("the simulated device did not come online")
            sim.stop()
            ids = _clone_devices(work / "hub.db", template, n)
            b = api.post(
                "/api/v1/bundles",
                content=synthetic_archive(int(args.bundle_mb * 1024 * 1024), version="2.0.0"),
                headers={"Content-Type": "application/octet-stream"},
            ).json()
            sink = _Collector(broker.port, "ef/v1/dev/+/desired", n)
            t0 = time.monotonic()
            r = api.post("/api/v1/rollouts", json={"bundle": b["digest"], "target": {"all": True}})
            post_s = time.monotonic() - t0
            if r.status_code not in (200, 201):
                raise RuntimeError(f"POST /api/v1/rollouts: {r.status_code} {r.text[:300]}")
            sink.done.wait(600)
            sink.close()
            named = set(ids)
            got = {d: v for d, v in sink.got.items() if d in named}
            ours_s = (max(t for t, _ in got.values()) - t0) if len(got) >= n else None
            docs = {d: p for d, (_, p) in got.items()}
            sizes = sorted(len(p) for p in docs.values())
            desired_bytes = int(counters["desired"].value)
            bad = _verify(docs, work / "keys" / "root.json")
            lim = _limit(broker.port, docs)
        finally:
            stop.set()
            proc.join(60)
            if proc.is_alive():
                proc.kill()
            shutil.rmtree(work, ignore_errors=True)  # the hub's database and store, as bench rollout
    ours = {
        "case": "hub rollout POST -> every device's document received (ours)",
        "devices": n,
        "received": len(got),
        "verified": len(docs) - len(bad),
        "seconds": ours_s,
        "post_seconds": post_s,
        "document_bytes_median": sizes[len(sizes) // 2] if sizes else None,
        "hub_desired_bytes_published": desired_bytes,
    }
    lim_s = lim["seconds"] if lim["received"] >= n else None
    path = report.write(
        "desired",
        "s",
        False,
        ours_s if ours_s is not None else float("nan"),
        None,
        lim_s,
        {"devices": n, "db": "sqlite (WAL)", "broker": "mosquitto, max_inflight_messages 100", "goal_s": GOAL_S},
        [ours, lim],
    )

    def s(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} s"

    print(f"{'':<44} {'seconds':>9}")
    print(f"{'limit (plain publisher, same bytes)':<44} {s(lim_s):>9}  received {lim['received']}/{n}")
    print(f"{'ours (POST -> last document received)':<44} {s(ours_s):>9}  received {len(got)}/{n}, POST {post_s:.2f} s")
    print(f"{'baseline':<44} {'n/a':>9}  (none: no earlier way; the goal is absolute)")
    print(f"documents: median {ours['document_bytes_median']} bytes, verified {ours['verified']}/{len(docs)}")
    if ours_s is not None and lim_s:
        print(f"ours/limit {ours_s / lim_s:.2f}x; {n / ours_s:.0f} documents/s")
    met = ours_s is not None and ours_s <= GOAL_S
    print(f"{'met' if met else 'MISSED'} {n} desired documents published <= {GOAL_S:g} s; wrote {path}")
    for line in bad[:5]:
        print(f"REFUSED by verification: {line}", file=sys.stderr)
    return 0 if len(got) >= n and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
