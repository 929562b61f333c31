"""`edgefleet-sim` / `python -m sim`: run N simulated devices against a broker until stopped.

    edgefleet-sim --broker mqtt://127.0.0.1:1883 --root keys/root.json --devices 1000

Each device connects with its own client id (``ef-agent-<prefix>-NNNN``) and last will, reports
status, installs what the hub's signed desired documents say (the agent's verification and
planning code), and sends telemetry of simulated inference. Prints one line of fleet totals
every ``--every`` seconds. Exit codes: 0 stopped by Ctrl-C / SIGTERM, 2 bad arguments or a
setting the simulator refuses (the message names it), 1 the fleet could not start.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from .config import Faults, Inference, SimConfig, parse_broker
from .errors import SimError
from .fleet import SimFleet


def parse_args(argv: list[str] | None) -> SimConfig:
    ap = argparse.ArgumentParser(prog="edgefleet-sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", required=True, metavar="mqtt://host:port")
    ap.add_argument("--root", required=True, type=Path, help="the trust root every device pins (root.json)")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--prefix", default="sim", help="device ids are PREFIX-NNNN (default %(default)s)")
    ap.add_argument("--board", default="rpi4")
    ap.add_argument("--telemetry-interval", type=float, default=10.0, metavar="S")
    ap.add_argument("--rate", type=float, default=1.0, help="simulated inferences per second per device")
    ap.add_argument("--latency-ms", type=float, default=8.0)
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--offline-every", type=float, default=0.0, metavar="S", help="mean seconds between link losses")
    ap.add_argument("--offline-for", type=float, default=5.0, metavar="S")
    ap.add_argument("--slow-link", type=float, default=0.0, metavar="BYTES_PER_S")
    ap.add_argument("--churn-every", type=float, default=0.0, metavar="S")
    args = ap.parse_args(argv)
    host, port = parse_broker(args.broker)
    return SimConfig(
        host,
        port,
        args.root,
        devices=args.devices,
        prefix=args.prefix,
        board=args.board,
        telemetry_interval_s=args.telemetry_interval,
        inference=Inference(rate=args.rate, latency_ms=args.latency_ms, error_rate=args.error_rate),
        faults=Faults(
            offline_every_s=args.offline_every,
            offline_s=args.offline_for,
            slow_link_bps=args.slow_link,
            churn_every_s=args.churn_every,
        ),
    )


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        fleet = SimFleet(cfg)
    except SimError as exc:
        print(f"edgefleet-sim: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    start = time.monotonic()
    try:
        while True:
            fleet.run_for(5.0)
            t = fleet.totals()
            print(
                f"{time.monotonic() - start:7.0f}s  devices {t.devices}  connected {t.connected}  "
                f"installs committed {t.committed}  chunk MB {t.chunk_bytes / 1e6:.1f}  "
                f"repair requests {t.fetch_requests}  broker probes {t.probes}",
                flush=True,
            )
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
