"""docker-compose.yml is accepted by the compose client (no engine needed for `config`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
