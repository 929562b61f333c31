"""docker-compose.yml: accepted by the compose client (no engine needed for `config`), keeps its
security promises (only the hub sees signing keys, devices are told a reachable broker, volumes
owned by the services' user, bounded MQTT packets), and its services' commands and environment
come up together when run as plain local processes (the smoke test; no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, wait_port

REPO = Path(__file__).resolve().parents[2]


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def run_config(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no docker-compose / docker compose client installed")
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_HUB_TOKEN"}
    env |= {"GRAFANA_ADMIN_PASSWORD": "grafana-test-password"} | extra_env  # required since issue 17
    return subprocess.run(
        [*cmd, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True, env=env, cwd=REPO
    )


def test_compose_file_is_valid_and_defines_the_four_services():
    res = run_config({"EDGEFLEET_HUB_TOKEN": "t0ken", "EDGEFLEET_CLOUD_API_KEYS": "app:s3cret"})
    assert res.returncode == 0, res.stderr
    for service in ("mosquitto:", "hub:", "cloud:", "agent:"):
        assert service in res.stdout


def test_compose_refuses_to_start_the_hub_without_an_operator_token():
    res = run_config({"EDGEFLEET_CLOUD_API_KEYS": "app:s3cret"})
    assert res.returncode != 0
    assert "EDGEFLEET_HUB_TOKEN" in res.stderr


def test_compose_refuses_to_start_the_cloud_fallback_without_api_keys():
    res = run_config({"EDGEFLEET_HUB_TOKEN": "t0ken"})
    assert res.returncode != 0
    assert "EDGEFLEET_CLOUD_API_KEYS" in res.stderr


def test_every_dockerfile_the_compose_file_names_exists():
    text = (REPO / "docker-compose.yml").read_text()
    for line in text.splitlines():
        if "dockerfile:" in line:
            path = line.split("dockerfile:")[1].strip(" }")
            assert (REPO / path).exists(), path


# ---- the compose file's own promises, read from it ------------------------------------------

COMPOSE_FILE = REPO / "docker-compose.yml"
# commands of images this repository does not build (the image's default CMD)
IMAGE_COMMANDS = {"eclipse-mosquitto:2": ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]}
_VAR = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict) and "services" in doc, doc
    return doc


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax: ``$$``, ``$X``, ``${X}``, ``${X:-default}``, ``${X:?error}``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        value, op = env.get(name), m.group("op")
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("-") and unset:
            return m.group("arg")
        if op and op.endswith("?") and unset:
            raise AssertionError(f"compose would refuse to start: {name}: {m.group('arg')}")
        return value or ""

    return _VAR.sub(one, text)


def named_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """container path -> (named volume, read-only) for the service's named-volume mounts."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        if not source.startswith((".", "/")):
            out[target] = (source, "ro" in mode)
    return out


def test_only_the_hub_and_its_keys_job_mount_the_signing_keys() -> None:
    services = compose()["services"]
    holders = {name for name, svc in services.items() if any(vol == "keys" for vol, _ in named_mounts(svc).values())}
    assert holders == {"keys", "hub"}, holders
    for name in ("agent", "cloud"):
        mounts = named_mounts(services[name])
        assert ("trust", True) in mounts.values(), (name, mounts)  # root.json only, read-only
        for arg in services[name]["command"]:
            assert "/keys" not in arg, (name, arg)
    agent_toml = tomllib.loads((REPO / "deploy/agent/agent.compose.toml").read_text())
    assert agent_toml["root"] == "/trust/root.json"


def test_enrolling_devices_are_told_a_broker_outside_the_compose_network() -> None:
    hub = compose()["services"]["hub"]
    args = hub["command"]
    public = args[args.index("--broker-public") + 1]
    assert public == "${EDGEFLEET_BROKER_PUBLIC:-mqtt://localhost:1883}", public
    assert interpolate(public, {}) == "mqtt://localhost:1883"
    assert interpolate(public, {"EDGEFLEET_BROKER_PUBLIC": "mqtt://10.0.0.5:1883"}) == "mqtt://10.0.0.5:1883"
    assert "EDGEFLEET_BROKER_PUBLIC" in COMPOSE_FILE.read_text().split("services:")[0]  # documented up top


def test_every_named_volume_mount_point_is_made_and_owned_by_the_images_user() -> None:
    # Docker fills an empty named volume from the image's directory, owner included; a directory
    # the image lacks becomes a root-owned volume the uid-10001 service cannot write
    for name, svc in compose()["services"].items():
        if "build" not in svc:
            continue
        dockerfile = (REPO / svc["build"]["dockerfile"]).read_text()
        runs = " ".join(line for line in dockerfile.replace("\\\n", " ").splitlines() if line.startswith("RUN"))
        for path in named_mounts(svc):
            assert re.search(rf"mkdir -p [^&]*{re.escape(path)}(\s|$)", runs), (name, path)
            assert re.search(rf"chown \S+ [^&]*{re.escape(path)}(\s|$)", runs), (name, path)


def test_the_broker_drops_packets_larger_than_the_hub_ever_sends_and_queues_a_whole_download() -> None:
    from hub.credentials import max_packet_bytes, max_queued_messages

    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    sizes = re.findall(r"^max_packet_size (\d+)$", conf, re.M)
    assert sizes == [str(max_packet_bytes(65536))], sizes  # the hub's default --chunk-size
    # a download's whole retained replay fits the session queue, as in the hub's edgefleet.conf
    assert re.findall(r"^max_queued_messages (\d+)$", conf, re.M) == [str(max_queued_messages())]


# ---- the smoke test: every service's command and environment as plain local processes -------


@dataclass
class Stack:
    tmp: Path
    env: dict[str, str]  # the operator's environment for interpolation
    ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, container port) -> local
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def port(self, service: str, container_port: int) -> int:
        return self.ports.setdefault((service, container_port), free_port())

    def paths(self, service: dict[str, Any]) -> dict[str, Path]:
        """container path -> local path: one directory per named volume (shared between the
        services that mount it, as in Docker), localized copies of bind-mounted files."""
        out: dict[str, Path] = {}
        for target, (volume, _) in named_mounts(service).items():
            out[target] = self.tmp / "volumes" / volume
            out[target].mkdir(parents=True, exist_ok=True)
        for spec in service.get("volumes", []):
            source, target, *_ = spec.split(":")
            if source.startswith((".", "/")):
                out[target] = self.localized_file(source, dict(out))
        return out

    def localize(self, text: str, paths: Mapping[str, Path]) -> str:
        """Container paths -> local paths, compose host names and ports -> 127.0.0.1:<local>."""
        for target in sorted(paths, key=len, reverse=True):
            text = re.sub(rf"(?<![\w.-]){re.escape(target)}(?=/|\b|$)", str(paths[target]), text)
        for (svc, cport), local in self.ports.items():
            text = text.replace(f"{svc}:{cport}", f"127.0.0.1:{local}")
        return text.replace("0.0.0.0", "127.0.0.1")

    def localized_file(self, source: str, paths: Mapping[str, Path]) -> Path:
        """A bind-mounted config file with its paths, hosts and listening ports made local."""
        text = (REPO / source).read_text()
        text = re.sub(r"^listener 1883\b", f"listener {self.port('mosquitto', 1883)}", text, flags=re.M)
        text = re.sub(r"^http_port = 8500$", f"http_port = {self.port('agent', 8500)}", text, flags=re.M)
        out = self.tmp / "files" / source.lstrip("./")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.localize(text, paths))
        return out

    def argv_env(self, name: str) -> tuple[list[str], dict[str, str]]:
        svc = compose()["services"][name]
        for spec in svc.get("ports", []):
            self.port(name, int(str(spec).split(":")[-1]))
        paths = self.paths(svc)
        args = [interpolate(a, self.env) for a in svc.get("command") or IMAGE_COMMANDS[svc["image"]]]
        argv = []
        for prev, arg in zip([""] + args, args, strict=False):  # prev is one behind
            if prev == "--port":
                arg = str(self.port(name, int(arg)))
            argv.append(self.localize(arg, paths))
        env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(self.tmp), "LANG": "C.UTF-8"}
        env |= {k: interpolate(str(v), self.env) for k, v in (svc.get("environment") or {}).items()}
        return argv, env

    def start(self, name: str) -> subprocess.Popen[bytes]:
        argv, env = self.argv_env(name)
        log = open(self.tmp / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.procs[name]

    def run(self, name: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.argv_env(name)
        return subprocess.run(argv, env=env, cwd=self.tmp, capture_output=True, text=True, timeout=120)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def poll_json(
    url: str, ok: Any, timeout: float, what: str, stack: Stack, service: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if stack.procs[service].poll() is not None:
            raise AssertionError(f"{service} exited {stack.procs[service].returncode}:\n{stack.log(service)[-3000:]}")
        try:
            r = httpx.get(url, headers=headers, timeout=5)
            last = f"{r.status_code} {r.text[:300]}"
            if r.status_code == 200 and ok(r.json()):
                return r.json()  # type: ignore[no-any-return]
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{what}: {last}\n{stack.log(service)[-3000:]}")


def mqtt_delivers(port: int, size: int) -> bool:
    """Publish ``size`` bytes through the broker; True if a subscriber received them."""
    import paho.mqtt.client as mqtt

    got = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"smoke-sub-{size}")
    sub.on_message = lambda c, u, msg: got.set() if len(msg.payload) == size else None
    sub.connect("127.0.0.1", port)
    sub.subscribe("smoke/size", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"smoke-pub-{size}")
    try:
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        time.sleep(0.3)  # the subscription is in place
        pub.publish("smoke/size", b"x" * size, qos=1)
        return got.wait(3)
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()


@pytest.mark.integration
def test_the_compose_services_commands_run_as_local_processes_and_come_up_connected(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto binary not on PATH")
    token, api_secret = "smoke-" + "t" * 24, "s" * 24
    public = "mqtt://edge-gateway.example:1883"  # what an operator sets for devices on the LAN
    stack = Stack(
        tmp_path,
        {
            "EDGEFLEET_HUB_TOKEN": token,
            "EDGEFLEET_CLOUD_API_KEYS": f"apps:{api_secret}",
            "EDGEFLEET_BROKER_PUBLIC": public,
        },
    )
    try:
        broker = stack.start("mosquitto")
        broker_port = stack.port("mosquitto", 1883)
        wait_port(broker_port, 20, broker, "mosquitto")  # type: ignore[arg-type]
        assert mqtt_delivers(broker_port, 512 * 1024)
        assert not mqtt_delivers(broker_port, 2 * 1024 * 1024)  # over max_packet_size: dropped

        for attempt in (1, 2):  # the job runs on every `up`: the second run keeps the same keys
            job = stack.run("keys")
            assert job.returncode == 0, job.stdout + job.stderr
            keys, trust = tmp_path / "volumes" / "keys", tmp_path / "volumes" / "trust"
            assert (keys / "online.pem").exists()
            assert sorted(p.name for p in trust.iterdir()) == ["root.json"]  # no private key
            assert (trust / "root.json").read_bytes() == (keys / "root.json").read_bytes()
            if attempt == 1:
                first_root = (keys / "root.json").read_bytes()
        assert (keys / "root.json").read_bytes() == first_root

        stack.start("hub")
        hub = f"http://127.0.0.1:{stack.port('hub', 8000)}"
        health = poll_json(
            f"{hub}/healthz", lambda d: d.get("mqtt") is True, 60, "hub /healthz with mqtt connected", stack, "hub"
        )
        assert health["status"] == "ok" and health["db"] == "ok"
        admin = {"authorization": f"Bearer {token}"}
        r = httpx.post(f"{hub}/api/v1/devices/enroll", json={"device": "lan-camera-1"}, headers=admin)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{hub}/api/v1/enroll", json={"token": r.json()["token"]})
        assert r.status_code == 200, r.text
        assert r.json()["broker"] == public  # not mqtt://mosquitto:1883, which no device resolves

        stack.start("cloud")
        cloud = f"http://127.0.0.1:{stack.port('cloud', 8100)}"
        poll_json(f"{cloud}/healthz", lambda d: d == {"status": "ok"}, 60, "cloud /healthz", stack, "cloud")
        assert httpx.get(f"{cloud}/v1/models").status_code == 401  # keys from the environment
        assert httpx.get(f"{cloud}/v1/models", headers={"x-api-key": api_secret}).status_code == 200

        stack.start("agent")
        poll_json(
            f"{hub}/api/v1/devices/compose-agent-1",
            lambda d: d.get("online") is True,
            60,
            "the compose agent online at the hub",
            stack,
            "agent",
            headers=admin,
        )
        # what the compose Prometheus scrapes (deploy/prometheus/prometheus.yml) answers
        agent = f"http://127.0.0.1:{stack.port('agent', 8500)}"
        for base, family in ((hub, "edgefleet_fleet_latency_seconds"), (cloud, "edgefleet_cloud_request_seconds")):
            r = httpx.get(f"{base}/metrics")
            assert r.status_code == 200 and f"# TYPE {family} histogram" in r.text, base
        r = httpx.get(f"{agent}/metrics")  # http_metrics = true in agent.compose.toml
        assert r.status_code == 200 and "# TYPE edgefleet_agent_latency_seconds histogram" in r.text
    finally:
        stack.stop()
    for name in stack.procs:
        assert "Traceback" not in stack.log(name), stack.log(name)
