"""`make demo ARGS="--simulated 1000"`: the hub with N simulated devices instead of agent processes.

Starts the broker and the hub as the demo always does, pushes a synthetic 4 MB bundle (no
TensorFlow build: the simulator never runs the model), starts ``edgefleet-sim`` with N devices
(``sim/``: one MQTT connection each, the agent's verification and install code, simulated
inference), rolls the bundle out to them and shows the rollout's progress until every device
runs it. Then (without ``--once``) the fleet keeps sending telemetry until Ctrl-C.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from sim.bundle import synthetic_bundle_dir
from sim.config import SimConfig

from .launcher import Fleet, LaunchError

BUNDLE_BYTES = 4_000_000


def _table(title: str, online: int, n: int, rollout: dict[str, Any]) -> Table:
    t = Table(title=title)
    t.add_column("devices online", justify="right")
    t.add_column("rollout phase")
    t.add_column("device states")
    counts = rollout.get("counts") or {}
    t.add_row(f"{online}/{n}", str(rollout.get("phase", "-")), ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return t


def run_simulated(fleet: Fleet, args: argparse.Namespace, console: Console) -> int:
    n: int = args.simulated
    url = fleet.start_broker(args.broker)
    console.print(f"[green]✓[/] MQTT broker {url} ({fleet.broker_kind})")
    root = fleet.init_keys()
    fleet.start_hub()
    console.print(f"[green]✓[/] hub {fleet.hub_url} on SQLite ({fleet.state / 'hub.db'})")
    pushed = fleet.push(synthetic_bundle_dir(fleet.state / "sim-bundle", BUNDLE_BYTES, version="1.0.0-sim"))
    digest = pushed["digest"]
    console.print(f"[green]✓[/] pushed a synthetic {BUNDLE_BYTES / 1e6:.0f} MB bundle, digest {digest[:12]}…")
    names = SimConfig("127.0.0.1", 1, root, devices=n).device_ids()
    fleet.spawn(
        "sim",
        fleet.module("sim", "--broker", url, "--root", str(root), "--devices", str(n), "--telemetry-interval", "10"),
    )

    def online() -> int:
        return int(fleet.api("GET", "/api/v1/devices?online=true&limit=1").get("total", 0))

    deadline = time.monotonic() + args.timeout
    with Live(_table("devices connecting…", 0, n, {}), console=console, refresh_per_second=2) as live:
        while (up := online()) < n:
            live.update(_table("devices connecting…", up, n, {}))
            if time.monotonic() > deadline:
                raise LaunchError(f"only {up} of {n} simulated devices online after {args.timeout:.0f}s")
            time.sleep(1)
        rid = fleet.api("POST", "/api/v1/rollouts", {"bundle": digest, "target": {"devices": names}})["id"]
        t0 = time.monotonic()
        while True:
            st = fleet.api("GET", f"/api/v1/rollouts/{rid}?limit=1")
            live.update(_table(f"rollout {rid} to {n} simulated devices", online(), n, st))
            if st.get("phase") == "completed":
                break
            if st.get("phase") in ("rolled_back", "cancelled", "failed") or time.monotonic() > deadline:
                raise LaunchError(f"rollout {rid} ended {st.get('phase')}: {st.get('reason') or 'timed out'}")
            time.sleep(1)
    console.print(
        f"[green]✓[/] rollout {rid}: {n} simulated devices on {digest[:12]}… in {time.monotonic() - t0:.0f} s"
    )
    console.print(f"\nDashboard: {fleet.hub_url}/ui   (log in with the token {fleet.token})")
    if args.once:
        return 0
    console.print("Running; Ctrl-C stops everything.")
    while True:
        time.sleep(5)
        if not all(p.alive for p in fleet.procs):
            raise LaunchError("a process stopped: " + ", ".join(p.name for p in fleet.procs if not p.alive))
