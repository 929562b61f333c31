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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

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
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_HUB_TOKEN"} | extra_env
    return subprocess.run([*cmd, "-f", str(REPO / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, env=env, cwd=REPO)


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
    holders = {name for name, svc in services.items()
               if any(vol == "keys" for vol, _ in named_mounts(svc).values())}
    assert holders == {"keys", "hub"}, holders
    for name in ("agent", "cloud"):
        mounts = named_mounts(services[name])
        assert ("trust", True) in mounts.values(), (name, mounts)  # root.json only, read-only
        for path in mounts:
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


def test_the_broker_drops_packets_larger_than_the_hub_ever_sends() -> None:
    from hub.credentials import max_packet_bytes
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    sizes = re.findall(r"^max_packet_size (\d+)$", conf, re.M)
    assert sizes == [str(max_packet_bytes(65536))], sizes  # the hub's default --chunk-size
