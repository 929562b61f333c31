"""`python -m bench failover [--devices N]`: a hub replica killed -9 in the middle of a rollout.

Two ``edgefleet-hub serve`` processes (replicas: ``--shared-group``, one PostgreSQL schema, one
bundle store, one private Mosquitto) and N simulated devices (:mod:`sim`, in this process). A
bundle is rolled out in three cohorts (10 %, 50 %, 100 %, a short soak each) through replica A;
once the first cohort has installed, A is killed -9. Replica B must take over (its ticker holds
the rollout section next: ``hub.db.rollout_section``) and finish the rollout. Measured, in one run:

- **takeover**: from the kill to the first change of the rollout's device counts that B reports,
  and to the rollout completed;
- **telemetry lost**: every window a device sent (its ``telemetry_sent``) against the windows in
  the database once every device's backlog is acked (a window A received but had not stored was
  never acked, so the device sends it again and B stores it): goal 0;
- **duplicate sequence numbers**: an observer subscribed to every device's desired topic records
  each document's (device, seq) and payload; two payloads under one seq would be two replicas
  allocating the same seq: goal 0. The database's own count of documents is beside it.

The scenario is :func:`run`; ``tests/reliability/test_replica_failover.py`` runs it with a small
N in ``make test``, this command with 1,000 devices (issue 15 part 3). No time threshold: the
figures are printed, with the hubs' tick (0.3 s) as the scale to read the takeover against.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench import report
from demo.launcher import Proc, free_port, wait_port
from protocol.messages import parse_desired_payload
from protocol.signing import Envelope
from protocol.topics import Topic
from sim.bundle import synthetic_archive
from sim.config import Inference, SimConfig
from sim.fleet import SimFleet, raise_fd_limit

REPO = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432/test"
TOKEN = "dev-token"  # hub serve --dev
TICK_S = 0.3
POLICY = {"cohorts": ["10%", "50%", "100%"], "soak_s": 2, "install_timeout_s": 300}


class Replica:
    """One ``edgefleet-hub serve --dev`` process on the shared database, store and broker."""

    def __init__(self, work: Path, name: str, db: str, broker_port: int, keys: Path, store: Path) -> None:
        self.name = name
        self.port = free_port()
        args = [sys.executable, "-m", "hub", "serve", "--dev", "--port", str(self.port), "--db", db]
        args += ["--broker", f"mqtt://127.0.0.1:{broker_port}", "--keys", str(keys), "--store", str(store)]
        args += ["--tick", str(TICK_S), "--shared-group", "failover"]
        self.proc = Proc(name, args, work / f"{name}.log").start(env={"PYTHONPATH": str(REPO)})

    def ready(self) -> None:
        wait_port(self.port, proc=self.proc.popen, what=f"hub replica {self.name}", timeout=90)

    def api(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if data is not None:
            headers["Content-Type"] = "application/octet-stream" if raw is not None else "application/json"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        self.proc.stop(kill=True)

    def stop(self) -> None:
        self.proc.stop(timeout=15)


class Observer:
    """Every desired document published, by (device, seq): the payloads' hashes."""

    def __init__(self, port: int) -> None:
        self.seen: dict[tuple[str, int], set[str]] = {}
        self.unreadable = 0
        self._lock = threading.Lock()
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"failover-observer-{uuid.uuid4().hex[:8]}")
        self._c.on_message = self._on_message
        self._c.on_connect = lambda c, *a: c.subscribe("ef/v1/dev/+/desired", qos=1)
        self._c.connect("127.0.0.1", port)
        self._c.loop_start()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        try:
            doc = parse_desired_payload(Envelope.parse(bytes(msg.payload)).payload)
        except Exception:  # noqa: BLE001 - counted: a document nobody can read is a finding too
            with self._lock:
                self.unreadable += 1
            return
        device = Topic.parse(msg.topic).device or ""
        with self._lock:
            self.seen.setdefault((device, doc.seq), set()).add(hashlib.sha256(msg.payload).hexdigest())

    def duplicates(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(k for k, v in self.seen.items() if len(v) > 1)

    def documents(self) -> int:
        with self._lock:
            return len(self.seen)

    def close(self) -> None:
        self._c.loop_stop()
        self._c.disconnect()


def _broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
        "max_queued_messages 100000\nmax_inflight_messages 8\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc=proc, what="mosquitto")
    return proc, port


def _schema() -> tuple[str, str]:
    """A fresh PostgreSQL schema for this run: (its SQLAlchemy URL, its name)."""
    import psycopg

    name = f"failover_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f"create schema {name}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{name}", name


def _query(schema: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(PG, options=f"-csearch_path={schema}") as con:
        return list(con.execute(sql).fetchall())


def run(
    work: Path, devices: int, db: str, schema: str, bundle_bytes: int = 200_000, log: Any = print
) -> dict[str, Any]:
    """The scenario; ``db``/``schema``: an empty PostgreSQL schema (its URL and name)."""
    from hub import keys as hub_keys

    keys, store = work / "keys", work / "store"
    hub_keys.init(keys)
    broker, port = _broker(work)
    a = Replica(work, "hub-a", db, port, keys, store)
    a.ready()  # A creates the schema alone; then B starts on it
    b = Replica(work, "hub-b", db, port, keys, store)
    b.ready()
    observer = Observer(port)
    cfg = SimConfig(
        "127.0.0.1",
        port,
        keys / "root.json",
        devices=devices,
        telemetry_interval_s=max(2.0, devices / 100),  # 10 s (an agent's default) at 1,000
        resend_after_s=3.0,
        inference=Inference(rate=5.0, latency_ms=8.0),
    )
    fleet = SimFleet(cfg)
    out: dict[str, Any] = {"devices": devices, "bundle_bytes": bundle_bytes, "policy": POLICY, "tick_s": TICK_S}
    try:
        t0 = time.monotonic()

        def online() -> bool:
            return int(b.api("GET", "/api/v1/devices?online=true&limit=1")["total"]) >= devices

        if not fleet.run_until(online, timeout=120 + devices / 10, check_every=1.0):
            raise RuntimeError(f"not every simulated device came online at the hubs within {120 + devices / 10:.0f} s")
        out["online_s"] = round(time.monotonic() - t0, 1)
        bundle = a.api("POST", "/api/v1/bundles", raw=synthetic_archive(bundle_bytes, version="2.0.0"))
        rid = a.api(
            "POST", "/api/v1/rollouts", {"bundle": bundle["digest"], "target": {"all": True}, "policy": POLICY}
        )["id"]
        created = time.monotonic()
        first = max(1, devices // 10)
        if not fleet.run_until(lambda: fleet.installed(bundle["digest"]) >= first, timeout=300, check_every=0.2):
            raise RuntimeError("the first cohort never installed")
        counts_at_kill = b.api("GET", f"/api/v1/rollouts/{rid}")["counts"]
        a.kill()
        killed = time.monotonic()
        out["installed_at_kill"] = fleet.installed(bundle["digest"])
        out["counts_at_kill"] = counts_at_kill
        log(f"killed -9 replica A {killed - created:.1f} s into the rollout, {out['installed_at_kill']} installed")
        changed: list[float] = []

        def done() -> bool:
            st = b.api("GET", f"/api/v1/rollouts/{rid}")
            if not changed and st["counts"] != counts_at_kill:
                changed.append(time.monotonic())
            out["final"] = {k: st[k] for k in ("phase", "counts", "reason")}
            return bool(st["phase"] in ("completed", "aborted", "cancelled"))

        finished = fleet.run_until(done, timeout=300 + devices / 5, check_every=0.5)
        out["completed"] = finished and out["final"]["phase"] == "completed"
        out["takeover_s"] = round(changed[0] - killed, 2) if changed else None
        out["kill_to_completed_s"] = round(time.monotonic() - killed, 1) if finished else None
        out["installed"] = fleet.installed(bundle["digest"])

        # every window acked: the backlog of each device drained, then nothing new is sent
        fleet.stop_telemetry()
        drained = fleet.run_until(lambda: fleet.unacked() == 0, timeout=120, check_every=0.5)
        sent = {d.id: d.counters.telemetry_sent for d in fleet.devices}
        stored = dict(_query(schema, "select device, count(distinct seq) from telemetry_window group by device"))
        out["telemetry_drained"] = drained
        out["telemetry_sent"] = sum(sent.values())
        out["telemetry_stored"] = sum(int(stored.get(i, 0)) for i in sent)
        out["telemetry_lost"] = sum(max(0, n - int(stored.get(i, 0))) for i, n in sent.items())
        time.sleep(1.0)  # the observer's last documents
        out["duplicate_seqs"] = len(observer.duplicates())
        out["duplicate_examples"] = observer.duplicates()[:5]
        out["desired_documents_seen"] = observer.documents()
        out["unreadable_documents"] = observer.unreadable
        return out
    finally:
        fleet.stop()
        observer.close()
        for r in (a, b):
            r.stop()
        broker.terminate()
        broker.wait(10)


def _line(o: dict[str, Any]) -> str:
    return (
        f"{o['devices']} devices, replica A killed -9 with {o.get('installed_at_kill')} installed: "
        f"rollout {o.get('final', {}).get('phase')} ({o.get('installed')}/{o['devices']} installed); "
        f"takeover (first change the survivor reports) {o.get('takeover_s')} s, "
        f"kill to completed {o.get('kill_to_completed_s')} s (tick {o['tick_s']} s); "
        f"telemetry lost {o.get('telemetry_lost')} of {o.get('telemetry_sent')} sent (goal 0); "
        f"duplicate desired seqs {o.get('duplicate_seqs')} of {o.get('desired_documents_seen')} documents (goal 0)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench failover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    ap.add_argument("--bundle-kb", type=int, default=200, help="bundle size in kB (default 200)")
    args = ap.parse_args(argv)
    raise_fd_limit(args.devices + 512)
    work = Path(tempfile.mkdtemp(prefix="ef-failover-"))
    db, schema = _schema()
    try:
        o = run(work, args.devices, db, schema, args.bundle_kb * 1000)
    finally:
        import psycopg

        with psycopg.connect(PG, autocommit=True) as con:
            con.execute(f"drop schema if exists {schema} cascade")
        shutil.rmtree(work, ignore_errors=True)
    print(_line(o))
    ok = bool(o["completed"]) and o["telemetry_lost"] == 0 and o["duplicate_seqs"] == 0
    path = report.write(
        "failover",
        "s",
        False,
        float(o["kill_to_completed_s"] or 0.0),
        None,
        None,
        {"devices": args.devices, "bundle_kb": args.bundle_kb, "policy": POLICY},
        [o],
    )
    print(f"wrote {path}")
    return 0 if ok else 1
