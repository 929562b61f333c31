"""``edgefleet-agent doctor``: what is wrong with this device, and the fix for each problem.

Two halves, as everywhere in the agent:

* :func:`gather` (I/O) reads what the device can tell: Edge TPUs on USB (``/sys/bus/usb``, vendor
  ``1a6e`` before its firmware is loaded, ``18d1:9302`` after) and PCIe/M.2 (``/sys/bus/pci``,
  vendor ``0x1ac1``; ``/dev/apex_*``), libedgetpu (the loader's search and the Debian package),
  the LiteRT runtime, the delegate loaded in a child process (:func:`agent.runtime.probe_edgetpu`:
  a crashing libedgetpu never takes the doctor down), access to the TPU's device nodes, the
  config's and state directory's permissions, temperatures (``/sys/class/apex/*/temp`` for the
  PCIe/M.2 TPU, the SoC's thermal zone), Raspberry Pi throttling (``vcgencmd get_throttled``
  when present), free disk, clock synchronisation (``timedatectl``, else timesyncd's flag file)
  and the broker (a TCP connection, TLS handshake for ``mqtts://``).
* :func:`judge` (pure) turns those facts into findings: ``ok``, ``warn`` or ``fail``, each with
  one line of detail and, when not ok, the fix.

Exit code: 1 when any finding is ``fail``, else 0 (warnings are for the operator to read: a
device without a TPU, or a clock whose state cannot be read, still serves).
"""

from __future__ import annotations

import ctypes.util
import grp
import os
import pwd
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import AgentConfig

USB_TPU = {
    ("1a6e", "089a"): "Coral USB Accelerator (firmware not loaded yet)",
    ("18d1", "9302"): "Coral USB Accelerator",
}
PCI_VENDOR = "0x1ac1"
TPU_HOT_C = 85.0  # the apex driver's first trip point by default: the TPU starts throttling
TPU_CRITICAL_C = 100.0
SOC_HOT_C = 80.0  # Raspberry Pi firmware starts capping the clock at 80 C (85 C hard limit)
THROTTLE_NOW = {0x1: "under-voltage", 0x2: "ARM frequency capped", 0x4: "throttled", 0x8: "soft temperature limit"}
POWER_FIX = "use the board's official power supply (Pi 4: 5.1 V 3 A, Pi 5: 5.1 V 5 A) and a short, thick cable"


@dataclass(frozen=True)
class Finding:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def line(self) -> str:
        head = f"{self.status.upper() if self.status != 'ok' else 'ok':4} {self.name}: {self.detail}"
        return head + (f"\n     fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Node:
    path: str
    accessible: bool  # read + write for this process


@dataclass(frozen=True)
class Facts:
    user: str
    groups: tuple[str, ...]
    edgetpu_mode: str
    usb_tpus: tuple[tuple[str, Node | None], ...] = ()  # (what, its /dev/bus/usb node)
    pci_tpus: tuple[str, ...] = ()
    apex_nodes: tuple[Node, ...] = ()
    apex_temps_c: tuple[tuple[str, float], ...] = ()
    libedgetpu: str | None = None  # where the loader finds it
    libedgetpu_package: str | None = None  # "libedgetpu1-std 16.0" (Debian package), if any
    litert: str = "none"
    delegate: tuple[bool, str] | None = None  # (loaded, detail); None: not probed
    config_path: str = ""
    config_mode: int = 0o640
    state_dir: str = ""
    state_writable: bool = True
    soc_temp_c: float | None = None
    throttled: int | None = None  # vcgencmd get_throttled bits; None: no vcgencmd
    free_bytes: int = 0
    reserve_bytes: int = 0
    clock_synced: bool | None = None  # None: cannot tell
    clock_detail: str = ""
    broker: tuple[bool, str] = (True, "")
    cloud_fallback: bool = False


def judge(f: Facts) -> list[Finding]:
    """The findings for ``f`` (pure): one per check, in the order an operator fixes things."""
    out: list[Finding] = []
    tpus = [what for what, _ in f.usb_tpus] + list(f.pci_tpus)
    if f.edgetpu_mode == "off":
        out.append(Finding("edgetpu", "ok", 'edgetpu = "off" in the config: models run on the CPU'))
    elif tpus:
        out.append(Finding("edgetpu", "ok", ", ".join(tpus)))
    else:
        out.append(
            Finding(
                "edgetpu",
                "warn",
                "no Edge TPU found (USB 1a6e:089a / 18d1:9302, PCIe vendor 0x1ac1): models run on the CPU",
                "plug the USB Accelerator in (a USB 3 port); an M.2/PCIe module needs its driver: "
                "sudo sh coral-setup.sh --variant std",
            )
        )
    want_tpu = bool(tpus) and f.edgetpu_mode != "off"
    pkg = f" (package {f.libedgetpu_package})" if f.libedgetpu_package else ""
    if f.libedgetpu:
        out.append(Finding("libedgetpu", "ok", f"{f.libedgetpu}{pkg}"))
    elif want_tpu:
        out.append(
            Finding(
                "libedgetpu",
                "fail",
                "an Edge TPU is attached but libedgetpu.so.1 is not installed",
                "sudo sh coral-setup.sh --variant std (or: install.sh --coral std)",
            )
        )
    else:
        out.append(Finding("libedgetpu", "ok", "not installed (not needed without an Edge TPU)"))
    if f.litert != "none":
        out.append(Finding("litert", "ok", f.litert))
    else:
        status = "warn" if f.cloud_fallback else "fail"
        out.append(
            Finding(
                "litert",
                status,
                "no LiteRT runtime: models cannot run here"
                + (" (the cloud fallback answers instead)" if f.cloud_fallback else ""),
                "/opt/edgefleet/venv/bin/pip install ai-edge-litert (64-bit OS); 32-bit Raspberry Pi OS has "
                "no LiteRT wheel: use the 64-bit OS, tflite-runtime from piwheels, or cloud_url",
            )
        )
    if f.delegate is not None:
        loaded, detail = f.delegate
        if loaded:
            out.append(Finding("delegate", "ok", detail))
        elif want_tpu and f.libedgetpu:
            crashed = "crashed" in detail or "signal" in detail
            fix = (
                "this libedgetpu does not match the LiteRT version (ABI): install a build for it, "
                "sudo sh coral-setup.sh --deb FILE (firmware_images/README.md, Coral)"
                if crashed
                else "check the TPU's permissions below; replug the USB Accelerator; then rerun the doctor"
            )
            out.append(Finding("delegate", "fail", f"the Edge TPU delegate did not load: {detail}", fix))
        else:
            out.append(Finding("delegate", "ok", f"not loaded ({detail}): the CPU serves"))
    nodes = [n for _, n in f.usb_tpus if n is not None] + list(f.apex_nodes)
    denied = [n.path for n in nodes if not n.accessible]
    if denied and f.edgetpu_mode != "off":
        out.append(
            Finding(
                "tpu_permissions",
                "fail",
                f"{f.user} (groups {', '.join(f.groups) or 'none'}) cannot open {', '.join(denied)}",
                f"sudo usermod -aG plugdev {f.user}, then restart the service (and replug a USB Accelerator); "
                "the udev rule comes with libedgetpu1-std/-max (PCIe/M.2: coral-setup.sh writes it)",
            )
        )
    elif nodes:
        out.append(Finding("tpu_permissions", "ok", f"{f.user} can open {', '.join(n.path for n in nodes)}"))
    if f.config_mode & 0o007:
        out.append(
            Finding(
                "config_permissions",
                "warn",
                f"{f.config_path} is readable by every user (mode {oct(f.config_mode & 0o777)}): it holds the "
                "device's MQTT password",
                f"sudo chown root:edgefleet {f.config_path} && sudo chmod 0640 {f.config_path}",
            )
        )
    else:
        out.append(Finding("config_permissions", "ok", f"{f.config_path} mode {oct(f.config_mode & 0o777)}"))
    if f.state_writable:
        out.append(Finding("state_dir", "ok", f"{f.state_dir} is writable by {f.user}"))
    else:
        out.append(
            Finding(
                "state_dir",
                "fail",
                f"{f.state_dir} is not writable by {f.user}: nothing can be installed",
                f"sudo chown -R edgefleet:edgefleet {f.state_dir} (systemd's StateDirectory= does this at start)",
            )
        )
    for node, temp in f.apex_temps_c:
        if temp >= TPU_CRITICAL_C:
            out.append(
                Finding(
                    "tpu_temperature",
                    "fail",
                    f"{node} at {temp:.1f} C",
                    "the module is near its shutdown point: add a heatsink/airflow, or use libedgetpu1-std",
                )
            )
        elif temp >= TPU_HOT_C:
            out.append(
                Finding(
                    "tpu_temperature",
                    "warn",
                    f"{node} at {temp:.1f} C: throttling",
                    "improve cooling, or switch libedgetpu1-max to -std",
                )
            )
        else:
            out.append(Finding("tpu_temperature", "ok", f"{node} at {temp:.1f} C"))
    if f.soc_temp_c is not None:
        hot = f.soc_temp_c >= SOC_HOT_C
        out.append(
            Finding(
                "soc_temperature",
                "warn" if hot else "ok",
                f"{f.soc_temp_c:.1f} C" + (": the firmware caps the clock from 80 C" if hot else ""),
                "add a heatsink or a fan; keep the case ventilated" if hot else "",
            )
        )
    if f.throttled is not None:
        out.append(_throttling(f.throttled))
    if f.free_bytes < f.reserve_bytes:
        out.append(
            Finding(
                "disk",
                "fail",
                f"{f.free_bytes} bytes free under {f.state_dir}, below the reserve of {f.reserve_bytes}",
                "free space on that filesystem (journalctl --vacuum-size=50M, apt-get clean), or lower "
                "disk_reserve_bytes",
            )
        )
    else:
        out.append(Finding("disk", "ok", f"{f.free_bytes // (1 << 20)} MiB free under {f.state_dir}"))
    if f.clock_synced is True:
        out.append(Finding("clock", "ok", f"synchronised ({f.clock_detail})"))
    elif f.clock_synced is False:
        out.append(
            Finding(
                "clock",
                "fail",
                f"not synchronised ({f.clock_detail}): trust roots and desired documents are checked against it",
                "sudo timedatectl set-ntp true, and let the device reach an NTP server (UDP 123)",
            )
        )
    else:
        out.append(
            Finding(
                "clock",
                "warn",
                f"cannot tell whether the clock is synchronised ({f.clock_detail})",
                "check it with timedatectl; the agent refuses documents that look expired or from the future",
            )
        )
    ok, detail = f.broker
    if ok:
        out.append(Finding("broker", "ok", detail))
    else:
        out.append(
            Finding(
                "broker",
                "fail",
                detail,
                "check `broker` in the config, the network and the firewall (MQTT 1883, MQTTS 8883)",
            )
        )
    return out


def _throttling(bits: int) -> Finding:
    now = [what for bit, what in THROTTLE_NOW.items() if bits & bit]
    past = [what for bit, what in THROTTLE_NOW.items() if bits & (bit << 16)]
    if now:
        fix = POWER_FIX if bits & 0x1 else "cool the board (heatsink, fan); it slows inference"
        return Finding("throttling", "fail", f"now: {', '.join(now)} (get_throttled={bits:#x})", fix)
    if past:
        fix = POWER_FIX if bits & 0x10000 else "cool the board (heatsink, fan)"
        return Finding("throttling", "warn", f"since boot: {', '.join(past)} (get_throttled={bits:#x})", fix)
    return Finding("throttling", "ok", "none since boot (get_throttled=0x0)")


def parse_throttled(text: str) -> int | None:
    """``vcgencmd get_throttled`` output (``throttled=0x50005``) -> its bits, None if not that."""
    key, _, value = text.strip().partition("=")
    try:
        return int(value, 16) if key == "throttled" else None
    except ValueError:
        return None


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(x.status == "fail" for x in findings) else 0


def to_json(findings: list[Finding]) -> list[dict[str, str]]:
    return [asdict(x) for x in findings]


# ---- the I/O half -------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _node(path: Path) -> Node:
    return Node(str(path), os.access(path, os.R_OK | os.W_OK))


def usb_tpus(sys_root: Path = Path("/"), dev_root: Path = Path("/")) -> list[tuple[str, Node | None]]:
    found = []
    for dev in sorted((sys_root / "sys/bus/usb/devices").glob("*")):
        key = (_read(dev / "idVendor"), _read(dev / "idProduct"))
        if key not in USB_TPU:
            continue
        bus, num = _read(dev / "busnum"), _read(dev / "devnum")
        node = dev_root / f"dev/bus/usb/{int(bus):03d}/{int(num):03d}" if bus.isdigit() and num.isdigit() else None
        found.append((f"{USB_TPU[key]} {key[0]}:{key[1]} at usb {dev.name}", _node(node) if node else None))
    return found


def pci_tpus(sys_root: Path = Path("/")) -> list[str]:
    return [
        f"Coral PCIe/M.2 Edge TPU at pci {d.name}"
        for d in sorted((sys_root / "sys/bus/pci/devices").glob("*"))
        if _read(d / "vendor") == PCI_VENDOR
    ]


def apex_temps(sys_root: Path = Path("/")) -> list[tuple[str, float]]:
    out = []
    for d in sorted((sys_root / "sys/class/apex").glob("apex_*")):
        raw = _read(d / "temp")
        if raw.lstrip("-").isdigit():
            out.append((d.name, int(raw) / 1000))
    return out


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def clock_sync() -> tuple[bool | None, str]:
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out is not None and out.strip() in ("yes", "no"):
        return out.strip() == "yes", "timedatectl NTPSynchronized=" + out.strip()
    if Path("/run/systemd/timesync/synchronized").exists():
        return True, "systemd-timesyncd"
    return None, "no timedatectl answer and no /run/systemd/timesync/synchronized"


def reach_broker(cfg: AgentConfig, timeout: float = 5.0) -> tuple[bool, str]:
    b = cfg.broker
    try:
        with socket.create_connection((b.host, b.port), timeout=timeout) as sock:
            if b.tls:
                ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
                with ctx.wrap_socket(sock, server_hostname=b.host):
                    pass
    except ssl.SSLError as exc:
        return False, f"{b}: TLS handshake failed ({exc.reason or exc})"
    except OSError as exc:
        return False, f"{b}: cannot connect ({exc.strerror or exc})"
    return True, f"{b} reachable" + (" (TLS verified)" if b.tls else "")


def _soc_temp() -> float | None:
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp"))[:1]:
        raw = _read(zone)
        if raw.lstrip("-").isdigit():
            return int(raw) / 1000
    return None


def _free(path: Path) -> int:
    try:
        return shutil.disk_usage(_first_existing(path)).free
    except OSError:
        return 0


def gather(cfg: AgentConfig, config_path: Path, probe: Callable[[], tuple[bool, str]] | None = None) -> Facts:
    """Read the device. ``probe`` loads the delegate in a child process (default: the agent's own)."""
    from .runtime import litert_version, probe_edgetpu  # numpy and LiteRT: only when gathering

    usb, pci = usb_tpus(), pci_tpus()
    lib = ctypes.util.find_library("edgetpu")
    package = _run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "libedgetpu1-*"])
    delegate = None
    if cfg.edgetpu != "off" and (usb or pci or lib):
        if probe is None:
            p = probe_edgetpu()
            delegate = (p.present, p.detail + (f", runtime {p.runtime}" if p.runtime else ""))
        else:
            delegate = probe()
    throttled = _run(["vcgencmd", "get_throttled"])
    synced, clock_detail = clock_sync()
    try:
        mode = config_path.stat().st_mode
    except OSError:
        mode = 0
    state = cfg.state_dir
    writable = os.access(state, os.W_OK | os.X_OK) if state.exists() else os.access(_first_existing(state), os.W_OK)
    return Facts(
        user=pwd.getpwuid(os.geteuid()).pw_name,
        groups=tuple(sorted({grp.getgrgid(g).gr_name for g in os.getgroups() if _has_group(g)})),
        edgetpu_mode=cfg.edgetpu,
        usb_tpus=tuple(usb),
        pci_tpus=tuple(pci),
        apex_nodes=tuple(_node(p) for p in sorted(Path("/dev").glob("apex_*"))),
        apex_temps_c=tuple(apex_temps()),
        libedgetpu=lib,
        libedgetpu_package=" ".join(package.split()) if package and package.strip() else None,
        litert=litert_version(),
        delegate=delegate,
        config_path=str(config_path),
        config_mode=mode,
        state_dir=str(state),
        state_writable=writable,
        soc_temp_c=_soc_temp(),
        throttled=parse_throttled(throttled) if throttled is not None else None,
        free_bytes=cfg.free_disk_override if cfg.free_disk_override is not None else _free(state),
        reserve_bytes=cfg.disk_reserve_bytes,
        clock_synced=synced,
        clock_detail=clock_detail,
        broker=reach_broker(cfg),
        cloud_fallback=cfg.cloud_url is not None,
    )


def _first_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _has_group(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True
