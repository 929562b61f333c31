"""`python -m bench ingest [--quick] [--kind report]`: messages/s the hub stores, with zero loss.

One private Mosquitto, one publisher (paho, QoS 1, MQTT v5) sending N real ``Telemetry``
messages (``--kind report``: install ``Report`` messages, each device's in the order an install
sends them: download progress, then download done, verify, stage, self-test, switch and commit
back to back) from D devices as fast as the broker takes them, from a process of its own as devices
do (``--same-process``: from a thread of the consumer's process, which charges the consumer for
the publisher's share of one GIL; docs/scale.md's figures up to the 2026-12-04 10:09 row were
taken that way). In the same run:

* **limit** - a raw paho subscriber that only counts messages (no parsing, no database): the
  rate this broker + client stack can deliver to one consumer;
* **ours** - the hub's MQTT bridge + ingest (parse once, dedupe by (device, seq), one
  transaction per batch of up to 500, acks after commit) on SQLite, or with ``--db postgres`` on
  a throwaway schema of the machine's PostgreSQL (``EDGEFLEET_BENCH_PG``);
* **baseline** - the same hub code with ``batch_max=1``: one transaction (and one fsync-bound
  commit) per message, the usual "handle each message" subscriber.

``--busy``: a thread of the hub's process runs Python without pause the whole time (standing in
for what else a hub does in its one interpreter: a rollout POST signing 10,000 documents, a fleet
page, the ticker's runs); ours runs with the hub's thread switch interval
(``hub.server.settle_threads``), the **baseline** is the same hub at CPython's default 5 ms (how
the hub ran before 2026-12-06), and the **limit** is the raw subscriber in an idle process.
Written to ``bench/results/ingest_busy.json``.

Rate = N / (time from the first publish to the moment the N-th row is committed). Zero loss is
checked (rows == N, every seq acked); a run that loses messages reports it and fails.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func
from sqlmodel import select

from bench import report
from demo.launcher import free_port, wait_port


def _payloads(devices: int, per_device: int) -> list[tuple[str, bytes]]:
    from protocol.device import Health
    from protocol.messages import Telemetry
    from protocol.sketch import LatencySketch

    out = []
    sk = LatencySketch()
    for ms in (3, 4, 4, 5, 5, 5, 6, 8, 12, 30):
        sk.add(ms / 1000, 10)
    lat = sk.to_dict()
    drift = {"inputs": {"brightness": [5, 20, 40, 25, 10]}, "outputs": {"top1_class": [10] * 10}}
    for seq in range(1, per_device + 1):
        for d in range(devices):
            dev = f"bench-{d:04d}"
            t = Telemetry(
                device=dev,
                seq=seq,
                window_start=seq * 10,
                window_end=seq * 10 + 10,
                bundle="a" * 64,
                counts={"inferences": 100, "errors": 0, "tpu": 0, "cpu": 100, "cloud": 0},
                latency=lat,
                drift=drift,
                health=Health(extra={"cpu": 0.2}),
            )
            out.append((f"ef/v1/dev/{dev}/telemetry", t.to_bytes()))
    return out


# one install as an agent reports it (agent.install, sim.device): download progress every tenth,
# then the end of the download and the five steps after it within the same second
_INSTALL = [("download", "progress", d / 10) for d in range(10)] + [
    ("download", "ok", 1.0),
    ("verify", "ok", None),
    ("stage", "ok", None),
    ("selftest", "ok", None),
    ("switch", "ok", None),
    ("commit", "ok", None),
]


def _report_payloads(devices: int, per_device: int) -> list[tuple[str, bytes]]:
    """``per_device`` install reports a device, in install order (desired seq 1 for the first
    16, then 2, ...), devices interleaved as a fleet finishing together sends them."""
    from protocol.messages import Report

    out = []
    for seq in range(1, per_device + 1):
        stage, status, progress = _INSTALL[(seq - 1) % len(_INSTALL)]
        desired_seq = (seq - 1) // len(_INSTALL) + 1
        for d in range(devices):
            dev = f"bench-{d:04d}"
            r = Report(
                dev, seq, 1_760_000_000 + seq, stage, status, "ok", f"{stage} {status}", desired_seq, "b" * 64, progress
            )
            out.append((f"ef/v1/dev/{dev}/report", r.to_bytes()))
    return out


def payloads(kind: str, devices: int, per_device: int) -> list[tuple[str, bytes]]:
    return _report_payloads(devices, per_device) if kind == "report" else _payloads(devices, per_device)


def _publish_here(port: int, msgs: list[tuple[str, bytes]]) -> float:
    """Publish everything at QoS 1; returns the monotonic time of the first publish."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.monotonic()
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for i in infos:
        i.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()
    return t0


class Publisher:
    """Where the messages come from: a child process (``python -m bench ingest --publish``, the
    same payloads: :func:`_payloads` is deterministic) or, ``same_process``, this one."""

    def __init__(self, devices: int, per_device: int, same_process: bool, kind: str = "telemetry") -> None:
        self.devices, self.per_device, self.same_process, self.kind = devices, per_device, same_process, kind

    def __call__(self, port: int, msgs: list[tuple[str, bytes]]) -> float:
        if self.same_process:
            return _publish_here(port, msgs)
        cmd = [sys.executable, "-m", "bench", "ingest", "--publish", str(port)]
        cmd += ["--devices", str(self.devices), "--per-device", str(self.per_device), "--kind", self.kind]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"publisher exited {done.returncode}: {done.stderr[-500:]}")
        return float(done.stdout.strip().splitlines()[-1])  # CLOCK_MONOTONIC: one clock per machine


class AckWatcher:
    """Counts the distinct (device, seq) the hub acks, from a child process
    (``python -m bench ingest --watch-acks PORT``): subscribed before the run starts, it parses
    the acks as they come and prints the count when its standard input closes. Until
    2026-12-05 a paho client in the hub's own process did this, and its network thread took
    the interpreter from the hub's (~7 % of the hub process's samples)."""

    def __init__(self, port: int) -> None:
        cmd = [sys.executable, "-m", "bench", "ingest", "--watch-acks", str(port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "subscribed":
            self.proc.kill()
            raise RuntimeError(f"ack watcher did not subscribe: {line!r}")

    def result(self) -> int:
        out, _ = self.proc.communicate(timeout=60)
        return int(out.strip().splitlines()[-1])


def _watch_acks(port: int) -> int:
    from protocol.messages import parse_ack

    acked: set[tuple[str, int]] = set()
    lock = threading.Lock()

    def on_ack(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        device = m.topic.split("/")[3]
        seqs = parse_ack(m.payload).seqs
        with lock:
            acked.update((device, s) for s in seqs)

    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-acks-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    c.on_message = on_ack
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe("ef/v1/dev/+/ack", qos=1)
    if not subscribed.wait(10):
        print("no SUBACK in 10 s", flush=True)
        return 1
    print("subscribed", flush=True)
    sys.stdin.read()  # until the parent closes it
    c.disconnect()
    c.loop_stop()
    with lock:
        print(len(acked), flush=True)
    return 0


def _raw(port: int, msgs: list[tuple[str, bytes]], publish: Publisher, kind: str = "telemetry") -> dict[str, Any]:
    n = len(msgs)
    got = 0
    done = threading.Event()
    last = [0.0]

    def on_message(_c: Any, _u: Any, _m: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got == n:
            last[0] = time.monotonic()
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    ready = threading.Event()
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe(f"ef/v1/dev/+/{kind}", qos=1)
    ready.wait(10)
    t0 = publish(port, msgs)
    done.wait(120)
    sub.disconnect()
    sub.loop_stop()
    elapsed = (last[0] or time.monotonic()) - t0
    return {
        "case": "raw subscriber (limit)",
        "messages": n,
        "received": got,
        "seconds": elapsed,
        "msgs_per_s": got / elapsed,
        "lost": n - got,
    }


class Busy:
    """A thread of this process that runs Python without pause until stopped: the interpreter is
    never free unless it is taken from it (CPython does so every ``sys.getswitchinterval()``)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-busy", daemon=True)
        self.loops = 0

    def _run(self) -> None:
        x = 0
        while not self._stop.is_set():
            for i in range(2000):
                x += i * i
            self.loops += 1

    def __enter__(self) -> Busy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _hub(
    port: int,
    msgs: list[tuple[str, bytes]],
    work: Path,
    batch_max: int,
    label: str,
    publish: Publisher,
    pg: str | None = None,
    settle: bool = True,
    kind: str = "telemetry",
    busy: bool = False,
    switch_s: float | None = None,
) -> dict[str, Any]:
    """The hub's bridge and ingest on ``msgs``. ``busy``: a :class:`Busy` thread runs from the first
    publish to the last commit; ``switch_s``: the thread switch interval for this case (None: the
    hub's, as ``edgefleet-hub serve`` sets it); the process's interval is restored after."""
    from contextlib import nullcontext

    from hub import keys
    from hub.config import HubConfig
    from hub.models import ReportRecord, TelemetryWindow
    from hub.server import build, settle_gc, settle_threads

    if not (work / "keys" / "root.json").exists():
        keys.init(work / "keys")
    schema = ""
    if pg:
        from bench.hub_api import _pg_schema

        url, schema = _pg_schema(pg)
    else:
        url = f"sqlite:///{work / f'hub-{batch_max}-{time.monotonic_ns()}.db'}"  # a fresh registry each run
    cfg = HubConfig(
        db=url,
        broker=f"mqtt://127.0.0.1:{port}",
        keys=work / "keys",
        store=work / "store",
        tokens={"bench-token-0123456789": "admin"},
        batch_max=batch_max,
        batch_wait=0.02,
        tick=3600,
    )
    hub = build(cfg)
    watcher = AckWatcher(port)  # a process of its own, as devices are: it takes no CPU from the hub
    was = sys.getswitchinterval()
    spinner = Busy() if busy else None
    try:
        hub.start()
        if settle:
            settle_gc()  # as `edgefleet-hub serve` does once started
        settle_threads()
        if switch_s is not None:
            sys.setswitchinterval(switch_s)
        switch = sys.getswitchinterval()
        assert hub.bridge is not None and hub.bridge.connected.wait(10)
        time.sleep(0.5)
        n = len(msgs)
        # watched in memory: the hub counts a window stored once its batch has committed (a
        # SELECT count(*) every 20 ms took ~7 % of the hub process's CPU); the rows are counted after
        committed = hub.fleet.metrics.messages.labels(kind, "stored")
        with spinner or nullcontext():
            t0 = publish(port, msgs)
            deadline = time.monotonic() + 600
            t_end = time.monotonic()
            while time.monotonic() < deadline:
                t_end = time.monotonic()
                if committed._value.get() >= n:
                    break
                time.sleep(0.005)
        elapsed = t_end - t0
        with hub.fleet.session() as s:
            table = ReportRecord if kind == "report" else TelemetryWindow
            stored = s.exec(select(func.count()).select_from(table)).one()
        time.sleep(1.0)  # let the last acks arrive
        hub.stop()
        acked = watcher.result()
    except BaseException:
        watcher.proc.kill()
        raise
    finally:
        sys.setswitchinterval(was)
    hub.fleet.engine.dispose()
    if pg and schema:
        from bench.hub_api import _pg_drop

        _pg_drop(pg, schema)
    dropped = hub.fleet.metrics.queue_dropped._value.get()
    return {
        "case": label,
        "batch_max": batch_max,
        "messages": n,
        "stored": stored,
        "seconds": elapsed,
        "msgs_per_s": stored / elapsed,
        "lost": n - stored,
        "acked": acked,
        "queue_dropped": dropped,
        "switch_interval_s": switch,
        # the busy thread's rounds of 2,000 multiply-adds: its share of the interpreter
        "busy_loops": spinner.loops if spinner else 0,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 messages instead of 10,000")
    p.add_argument("--devices", type=int, default=100, help="distinct devices (default 100)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="limit and ours measured side by side this many times, medians reported (default 3: "
        "on a shared 2-core machine one round's limit moves by a third)",
    )
    p.add_argument(
        "--kind",
        choices=("telemetry", "report"),
        default="telemetry",
        help="what the devices send: telemetry windows (default) or install reports, as a fleet "
        "finishing an install sends them (written to bench/results/ingest_report.json)",
    )
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="registry database (default sqlite)")
    p.add_argument(
        "--same-process",
        action="store_true",
        help="publish from a thread of the measured consumer's process (how runs before 2026-12-04 measured)",
    )
    p.add_argument(
        "--gc-default",
        action="store_true",
        help="keep CPython's collector settings in this process (how runs before 2026-12-05 measured; "
        "by default it settles them for the limit and ours alike, as `edgefleet-hub serve` does)",
    )
    p.add_argument(
        "--busy",
        action="store_true",
        help="a thread of the hub's process runs Python without pause (a rollout POST, a fleet page, the "
        "ticker); the baseline is then the hub at CPython's default 5 ms switch interval, not a commit per "
        "message (written to bench/results/ingest_busy.json; --quick keeps the baseline under a minute)",
    )
    p.add_argument("--publish", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the publisher child
    p.add_argument("--per-device", type=int, help=argparse.SUPPRESS)
    p.add_argument("--watch-acks", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the ack watcher child
    args = p.parse_args(argv)
    if args.watch_acks is not None:
        return _watch_acks(args.watch_acks)
    if args.publish is not None:
        print(_publish_here(args.publish, payloads(args.kind, args.devices, args.per_device)), flush=True)
        return 0
    import os

    from bench.hub_api import PG_DEFAULT

    pg = os.environ.get("EDGEFLEET_BENCH_PG", PG_DEFAULT) if args.db == "postgres" else None
    if shutil.which("mosquitto") is None:
        print("mosquitto is not on PATH; install it (apt-get install mosquitto)", file=sys.stderr)
        return 2
    n = 2_000 if args.quick else 10_000
    per_device = max(1, n // args.devices)
    msgs = payloads(args.kind, args.devices, per_device)
    if not args.gc_default:
        from hub.server import settle_gc

        settle_gc()  # the limit runs in this process too: same collector settings for both
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n"
    )
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, what="mosquitto")
        publish = Publisher(args.devices, per_device, args.same_process, args.kind)
        raws: list[dict[str, Any]] = []
        ours_runs: list[dict[str, Any]] = []
        for r in range(args.rounds):  # the limit and ours side by side, each round
            raws.append(_raw(port, msgs, publish, args.kind))
            c = raws[-1]
            print(f"round {r + 1}: {c['case']:<25} {c['msgs_per_s']:>9.0f} msg/s  lost {c['lost']}", flush=True)
            label = "hub, batched commits, a busy thread (ours)" if args.busy else "hub, batched commits (ours)"
            ours_runs.append(
                _hub(port, msgs, work, 500, label, publish, pg, not args.gc_default, args.kind, busy=args.busy)
            )
            c = ours_runs[-1]
            print(
                f"round {r + 1}: {'ours':<25} {c['msgs_per_s']:>9.0f} msg/s  lost {c['lost']}  "
                f"acked {c['acked']}/{c['messages']}  "
                f"({c['msgs_per_s'] / raws[-1]['msgs_per_s']:.0%} of this round's limit)",
                flush=True,
            )
        if args.busy:
            base = _hub(
                port,
                msgs,
                work,
                500,
                "hub, batched commits, a busy thread, CPython's 5 ms switch interval (baseline)",
                publish,
                pg,
                not args.gc_default,
                args.kind,
                busy=True,
                switch_s=0.005,
            )
        else:
            base = _hub(
                port, msgs, work, 1, "hub, commit per message (baseline)", publish, pg, not args.gc_default, args.kind
            )
        print(
            f"{'baseline (once)':<34} {base['msgs_per_s']:>9.0f} msg/s  lost {base['lost']}  "
            f"acked {base['acked']}/{base['messages']}",
            flush=True,
        )
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    raw = {"msgs_per_s": statistics.median(c["msgs_per_s"] for c in raws)}
    ours = {
        "msgs_per_s": statistics.median(c["msgs_per_s"] for c in ours_runs),
        "lost": sum(c["lost"] for c in ours_runs),
        "messages": sum(c["messages"] for c in ours_runs),
        "acked": sum(c["acked"] for c in ours_runs),
    }
    per_round = [o["msgs_per_s"] / r["msgs_per_s"] for o, r in zip(ours_runs, raws, strict=True)]
    name = "ingest" if args.kind == "telemetry" else f"ingest_{args.kind}"
    path = report.write(
        name + "_busy" if args.busy else name,
        "msgs/s",
        True,
        ours["msgs_per_s"],
        base["msgs_per_s"],
        raw["msgs_per_s"],
        {
            "messages": len(msgs),
            "kind": args.kind,
            "devices": args.devices,
            "qos": 1,
            "db": "postgresql" if pg else "sqlite (WAL)",
            "batch_max": 500,
            "quick": args.quick,
            "publisher": "same process" if args.same_process else "own process",
            "rounds": args.rounds,
            "gc": "CPython defaults" if args.gc_default else "settled (hub.server.settle_gc)",
            "figures": "medians of the rounds (limit, ours); the baseline once",
            "ours_over_limit_per_round": per_round,
            "busy_thread": args.busy,
            "switch_interval_s": {"ours": ours_runs[-1]["switch_interval_s"], "baseline": base["switch_interval_s"]},
        },
        [*raws, *ours_runs, base],
    )
    if args.busy:
        print(
            f"\na busy thread in the hub's process the whole time{'':<10} {'msgs/s':>9}\n"
            f"{'limit (raw subscriber, idle process), median':<58} {raw['msgs_per_s']:>9.0f}\n"
            f"{'ours (switch interval ' + _ms(ours_runs[-1]['switch_interval_s']) + '), median':<58} "
            f"{ours['msgs_per_s']:>9.0f}\n"
            f"{'baseline (CPython default ' + _ms(base['switch_interval_s']) + ')':<58} {base['msgs_per_s']:>9.0f}\n"
            f"ours/baseline {ours['msgs_per_s'] / base['msgs_per_s']:.1f}x, ours/limit "
            f"{ours['msgs_per_s'] / raw['msgs_per_s']:.0%}; wrote {path}"
        )
    else:
        print(
            f"\n{'':<34} {'msgs/s':>9}\n{'limit (raw subscriber), median':<34} {raw['msgs_per_s']:>9.0f}\n"
            f"{'ours (batched), median':<34} {ours['msgs_per_s']:>9.0f}\n{'baseline (commit per message)':<34} "
            f"{base['msgs_per_s']:>9.0f}\nours/baseline {ours['msgs_per_s'] / base['msgs_per_s']:.1f}x, "
            f"ours/limit {ours['msgs_per_s'] / raw['msgs_per_s']:.0%} (per round: "
            f"{', '.join(f'{x:.0%}' for x in per_round)}); wrote {path}"
        )
    lost = ours["lost"] + base["lost"] + (ours["messages"] - ours["acked"])
    if lost:
        print(f"LOSS: {lost} messages not stored or not acked", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
