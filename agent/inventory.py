"""What this device is and can do: probed once at start (Edge TPU in a child process)."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from protocol import delta as pdelta, device, planref, view

from . import AGENT_VERSION, watchdog
from .config import AgentConfig
from .durable import free_bytes
from .install import Inventory
from .runtime import EdgeTpuProbe, litert_version, onnx_available
from .telemetry import meminfo


@dataclass(frozen=True)
class Probed:
    edgetpu: EdgeTpuProbe
    litert: str
    onnx: bool


def probe(cfg: AgentConfig) -> Probed:
    off = EdgeTpuProbe(False, "disabled by config (edgetpu = off)")
    tpu = off if cfg.edgetpu == "off" else watchdog.settings().driver.probe()  # probe_edgetpu unless a test's
    return Probed(tpu, litert_version(), onnx_available())


def free_disk(cfg: AgentConfig) -> int:
    if cfg.free_disk_override is not None:
        return cfg.free_disk_override
    return free_bytes(cfg.state_dir)


def current(cfg: AgentConfig, p: Probed) -> Inventory:
    return Inventory(
        board=cfg.board,
        edgetpu=p.edgetpu.present,
        edgetpu_runtime=p.edgetpu.runtime,
        onnx=p.onnx,
        free_disk=free_disk(cfg),
        agent_version=AGENT_VERSION,
    )


def describe(
    cfg: AgentConfig, p: Probed, http_port: int | None = None, mqtt: str | None = None, served_by: str | None = None
) -> device.Inventory:
    """Inventory as sent in the retained status message."""
    mem = meminfo()  # kB
    return device.Inventory(
        board=cfg.board,
        arch=platform.machine(),
        python=platform.python_version(),
        edgetpu=p.edgetpu.present,
        edgetpu_detail=p.edgetpu.detail,
        edgetpu_runtime=p.edgetpu.runtime,
        litert=p.litert,
        onnxruntime=p.onnx,
        agent_version=AGENT_VERSION,
        free_disk=free_disk(cfg),
        mem_available_mb=mem.get("MemAvailable", 0) // 1024,
        mem_total_mb=mem.get("MemTotal", 0) // 1024,
        cloud_fallback=cfg.cloud_url is not None,
        http_port=http_port,
        mqtt=mqtt,
        served_by=served_by,
        features=((view.FEATURE,) if cfg.device_view else ())
        + pdelta.ANNOUNCED
        + ((planref.FEATURE,) if cfg.plan_by_reference else ()),
    )
