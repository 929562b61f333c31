"""`make demo` / `python -m demo`: a real model fleet, end to end, on this machine.

Starts an MQTT broker (a private mosquitto when on PATH, else the embedded amqtt broker, or
``--broker URL``), creates the hub's keys and starts the hub on SQLite, trains and compiles the
digits CNN (cached after the first run), pushes the bundle (the hub signs it), starts N agent
processes, rolls the bundle out to all of them, sends held-out digits to each agent's local API,
starts the cloud fallback, and shows a live table. Ctrl-C, SIGTERM or SIGHUP stops every
process it started; processes a killed run (``kill -9``) left behind in the same ``--state``
are stopped before anything starts, so run it as often as you like in one checkout.

Exit codes: 0 success, or stopped by Ctrl-C / SIGTERM / SIGHUP once every process is stopped;
1 a step failed (the message names it and shows the log tail); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .client import get_json, png_bytes, post_image, top1
from .launcher import Fleet, LaunchError, tail

console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--state",
        type=Path,
        default=Path(".edgefleet/demo"),
        help="state directory (keys, database, logs, agent slots); default %(default)s",
    )
    ap.add_argument("--broker", metavar="mqtt://host:port", help="use this broker instead of starting one")
    ap.add_argument("--agents", type=int, default=3, help="number of agent processes (default 3)")
    ap.add_argument("--samples", type=int, default=60, help="held-out digits sent to each agent (default 60)")
    ap.add_argument("--once", action="store_true", help="exit 0 after the rollout instead of running until Ctrl-C")
    ap.add_argument("--fresh", action="store_true", help="delete the state directory first (keeps the model build)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for the rollout (default 180)")
    ap.add_argument(
        "--simulated",
        type=int,
        metavar="N",
        help="N simulated devices (sim/: the agent's install code, simulated inference) instead of agent "
        "processes; pushes a synthetic 4 MB bundle instead of building the digits model",
    )
    args = ap.parse_args(argv)
    if args.simulated is not None and not 1 <= args.simulated <= 10_000:
        ap.error(f"--simulated must be within 1..10000, got {args.simulated}")
    if args.agents < 1 or args.agents > 50:
        ap.error(f"--agents must be within 1..50, got {args.agents}")
    if args.broker and not args.broker.startswith("mqtt://"):
        ap.error(f"--broker must look like mqtt://host:port, got {args.broker!r}")
    return args


def device_row(dev: dict[str, Any]) -> dict[str, Any]:
    active = dev.get("active_bundle") or dev.get("active") or {}
    summary = dev.get("telemetry") or dev.get("summary") or {}
    return {
        "online": dev.get("online"),
        "state": dev.get("state") or dev.get("rollout_state") or "",
        "bundle": f"{active.get('name', '')}@{active.get('version', '')}" if active else "-",
        "digest": active.get("digest", ""),
        "inferences": summary.get("inferences", 0),
        "p50": summary.get("p50_ms"),
        "p95": summary.get("p95_ms"),
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render(devices: list[dict[str, Any]], accuracy: dict[str, tuple[int, int]], title: str) -> Table:
    table = Table(title=title, expand=False)
    for col in ("device", "online", "state", "bundle", "inferences", "p50 ms", "p95 ms", "accuracy seen"):
        table.add_column(col, justify="right" if col in ("inferences", "p50 ms", "p95 ms") else "left")
    for dev in sorted(devices, key=lambda d: d.get("device_id", "")):
        row = device_row(dev)
        ok, n = accuracy.get(dev.get("device_id", ""), (0, 0))
        table.add_row(
            dev.get("device_id", "?"),
            "yes" if row["online"] else "no",
            row["state"],
            row["bundle"],
            str(row["inferences"]),
            _ms(row["p50"]),
            _ms(row["p95"]),
            f"{ok}/{n} = {ok / n:.1%}" if n else "-",
        )
    return table


def devices(fleet: Fleet, names: list[str]) -> list[dict[str, Any]]:
    """The hub's rows for this run's agents (the database keeps those of earlier runs)."""
    items = fleet.api("GET", "/api/v1/devices?limit=200").get("items", [])
    return [d for d in items if d.get("device_id") in names]


def serving(port: int) -> str | None:
    """The digest an agent's local API says it serves (None: none yet, or not answering)."""
    active = get_json(f"http://127.0.0.1:{port}/v1/status", timeout=2).get("active") or {}
    return active.get("digest") if isinstance(active, dict) else None


def build_model(fleet: Fleet, cache: Path) -> tuple[Path, Path]:
    out, holdout = cache / "digits", cache / "digits-holdout.npz"
    if (out / "manifest.json").exists() and holdout.exists():
        console.print(f"[green]✓[/] model build cached at {out}")
        return out, holdout
    shutil.rmtree(out, ignore_errors=True)
    with console.status("training the digits CNN and converting it (TensorFlow: float → full-int8 → ONNX)…"):
        fleet.run("compile", fleet.module("compiler", "digits", "--out", str(out), "--holdout", str(holdout)))
    console.print(f"[green]✓[/] compiled bundle in {out}")
    return out, holdout


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM and SIGHUP end the run the way Ctrl-C does (Python's default for them is to die
    # on the spot: no `finally`, every child left running)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state: Path = args.state.resolve()
    cache = state.parent / "build-cache"
    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    fleet: Fleet | None = None
    try:
        fleet = Fleet(state, die_with_launcher=True)  # stops what a killed run left behind
        if fleet.leftovers:
            console.print(f"[yellow]stopped what an earlier run left running:[/] {', '.join(fleet.leftovers)}")
        if args.fresh:
            shutil.rmtree(state, ignore_errors=True)
            fleet = Fleet(state, die_with_launcher=True)
        return run(fleet, args, cache)
    except LaunchError as exc:
        console.print(f"[red]✗ {exc}[/]")
        for proc in fleet.procs if fleet else []:
            if not proc.alive:
                console.print(f"[yellow]{proc.name} log ({proc.log}):[/]\n{tail(proc.log)}")
        return 1
    except KeyboardInterrupt as exc:
        console.print(f"stopping ({str(exc) or 'SIGINT'})…")
        return 0
    finally:
        # a second Ctrl-C must not cut the cleanup short (stop_all is bounded: SIGKILL after 20 s)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if fleet is not None:
            fleet.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(fleet: Fleet, args: argparse.Namespace, cache: Path) -> int:
    if args.simulated is not None:
        from .simulated import run_simulated

        return run_simulated(fleet, args, console)
    url = fleet.start_broker(args.broker)
    console.print(f"[green]✓[/] MQTT broker {url} ({fleet.broker_kind})")
    fleet.init_keys()
    console.print(f"[green]✓[/] trust root {fleet.keys / 'root.json'} (root keys belong offline)")
    fleet.start_hub()
    console.print(f"[green]✓[/] hub {fleet.hub_url} on SQLite ({fleet.state / 'hub.db'})")
    bundle_dir, holdout_path = build_model(fleet, cache)
    pushed = fleet.push(bundle_dir)
    digest = pushed["digest"]
    console.print(f"[green]✓[/] pushed {pushed['name']}@{pushed['version']} digest {digest[:12]}… (signed by the hub)")

    names = [f"dev-{i + 1}" for i in range(args.agents)]
    boards = ["rpi4", "rpi5", "rpi4-coral-usb"]
    for i, name in enumerate(names):
        fleet.start_agent(name, board=boards[i % len(boards)])
    ports = {name: fleet.agent_port(name) for name in names}
    console.print(f"[green]✓[/] {len(names)} agents running: " + ", ".join(f"{n} :{p}" for n, p in ports.items()))

    # this run's agents by name: the database also holds the devices of earlier runs (another
    # --agents), which would hold an `all` rollout open until they time out
    rollout = fleet.api("POST", "/api/v1/rollouts", {"bundle": digest, "target": {"devices": names}})
    rid = rollout.get("id") or rollout.get("rollout_id")
    console.print(f"[green]✓[/] rollout {rid} created for {', '.join(names)}")

    holdout = np.load(holdout_path)
    xs, ys = holdout["x"], holdout["y"]
    accuracy: dict[str, tuple[int, int]] = {}
    sent = {n: 0 for n in names}
    deadline = time.monotonic() + args.timeout
    with Live(render([], accuracy, "rolling out…"), console=console, refresh_per_second=4) as live:
        while True:
            devs = devices(fleet, names)
            # done when the agent itself serves the bundle, not when the hub's row (which an
            # earlier run may have left saying so) does
            on_hub = {d.get("device_id") for d in devs if device_row(d)["digest"] == digest}
            done = [n for n in names if n in on_hub and serving(ports[n]) == digest]
            live.update(
                render(
                    devs,
                    accuracy,
                    f"rollout {rid}: {len(done)}/{len(names)} devices on {pushed['name']}@{pushed['version']}",
                )
            )
            if len(done) >= len(names):
                break
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"rollout did not reach all devices within {args.timeout:.0f}s "
                    f"({len(done)}/{len(names)}); see {fleet.state / 'logs'}"
                )
            time.sleep(0.5)
        # held-out digits through each agent's local API
        rng = np.random.default_rng(0)
        for name in names:
            ok = 0
            for i in rng.choice(len(xs), size=min(args.samples, len(xs)), replace=False):
                answer = post_image(f"http://127.0.0.1:{ports[name]}/v1/predict", png_bytes(xs[i]))
                if "error" in answer:
                    raise LaunchError(f"agent {name} could not serve: {answer['error']}")
                ok += int(top1(answer) == int(ys[i]))
                sent[name] += 1
                accuracy[name] = (ok, sent[name])
            live.update(render(devices(fleet, names), accuracy, "serving held-out digits…"))
        # wait for the telemetry of those inferences to reach the hub
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            devs = devices(fleet, names)
            live.update(render(devs, accuracy, "waiting for telemetry…"))
            if all(device_row(d)["inferences"] >= sent.get(d.get("device_id", ""), 0) for d in devs):
                break
            time.sleep(1)
        live.update(render(devices(fleet, names), accuracy, f"fleet on {pushed['name']}@{pushed['version']}"))

    cloud = fleet.start_cloud()
    answer = post_image(f"{cloud}/predict", png_bytes(xs[0]))
    if "error" in answer:
        raise LaunchError(f"cloud fallback could not serve: {answer['error']}")
    console.print(f"[green]✓[/] cloud fallback {cloud}/predict answered {top1(answer)} for a digit {int(ys[0])}")
    console.print(f"\nDashboard: {fleet.hub_url}/ui   (log in with the token {fleet.token})")
    console.print(f"Hub API:   {fleet.hub_url}/docs")
    console.print(f"Cloud:     {cloud}/docs   Logs: {fleet.state / 'logs'}")
    if args.once:
        return 0
    console.print("Running; Ctrl-C stops everything.")
    rng = np.random.default_rng(1)
    with Live(render(devices(fleet, names), accuracy, "live"), console=console, refresh_per_second=2) as live:
        while True:
            for name in names:
                i = int(rng.integers(len(xs)))
                answer = post_image(f"http://127.0.0.1:{ports[name]}/v1/predict", png_bytes(xs[i]))
                ok, n = accuracy.get(name, (0, 0))
                accuracy[name] = (ok + int(top1(answer) == int(ys[i])), n + 1)
            live.update(render(devices(fleet, names), accuracy, f"live — hub {fleet.hub_url}"))
            time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
