"""Fixtures for the device-installation tests: `make dist`'s folder, a real hub serving it, a bookworm
root built with mmdebstrap (cached as a tarball between runs)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

FIRMWARE = REPO / "firmware_images"
UNIT = FIRMWARE / "edgefleet-agent.service"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgefleet"
BOOKWORM_PACKAGES = "python3,python3-venv,ca-certificates,curl,systemd"
MIRROR = "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make dist` builds (scripts/dist.sh): the wheel, install.sh, coral-setup.sh, the unit."""
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PY": str(REPO / ".venv" / "bin" / "python")}
    res = subprocess.run(["sh", str(REPO / "scripts" / "dist.sh"), str(out)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("edgefleet-*-py3-none-any.whl")
    return wheel


@dataclass
class HubForDevices:
    url: str
    root_sha256: str
    fleet: object

    def token(self, device: str) -> str:
        return str(self.fleet.api("POST", "/api/v1/devices/enroll", {"device": device})["token"])  # type: ignore[attr-defined]

    def device(self, device: str) -> dict[str, object]:
        return self.fleet.api("GET", f"/api/v1/devices/{device}")  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def hub_for_devices(tmp_path: Path, dist: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubForDevices]:
    """A real broker and hub process, the hub serving ``dist`` (EDGEFLEET_HUB_DIST)."""
    import hashlib

    from demo.launcher import Fleet

    monkeypatch.setenv("EDGEFLEET_HUB_DIST", str(dist))
    fleet = Fleet(tmp_path / "fleet")
    try:
        fleet.start_broker()
        root = fleet.init_keys()
        fleet.start_hub()
        yield HubForDevices(fleet.hub_url, hashlib.sha256(root.read_bytes()).hexdigest(), fleet)
    finally:
        fleet.stop_all()


def owner(path: Path, root: Path) -> tuple[str, str, str]:
    """(user, group, mode) of ``path`` with names from ``root``'s passwd/group (a chroot or prefix)."""
    st = path.stat()
    users = {int(f[2]): f[0] for f in (ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines())}
    groups = {int(f[2]): f[0] for f in (ln.split(":") for ln in (root / "etc/group").read_text().splitlines())}
    return users.get(st.st_uid, str(st.st_uid)), groups.get(st.st_gid, str(st.st_gid)), oct(st.st_mode & 0o7777)


def bookworm_tarball() -> Path:
    """A Debian bookworm root (mmdebstrap, minbase + python3-venv, curl, systemd) as a tarball,
    built once and cached under ~/.cache/edgefleet/, named by its package list (a new list builds a
    new root); skips with the reason when it cannot be built."""
    tar = CACHE / f"bookworm-minbase-{hashlib.sha256(BOOKWORM_PACKAGES.encode()).hexdigest()[:12]}.tar"
    if tar.is_file() and tar.stat().st_size > 0:
        return tar
    if os.geteuid() != 0:
        pytest.skip("a bookworm chroot needs root (mmdebstrap, chroot); the --prefix test covers the script")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (scripts/test-deps.sh installs it as root with apt-get)")
    CACHE.mkdir(parents=True, exist_ok=True)
    part = tar.with_suffix(".part")
    part.unlink(missing_ok=True)  # a run killed mid-build
    # --format=tar: mmdebstrap picks the format from the name otherwise, and ".part" made a directory
    argv = ["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={BOOKWORM_PACKAGES}", "bookworm"]
    res = subprocess.run(
        [*argv, str(part), MIRROR],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if res.returncode != 0:
        part.unlink(missing_ok=True)
        pytest.skip(f"mmdebstrap could not build a bookworm root (no network to {MIRROR}?): {res.stderr[-400:]}")
    part.rename(tar)
    return tar
