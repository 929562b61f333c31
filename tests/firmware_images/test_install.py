"""install.sh run the way a device runs it, against a real hub and broker (issue 16 part 5).

* ``test_first_boot_in_a_bookworm_chroot_...``: a Debian bookworm root (mmdebstrap, cached) gets
  the cloud-init user-data's first-boot command run inside it with chroot: curl fetches install.sh
  from the hub, which installs the wheel the hub serves with ``[agent]`` from PyPI, enrolls with a
  one-time token and installs the unit (systemd is not PID 1 in a chroot: enabled, not started).
  Then the installed files are checked (owners and modes, the unit with ``systemd-analyze verify``
  and ``security --offline`` in that root), the installer is rerun, ``edgefleet-agent doctor``
  runs as the service user, and the agent is started inside the chroot as the service user and
  must come online at the hub.
* ``test_installer_in_a_temp_prefix_...``: the lighter check when no chroot can be built: the
  operator's ``curl -fsSL HUB/install.sh | sh -s -- --token T`` with ``--prefix`` on this host's
  Python, then a rerun from the wheel file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.config import load

from .conftest import CACHE, FIRMWARE, HubForDevices, bookworm_tarball, owner, wheel_of

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _run(argv: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def _check_installed(root: Path, device: str) -> None:
    """The installed files on a device root (a chroot or a --prefix)."""
    assert owner(root / "etc/edgefleet", root) == ("root", "edgefleet", "0o750")
    for name in ("agent.toml", "root.json"):  # readable by the service, by nobody else
        assert owner(root / "etc/edgefleet" / name, root) == ("root", "edgefleet", "0o640"), name
    assert owner(root / "var/lib/edgefleet-agent", root) == ("edgefleet", "edgefleet", "0o750")
    user = next(ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("edgefleet:"))
    assert int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin", user  # a system user, no login
    plugdev = next(ln for ln in (root / "etc/group").read_text().splitlines() if ln.startswith("plugdev:"))
    assert "edgefleet" in plugdev.split(":")[3].split(","), plugdev
    unit = root / "etc/systemd/system/edgefleet-agent.service"
    assert unit.read_bytes() == (FIRMWARE / "edgefleet-agent.service").read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/edgefleet-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/edgefleet-agent.service"
    assert re.search(rf'^device_id = "{device}"$', (root / "etc/edgefleet/agent.toml").read_text(), re.M)


@pytest.mark.integration
@pytest.mark.slow
def test_installer_in_a_temp_prefix_enrolls_and_writes_files_the_service_user_can_read(
    tmp_path: Path, dist: Path, hub_for_devices: HubForDevices
):
    if os.geteuid() != 0:
        pytest.skip("install.sh runs as root (it creates a user and chowns files)")
    root = tmp_path / "prefix"
    (root / "etc").mkdir(parents=True)
    for name, line in {"passwd": "root:x:0:0:root:/root:/bin/sh", "group": "root:x:0:"}.items():
        (root / "etc" / name).write_text(line + "\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).write_text("root:*::\n" if name == "gshadow" else "root:*:19000:0:99999:7:::\n")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (the operator's command pipes it into sh)")
    # the operator's command, piped: the hub's script knows the hub, the wheel and the root's sha256
    piped = f"curl -fsSL {hub_for_devices.url}/install.sh | sh -s -- --token {hub_for_devices.token('pi-prefix')}"
    first = _run(["sh", "-c", f"{piped} --prefix {root} --board rpi5"])
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert f"downloading {hub_for_devices.url}/dist/{wheel_of(dist).name}" in first.stdout
    assert f"--root-sha256 {hub_for_devices.root_sha256}" in first.stdout
    for n in range(1, 10):
        assert f"==> [{n}/9]" in first.stdout  # every step says what it does
    assert "systemd is not running here" in first.stdout
    _check_installed(root, "pi-prefix")
    cfg = load(root / "etc/edgefleet/agent.toml", env={})
    assert (cfg.device_id, cfg.board, cfg.state_dir) == ("pi-prefix", "rpi5", root / "var/lib/edgefleet-agent")
    # rerun-safe, from the wheel file (an offline install): no token needed, the enrollment is kept
    argv = ["sh", str(dist / "install.sh"), "--prefix", str(root), "--wheel", str(wheel_of(dist))]
    argv += ["--hub", hub_for_devices.url, "--root-sha256", hub_for_devices.root_sha256, "--board", "rpi5"]
    again = _run(argv)
    assert again.returncode == 0 and "already enrolled as pi-prefix" in again.stdout, again.stdout + again.stderr
    assert "user edgefleet: present" in again.stdout and "venv /opt/edgefleet/venv: present" in again.stdout
    _check_installed(root, "pi-prefix")
    # a spent token is refused, and the failure names the step
    reenroll = _run([*argv, "--reenroll", "--token", "not-a-token"])
    assert reenroll.returncode == 1 and "FAILED at step 8/9: enrollment failed" in reenroll.stderr, reenroll.stderr


# ---- the bookworm chroot ----------------------------------------------------------------------


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounts: list[Path] = []

    def mount(self, *args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        res = _run(["mount", *args, str(target)], timeout=60)
        if res.returncode != 0:
            pytest.skip(f"cannot mount in the chroot (a container without CAP_SYS_ADMIN?): {res.stderr.strip()}")
        self.mounts.append(target)

    def env(self, **extra: str) -> dict[str, str]:
        base = {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "PIP_CACHE_DIR": "/var/cache/pip"}
        # pip trusts certifi's CAs, not the system's: point it at the (host's) system bundle
        return {**base, "PIP_CERT": CA_BUNDLE, **extra}

    def run(self, *argv: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess[str]:
        return _run(["chroot", str(self.root), *argv], timeout=timeout, env=self.env(**env))

    def close(self) -> None:
        for target in reversed(self.mounts):
            _run(["umount", "--lazy", str(target)], timeout=60)


@pytest.fixture
def bookworm(tmp_path: Path) -> Iterator[Chroot]:
    tar = bookworm_tarball()
    root = tmp_path / "bookworm"
    ch = Chroot(root)
    try:
        # the root in memory: unpacking it and dropping it (~600 MB once the agent is installed)
        # took 40 s and 40-70 s on a loaded disk; a tmpfs is unmounted at once
        ch.mount("-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs", target=root)
        res = _run(["tar", "-xf", str(tar), "-C", str(root)], timeout=600)
        assert res.returncode == 0, res.stderr
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")  # PyPI from inside
        if Path(CA_BUNDLE).is_file():  # a network that intercepts TLS has its CA in the host's bundle
            shutil.copy(CA_BUNDLE, root / CA_BUNDLE.lstrip("/"))
        ch.mount("-t", "proc", "proc", target=root / "proc")
        pip_cache = CACHE / "pip-bookworm"  # wheels pip fetched inside, kept between runs
        pip_cache.mkdir(parents=True, exist_ok=True)
        ch.mount("--bind", str(pip_cache), target=root / "var/cache/pip")
        yield ch
    finally:
        ch.close()  # the tmpfs last: the root goes with it
        shutil.rmtree(root, ignore_errors=True)  # the empty mount point


def _first_boot_command(hub: str, token: str) -> tuple[dict[str, str], list[str]]:
    """The user-data's write_files (path -> content, values filled in) and its runcmd."""
    doc = yaml.safe_load((FIRMWARE / "cloud-init" / "user-data").read_text())
    files = {}
    for f in doc["write_files"]:
        content = f["content"].replace("https://hub.example.com", hub)
        files[f["path"]] = content.replace("REPLACE-WITH-THE-ENROLLMENT-TOKEN", token)
    (cmd,) = doc["runcmd"]
    return files, cmd


@pytest.mark.integration
@pytest.mark.slow
def test_first_boot_in_a_bookworm_chroot_installs_enrolls_and_the_agent_comes_online(
    bookworm: Chroot, dist: Path, hub_for_devices: HubForDevices
):
    root = bookworm.root
    # cloud-init's part: the user-data's files, then its runcmd (curl HUB/install.sh, sh it)
    files, cmd = _first_boot_command(hub_for_devices.url, hub_for_devices.token("pi-chroot"))
    for path, content in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(content)
    boot = bookworm.run(*cmd, timeout=1500)
    log = boot.stdout[-6000:] + boot.stderr[-6000:]
    assert boot.returncode == 0, log
    assert "systemd is not running here (chroot" in boot.stdout, log
    assert f"--root-sha256 {hub_for_devices.root_sha256}" in boot.stdout  # pinned by the hub's script
    assert not (root / "etc/edgefleet/firstboot.env").exists()  # the spent token is not left behind
    _check_installed(root, "pi-chroot")
    cfg_text = (root / "etc/edgefleet/agent.toml").read_text()
    assert 'state_dir = "/var/lib/edgefleet-agent"' in cfg_text and 'root = "/etc/edgefleet/root.json"' in cfg_text

    # the unit, checked in the installed root
    unit = "/etc/systemd/system/edgefleet-agent.service"
    verify = _run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit], timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    sec = _run(["systemd-analyze", "security", "--offline=yes", f"--root={root}", unit], timeout=300)
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout)
    assert level is not None and float(level[1]) <= 3.0, sec.stdout[-2000:] + sec.stderr

    # the agent inside the device root
    helped = bookworm.run("/opt/edgefleet/venv/bin/edgefleet-agent", "--help")
    assert helped.returncode == 0 and "enroll" in helped.stdout, helped.stderr
    litert = bookworm.run("/opt/edgefleet/venv/bin/python", "-c", "import ai_edge_litert, numpy, PIL, paho")
    assert litert.returncode == 0, litert.stderr  # the [agent] extra from PyPI, not just the wheel

    # rerun-safe: the same first-boot command with a spent token keeps the enrollment
    files2, _ = _first_boot_command(hub_for_devices.url, "spent-token")
    for path, content in files2.items():
        (root / path.lstrip("/")).write_text(content)
    rerun = bookworm.run(*cmd, timeout=900)
    assert rerun.returncode == 0 and "already enrolled as pi-chroot" in rerun.stdout, rerun.stdout + rerun.stderr
    _check_installed(root, "pi-chroot")

    # the doctor, as the service user: config readable, state writable, broker reachable, no TPU
    as_service = ["chroot", "--userspec=edgefleet:edgefleet", "--groups=plugdev", str(root)]
    doctor = _run(
        [*as_service, "/opt/edgefleet/venv/bin/edgefleet-agent", "doctor", "-c", "/etc/edgefleet/agent.toml", "--json"],
        env=bookworm.env(HOME="/var/lib/edgefleet-agent"),
        timeout=300,
    )
    found = {f["name"]: f for f in json.loads(doctor.stdout or "[]")}
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for name in ("broker", "litert", "config_permissions", "state_dir", "disk"):
        assert found[name]["status"] == "ok", found[name]
    assert found["edgetpu"]["status"] == "warn"  # no Coral on this machine: said, not failed

    # serving: the agent as the service user (what the unit's User=/Group= do), with the files as
    # installed, must read its config, write its state and come online at the hub
    agent = subprocess.Popen(
        [*as_service, "/opt/edgefleet/venv/bin/edgefleet-agent", "run", "--config", "/etc/edgefleet/agent.toml"],
        env=bookworm.env(HOME="/var/lib/edgefleet-agent"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        dev: dict[str, object] = {}
        while time.monotonic() < deadline and agent.poll() is None:
            dev = hub_for_devices.device("pi-chroot")
            if dev.get("online"):
                break
            time.sleep(0.5)
        assert dev.get("online"), f"agent exit {agent.poll()}; device {str(dev)[:300]}"
        assert (root / "var/lib/edgefleet-agent/http.port").is_file()
        assert owner(root / "var/lib/edgefleet-agent/http.port", root)[0] == "edgefleet"
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
        out = agent.communicate(timeout=30)[0].decode(errors="replace")
    assert agent.returncode == 0, out[-3000:]


@pytest.mark.integration
@pytest.mark.slow
def test_pi_imager_first_boot_in_a_bookworm_chroot_installs_and_enrolls(
    bookworm: Chroot, dist: Path, hub_for_devices: HubForDevices
):
    """Raspberry Pi OS Bookworm (no cloud-init): prepare-card.sh on the boot partition, the setup
    at first boot (systemd.run=), then the one-shot unit's command once the network is up."""
    root = bookworm.root
    boot = root / "boot/firmware"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "cmdline.txt").write_text("console=tty1 root=PARTUUID=4e639091-02 rootwait\n")
    card = _run(
        ["sh", str(FIRMWARE / "rpi-imager/prepare-card.sh"), str(boot), "--hub", hub_for_devices.url]
        + ["--token", hub_for_devices.token("pi-imager")]
    )
    assert card.returncode == 0, card.stderr
    setup = bookworm.run("sh", "/boot/firmware/edgefleet-firstrun.sh")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "systemd.run" not in (boot / "cmdline.txt").read_text() and not (boot / "edgefleet.env").exists()
    unit = "/etc/systemd/system/edgefleet-firstboot.service"
    verify = _run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit], timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    first = bookworm.run("/usr/local/sbin/edgefleet-firstboot", "--install", timeout=1500)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    _check_installed(root, "pi-imager")
    assert not (root / "etc/edgefleet/firstboot.env").exists()  # ConditionPathExists: never again
