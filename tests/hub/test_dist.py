"""The hub serves the installer and the agent wheel from `make dist`'s folder (issue 16 part 1)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hub.config import HubConfig
from hub.dist import newest_wheel, render_installer, servable
from hub.errors import ConfigError, Invalid, NotFound
from hub.server import build
from hub.transport import MemoryPublisher
from tests.conftest import REPO

from .conftest import hub_config

WHEEL = "edgefleet-0.1.0-py3-none-any.whl"
INSTALL_SH = REPO / "firmware_images" / "install.sh"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    d.mkdir()
    for name in ("install.sh", "coral-setup.sh", "edgefleet-agent.service"):
        shutil.copy(REPO / "firmware_images" / name, d / name)
    (d / WHEEL).write_bytes(b"PK\x03\x04 a wheel")
    (d / "agent.toml.example").write_text("password = 'not for download'\n")
    return d


def _client(tmp_path: Path, keys_dir: Path, dist: Path | None) -> Iterator[TestClient]:
    hub = build(hub_config(tmp_path, keys_dir, dist=dist), publisher=MemoryPublisher(), with_broker=False)
    try:
        with TestClient(hub.app) as c:  # no token: a device being installed has none
            yield c
    finally:
        hub.fleet.engine.dispose()


@pytest.fixture
def anon(tmp_path: Path, keys_dir: Path, dist: Path) -> Iterator[TestClient]:
    yield from _client(tmp_path, keys_dir, dist)


def test_installer_from_the_hub_knows_the_hub_the_wheel_and_the_root_fingerprint(anon: TestClient):
    r = anon.get("/install.sh")
    assert r.status_code == 200, r.text
    root_sha = hashlib.sha256(anon.get("/api/v1/root").content).hexdigest()
    assert "EF_HUB_DEFAULT='http://testserver'\n" in r.text
    assert f"EF_WHEEL_DEFAULT='{WHEEL}'\n" in r.text
    assert f"EF_ROOT_SHA256_DEFAULT='{root_sha}'\n" in r.text
    # what the device runs is still a valid POSIX script (shellcheck when present, else sh -n)
    tool = ["shellcheck", "-s", "sh", "-"] if shutil.which("shellcheck") else ["sh", "-n"]
    out = subprocess.run(tool, input=r.text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_wheel_and_unit_are_served_byte_for_byte(anon: TestClient, dist: Path):
    for name in (WHEEL, "edgefleet-agent.service", "coral-setup.sh"):
        r = anon.get(f"/dist/{name}")
        assert r.status_code == 200 and r.content == (dist / name).read_bytes(), name


@pytest.mark.parametrize("name", ["agent.toml.example", "..%2F..%2Fhub.db", "edgefleet-0.1.0.tar.gz", "x.whl"])
def test_only_the_installers_files_are_served(anon: TestClient, name: str):
    r = anon.get(f"/dist/{name}")
    assert r.status_code == 404 and "not found" in r.json()["error"].lower(), r.text


def test_hub_without_a_dist_folder_says_how_to_give_it_one(tmp_path: Path, keys_dir: Path):
    for c in _client(tmp_path, keys_dir, None):
        r = c.get("/install.sh")
        assert r.status_code == 404 and "--dist DIR" in r.json()["error"]


def test_dist_folder_without_a_wheel_is_named_in_the_404(tmp_path: Path, keys_dir: Path, dist: Path):
    (dist / WHEEL).unlink()
    for c in _client(tmp_path, keys_dir, dist):
        r = c.get("/install.sh")
        assert r.status_code == 404 and "make dist" in r.json()["error"]


def test_newest_wheel_compares_versions_as_numbers():
    names = ["edgefleet-0.9.1-py3-none-any.whl", "edgefleet-0.10.0-py3-none-any.whl", "install.sh"]
    assert newest_wheel(names) == "edgefleet-0.10.0-py3-none-any.whl"
    with pytest.raises(NotFound, match="agent wheel"):
        newest_wheel(["install.sh"])
    assert servable(WHEEL) and servable("coral-setup.sh") and not servable("../install.sh")


def test_a_value_that_could_escape_the_shell_quotes_is_refused():
    script = INSTALL_SH.read_text()
    with pytest.raises(Invalid, match="EF_HUB_DEFAULT .*cannot quote"):
        render_installer(script, "http://x/'; rm -rf / #", WHEEL, "ab" * 32)


def test_a_script_without_the_placeholders_is_refused_not_served_half_filled():
    with pytest.raises(Invalid, match="expected one line 'EF_HUB_DEFAULT=\"\"', found 0"):
        render_installer("#!/bin/sh\necho hi\n", "http://hub", WHEEL, "ab" * 32)


def test_a_dist_setting_that_is_not_a_directory_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="config dist: .*missing.* is not a directory"):
        HubConfig.load({"dist": str(tmp_path / "missing"), "dev": True}, environ={})
    assert HubConfig.load({"dev": True}, environ={"EDGEFLEET_HUB_DIST": str(tmp_path)}).dist == tmp_path
