"""edgefleet-agent doctor: each problem is found, fails the command and comes with its fix."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.doctor import Facts, Node, exit_code, judge, parse_throttled, pci_tpus, usb_tpus
from tests.conftest import REPO

HEALTHY = Facts(
    user="edgefleet",
    groups=("edgefleet", "plugdev"),
    edgetpu_mode="auto",
    usb_tpus=(("Coral USB Accelerator 18d1:9302 at usb 2-1", Node("/dev/bus/usb/002/003", True)),),
    libedgetpu="libedgetpu.so.1",
    libedgetpu_package="libedgetpu1-std 16.0",
    litert="ai-edge-litert 2.3.0",
    delegate=(True, "libedgetpu delegate loaded"),
    config_path="/etc/edgefleet/agent.toml",
    config_mode=0o100640,
    state_dir="/var/lib/edgefleet-agent",
    soc_temp_c=52.0,
    throttled=0,
    free_bytes=10 << 30,
    reserve_bytes=16 << 20,
    clock_synced=True,
    clock_detail="timedatectl NTPSynchronized=yes",
    broker=(True, "mqtts://mqtt.example.com:8883 reachable (TLS verified)"),
)


def _by_name(facts: Facts) -> dict[str, tuple[str, str, str]]:
    return {f.name: (f.status, f.detail, f.fix) for f in judge(facts)}


def test_a_healthy_coral_device_passes_every_check():
    found = judge(HEALTHY)
    assert [f.status for f in found] == ["ok"] * len(found) and exit_code(found) == 0
    names = {f.name for f in found}
    assert {"edgetpu", "libedgetpu", "litert", "delegate", "tpu_permissions", "disk", "clock", "broker"} <= names


@pytest.mark.parametrize(
    "change, name, status, needle",
    [
        ({"libedgetpu": None, "libedgetpu_package": None}, "libedgetpu", "fail", "coral-setup.sh --variant std"),
        (
            {"usb_tpus": (("Coral USB", Node("/dev/bus/usb/002/003", False)),), "groups": ("edgefleet",)},
            "tpu_permissions",
            "fail",
            "usermod -aG plugdev edgefleet",
        ),
        ({"delegate": (False, "delegate probe crashed with signal 11")}, "delegate", "fail", "--deb FILE"),
        ({"delegate": (False, "ValueError: Failed to load delegate")}, "delegate", "fail", "replug"),
        ({"litert": "none"}, "litert", "fail", "ai-edge-litert"),
        ({"litert": "none", "cloud_fallback": True}, "litert", "warn", "cloud_url"),
        ({"apex_temps_c": (("apex_0", 90.5),)}, "tpu_temperature", "warn", "-std"),
        ({"apex_temps_c": (("apex_0", 101.0),)}, "tpu_temperature", "fail", "heatsink"),
        ({"soc_temp_c": 83.0}, "soc_temperature", "warn", "fan"),
        ({"throttled": 0x50005}, "throttling", "fail", "power supply"),
        ({"throttled": 0x50000}, "throttling", "warn", "power supply"),
        ({"throttled": 0x80000}, "throttling", "warn", "cool the board"),
        ({"free_bytes": 1 << 20}, "disk", "fail", "disk_reserve_bytes"),
        ({"clock_synced": False, "clock_detail": "NTPSynchronized=no"}, "clock", "fail", "set-ntp true"),
        ({"clock_synced": None}, "clock", "warn", "timedatectl"),
        ({"broker": (False, "mqtt://10.0.0.2:1883: cannot connect (Connection refused)")}, "broker", "fail", "1883"),
        ({"config_mode": 0o100644}, "config_permissions", "warn", "chmod 0640"),
        ({"state_writable": False}, "state_dir", "fail", "chown -R edgefleet:edgefleet"),
        ({"usb_tpus": (), "delegate": None, "libedgetpu": None}, "edgetpu", "warn", "coral-setup.sh"),
    ],
)
def test_each_problem_is_found_with_its_fix(change, name, status, needle):
    facts = dataclasses.replace(HEALTHY, **change)
    got = _by_name(facts)
    assert got[name][0] == status, got[name]
    assert needle in got[name][2], got[name]
    assert exit_code(judge(facts)) == (1 if status == "fail" else 0)


def test_every_finding_that_is_not_ok_says_how_to_fix_it():
    worst = dataclasses.replace(
        HEALTHY,
        usb_tpus=(("Coral USB", Node("/dev/bus/usb/002/003", False)),),
        libedgetpu=None,
        litert="none",
        apex_temps_c=(("apex_0", 120.0),),
        soc_temp_c=90.0,
        throttled=0x5,
        free_bytes=0,
        clock_synced=False,
        broker=(False, "down"),
        config_mode=0o100666,
        state_writable=False,
    )
    bad = [f for f in judge(worst) if f.status != "ok"]
    assert len(bad) >= 10 and all(f.fix for f in bad), [f for f in bad if not f.fix]


def test_a_cpu_only_device_and_a_tpu_switched_off_are_not_failures():
    cpu = dataclasses.replace(HEALTHY, usb_tpus=(), libedgetpu=None, libedgetpu_package=None, delegate=None)
    assert exit_code(judge(cpu)) == 0 and _by_name(cpu)["libedgetpu"][0] == "ok"
    off = dataclasses.replace(HEALTHY, edgetpu_mode="off", libedgetpu=None, delegate=None)
    assert exit_code(judge(off)) == 0 and "off" in _by_name(off)["edgetpu"][1]


def test_throttled_bits_are_read_from_vcgencmd_output():
    assert parse_throttled("throttled=0x50005\n") == 0x50005
    assert parse_throttled("throttled=0x0") == 0
    assert parse_throttled('error=2 error_msg="Command not registered"') is None


def test_tpus_are_found_through_the_kernels_sysfs_files(tmp_path: Path):
    """The files the kernel exposes (a tree laid out as /sys is): a Coral after and before its
    firmware load, a keyboard, and an M.2 module on PCIe."""
    usb = tmp_path / "sys/bus/usb/devices"
    for name, vendor, product, bus, dev in [
        ("2-1", "18d1", "9302", "2", "3"),
        ("1-1.3", "1a6e", "089a", "1", "7"),
        ("1-1.4", "046d", "c31c", "1", "8"),
    ]:
        d = usb / name
        d.mkdir(parents=True)
        for key, value in (("idVendor", vendor), ("idProduct", product), ("busnum", bus), ("devnum", dev)):
            (d / key).write_text(value + "\n")
    node = tmp_path / "dev/bus/usb/002/003"
    node.parent.mkdir(parents=True)
    node.write_bytes(b"")
    pci = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    pci.mkdir(parents=True)
    (pci / "vendor").write_text("0x1ac1\n")
    (tmp_path / "sys/bus/pci/devices/0000:00:00.0").mkdir()
    (tmp_path / "sys/bus/pci/devices/0000:00:00.0/vendor").write_text("0x14e4\n")
    found = usb_tpus(tmp_path, tmp_path)
    assert [what.split(" at ")[1] for what, _ in found] == ["usb 1-1.3", "usb 2-1"]
    assert "firmware not loaded" in found[0][0]
    assert found[1][1] == Node(str(node), True)
    assert found[0][1] is not None and not found[0][1].accessible  # /dev/bus/usb/001/007 does not exist
    assert pci_tpus(tmp_path) == ["Coral PCIe/M.2 Edge TPU at pci 0000:01:00.0"]


def _config(tmp_path: Path, broker: str) -> Path:
    (tmp_path / "root.json").write_text("{}")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'device_id = "d1"\nbroker = "{broker}"\nstate_dir = "st"\nroot = "root.json"\nedgetpu = "off"\n')
    conf.chmod(0o640)
    return conf


def _doctor(conf: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agent", "doctor", "--config", str(conf), "--json"]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_doctor_reaches_a_real_broker_and_exits_0(tmp_path: Path, mosquitto):
    out = _doctor(_config(tmp_path, mosquitto.url))
    found = {f["name"]: f for f in json.loads(out.stdout)}
    assert found["broker"]["status"] == "ok", found["broker"]
    assert found["litert"]["status"] == "ok" and found["state_dir"]["status"] == "ok"
    assert out.returncode == (1 if any(f["status"] == "fail" for f in found.values()) else 0)


def test_doctor_exits_1_naming_an_unreachable_broker_and_its_fix(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _doctor(_config(tmp_path, f"mqtt://127.0.0.1:{port}"))
    found = {f["name"]: f for f in json.loads(out.stdout)}
    assert out.returncode == 1, out.stdout + out.stderr
    assert found["broker"]["status"] == "fail" and f"127.0.0.1:{port}: cannot connect" in found["broker"]["detail"]
    assert "firewall" in found["broker"]["fix"]
