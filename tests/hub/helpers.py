"""Protocol messages a device would send, for hub tests."""

from __future__ import annotations

import time
from typing import Any

from protocol.device import Inventory, Shadow
from protocol.messages import BundleInfo, Report, Status, Telemetry
from protocol.sketch import LatencySketch


def status(
    device: str,
    online: bool = True,
    board: str = "rpi4",
    active: tuple[str, str, str] | None = None,
    ts: int = 1000,
    **inv: Any,
) -> bytes:
    inventory = Inventory.from_dict({"board": board, "edgetpu": False, **inv})
    act = BundleInfo(*active) if active else None
    return Status(
        device=device,
        online=online,
        ts=ts,
        agent_version="0.1.0",
        inventory=inventory,
        active=act,
        state="idle" if online else "offline",
    ).to_bytes()


def telemetry(
    device: str,
    seq: int,
    bundle: str | None = None,
    latencies_s: tuple[float, ...] = (0.01,) * 10,
    errors: int = 0,
    drift: dict[str, dict[str, list[int]]] | None = None,
    cloud: int = 0,
    start: int | None = None,
    shadow: dict[str, Any] | None = None,
    channel: str = "default",
) -> bytes:
    """A 10 s window starting now (or at ``start``), as an agent would send it; ``shadow`` as the
    agent's recorder writes it (``samples``, ``errors``, ``agreement``, ``latency_delta_ms``);
    ``channel``: the model channel it describes."""
    sk = LatencySketch()
    for x in latencies_s:
        sk.add(x)
    n = len(latencies_s)
    begin = int(time.time()) if start is None else start
    # every drift sample and every error was an inference (the hub refuses windows that disagree)
    binned = max((sum(b) for feats in (drift or {}).values() for b in feats.values()), default=0)
    return Telemetry(
        device=device,
        seq=seq,
        window_start=begin,
        window_end=begin + 10,
        bundle=bundle,
        counts={"inferences": max(n + errors, binned), "errors": errors, "tpu": 0, "cpu": n - cloud, "cloud": cloud},
        latency=sk.to_dict(),
        drift=drift or {},
        shadow=Shadow.from_dict(shadow) if shadow is not None else None,
        channel=channel,
    ).to_bytes()


def report(
    device: str,
    seq: int,
    desired_seq: int,
    stage: str = "commit",
    status: str = "ok",
    reason: str = "ok",
    bundle: str | None = None,
) -> bytes:
    return Report(
        device=device,
        seq=seq,
        ts=1000 + seq,
        stage=stage,
        status=status,
        reason=reason,
        desired_seq=desired_seq,
        bundle=bundle,
    ).to_bytes()
