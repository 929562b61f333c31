"""Raspberry Pi Imager's first-run equivalent (Raspberry Pi OS Bookworm has no cloud-init):
prepare-card.sh on the boot partition, edgefleet-firstrun.sh at first boot, the one-shot unit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import FIRMWARE

IMAGER = FIRMWARE / "rpi-imager"
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
# the shape of the firstrun.sh Imager writes when its settings (user, Wi-Fi, SSH) are used
IMAGER_FIRSTRUN = """#!/bin/bash

set +e

CURRENT_HOSTNAME=`cat /etc/hostname | tr -d " \\t\\n\\r"`
echo pi-kitchen >/etc/hostname
systemctl enable ssh
rm -f /boot/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/cmdline.txt
exit 0
"""


def _prepare(boot: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["sh", str(IMAGER / "prepare-card.sh"), str(boot), "--hub", "https://hub.example.com", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    b = tmp_path / "bootfs"
    b.mkdir()
    (b / "cmdline.txt").write_text(CMDLINE)
    return b


def test_card_written_by_imager_with_settings_gets_a_hook_in_its_firstrun(boot: Path):
    (boot / "firstrun.sh").write_text(IMAGER_FIRSTRUN)
    for _ in range(2):  # rerun-safe
        out = _prepare(boot, "--token", "tok-1", "--coral", "std")
        assert out.returncode == 0, out.stderr
    lines = (boot / "firstrun.sh").read_text().splitlines()
    hook = [i for i, ln in enumerate(lines) if "edgefleet-firstrun.sh" in ln]
    assert len(hook) == 1 and lines[hook[0] + 1] == "rm -f /boot/firstrun.sh"  # before Imager's clean-up
    assert (boot / "cmdline.txt").read_text() == CMDLINE  # Imager's own systemd.run stays the only one
    env = (boot / "edgefleet.env").read_text()
    assert "EDGEFLEET_HUB=https://hub.example.com\nEDGEFLEET_TOKEN=tok-1\n" in env and "--coral std" in env
    assert (boot / "edgefleet-firstrun.sh").is_file() and (boot / "edgefleet-firstboot.service").is_file()


def test_card_without_imager_settings_runs_the_setup_from_cmdline_once(boot: Path):
    for _ in range(2):
        assert _prepare(boot, "--token", "t").returncode == 0
    cmdline = (boot / "cmdline.txt").read_text()
    assert cmdline.count("systemd.run=/boot/firmware/edgefleet-firstrun.sh") == 1
    assert cmdline.startswith(CMDLINE.strip() + " systemd.run=") and cmdline.count("\n") == 1


@pytest.mark.parametrize(
    "setup, args, needle, code",
    [
        ("no-cmdline", ["--token", "t"], "has no cmdline.txt", 1),
        ("other-run", ["--token", "t"], "already has another systemd.run=", 1),
        ("odd-firstrun", ["--token", "t"], "not Imager's script as known", 1),
        ("", [], "usage:", 2),
    ],
)
def test_card_that_cannot_be_prepared_is_refused_naming_why(boot: Path, setup, args, needle, code):
    if setup == "no-cmdline":
        (boot / "cmdline.txt").unlink()
    if setup == "other-run":
        (boot / "cmdline.txt").write_text(CMDLINE.strip() + " systemd.run=/boot/other.sh\n")
    if setup == "odd-firstrun":
        (boot / "firstrun.sh").write_text("#!/bin/sh\necho hi\n")
    out = _prepare(boot, *args)
    assert out.returncode == code and needle in out.stderr, out.stderr


def test_first_boot_setup_moves_the_token_off_the_card_and_enables_the_one_shot_unit(boot: Path, tmp_path: Path):
    assert _prepare(boot, "--token", "tok-2").returncode == 0
    root = tmp_path / "root"
    root.mkdir()
    out = subprocess.run(
        ["sh", str(boot / "edgefleet-firstrun.sh"), "--root", str(root)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    env = root / "etc/edgefleet/firstboot.env"
    assert "EDGEFLEET_TOKEN=tok-2" in env.read_text() and oct(env.stat().st_mode & 0o777) == "0o600"
    assert not (boot / "edgefleet.env").exists()  # not left on the FAT partition
    assert (boot / "cmdline.txt").read_text() == CMDLINE  # its systemd.run= removed again
    worker = root / "usr/local/sbin/edgefleet-firstboot"
    assert worker.read_bytes() == (IMAGER / "edgefleet-firstrun.sh").read_bytes() and worker.stat().st_mode & 0o111
    wants = root / "etc/systemd/system/multi-user.target.wants/edgefleet-firstboot.service"
    assert wants.is_symlink() and (root / "etc/systemd/system/edgefleet-firstboot.service").is_file()
    units = Path("/usr/lib/systemd/system")
    if shutil.which("systemd-analyze") and (units / "sysinit.target").exists():
        shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
        verify = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                "--man=no",
                f"--root={root}",
                "/etc/systemd/system/edgefleet-firstboot.service",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_one_shot_install_without_its_token_file_names_it(tmp_path: Path):
    if Path("/etc/edgefleet/firstboot.env").exists():
        pytest.skip("this machine has a real /etc/edgefleet/firstboot.env")
    out = subprocess.run(
        ["sh", str(IMAGER / "edgefleet-firstrun.sh"), "--install"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "/etc/edgefleet/firstboot.env is missing" in out.stderr, out.stderr
