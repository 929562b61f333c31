"""A 3-node NATS cluster with JetStream and MQTT listeners, started by a test on free loopback
ports in temp dirs (``nats-server`` from the distribution; tests skip without it).

Each node is its own process (so one can be killed -9), with a ``server_name`` (NATS's MQTT
needs one) and JetStream storage in its own directory; the nodes route to each other, so
JetStream (which keeps MQTT sessions and retained messages) is replicated and keeps a quorum
with one node down. ``users``: optional ``{name: (password, publish, subscribe)}`` with NATS
subject permissions (MQTT ``a/b`` is NATS ``a.b``), to show per-device ACLs; without it the
cluster is open (no auth), as most tests run it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo.launcher import LaunchError, free_ports, wait_port

NATS_SERVER = shutil.which("nats-server")


@dataclass
class NatsNode:
    name: str
    dir: Path
    client_port: int
    cluster_port: int
    mqtt_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def log(self) -> Path:
        return self.dir / "nats.log"


@dataclass
class NatsCluster:
    root: Path
    users: dict[str, tuple[str, list[str], list[str]]] | None = None
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(12)  # distinct: four a node
        for i in range(3):
            d = self.root / f"n{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsNode(f"n{i}", d, *ports[4 * i : 4 * i + 4]))

    def _config(self, node: NatsNode) -> str:
        routes = [f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node]
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.client_port}",
            f"http: 127.0.0.1:{node.monitor_port}",
            f"jetstream {{ store_dir: {json.dumps(str(node.dir / 'js'))} }}",
            f"cluster {{ name: ef, listen: 127.0.0.1:{node.cluster_port}, routes: {json.dumps(routes)} }}",
            # every node holds every session and retained message: one node down keeps a quorum
            # (left to itself, nats-server 2.9 chose 2 replicas here, and lost it). A subscription
            # is a consumer: one replica in memory, so re-subscribing after a node died does not
            # wait on a raft group that includes the dead node (ADR 0013)
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: 3, consumer_replicas: 1,"
            " consumer_memory_storage: true }",
        ]
        if self.users:
            # QoS 1 subscriptions are JetStream consumers delivering to $MQTT.sub.<id> in the
            # user's name: each MQTT user needs subscribe on it. Users may connect over MQTT only
            # (not NATS's own protocol, where $MQTT.sub.> would show every device's deliveries).
            users = [
                {
                    "user": u,
                    "password": p,
                    "permissions": {"publish": pub, "subscribe": [*sub, "$MQTT.sub.>"]},
                    "allowed_connection_types": ["MQTT"],
                }
                for u, (p, pub, sub) in self.users.items()
            ]
            lines.append(f"authorization {{ users: {json.dumps(users)} }}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 60) -> NatsCluster:
        if NATS_SERVER is None:
            raise RuntimeError("nats-server is not installed")
        try:
            for n in self.nodes:
                self.start_node(n, wait=False)
            for n in self.nodes:
                wait_port(n.mqtt_port, timeout, n.proc, f"nats-server {n.name}")
        except LaunchError as exc:  # no node left running, and the reason from the node's own log
            self.stop()
            tails = {n.name: n.log.read_text(errors="replace").splitlines()[-3:] for n in self.nodes if n.log.exists()}
            raise LaunchError(f"{exc}; last log lines: {tails}") from None
        return self

    def start_node(self, node: NatsNode, wait: bool = True) -> None:
        assert NATS_SERVER is not None
        conf = node.dir / "nats.conf"
        conf.write_text(self._config(node))
        with open(node.log, "ab") as out:
            node.proc = subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        if wait:
            wait_port(node.mqtt_port, 60, node.proc, f"nats-server {node.name}")

    def kill(self, node: NatsNode) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.terminate()
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(5)

    def wait_jetstream(self, timeout: float = 120) -> None:
        """Until every running node's /jsz names a meta leader that sees its followers current (MQTT
        connects fail before). 120 s: a fresh cluster once took over 60 s to elect one in CI."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for n in self.nodes:
                if n.proc is None or n.proc.poll() is not None:
                    continue
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{n.monitor_port}/jsz", timeout=5) as r:
                        doc = json.loads(r.read())
                except OSError:
                    ok = False
                    break
                meta = doc.get("meta_cluster") or {}
                if not meta.get("leader"):
                    ok = False
                    break
                if meta.get("leader") == n.name and len([r for r in meta.get("replicas", []) if r["current"]]) < 2:
                    ok = False  # the leader does not see both followers yet
                    break
            if ok:
                return
            time.sleep(0.2)
        raise TimeoutError(f"no JetStream meta leader within {timeout} s")
