"""A pure-Python MQTT 3.1.1 broker (amqtt) for machines without mosquitto.

Used by the demo only when no ``mosquitto`` binary is on PATH. It speaks MQTT 3.1.1, keeps
retained messages in memory and has no ACLs: fine for a laptop demo, not for a fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging


async def _serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 1000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        await asyncio.Event().wait()
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m demo.embedded_broker", description="Embedded MQTT 3.1.1 broker (amqtt) for the demo."
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
