"""``--processes N``: several server processes accepting from one listening socket.

Why (measured, docs/cloud.md): one Python process has one event loop and one GIL, so HTTP
parsing, multipart, image decoding and JSON encoding of every request share one core however
many onnxruntime threads run. N spawned processes each run their own uvicorn, their own
batchers and their own copy of every model on one inherited socket; the kernel hands each new
connection to whichever process accepts it. The parent only supervises: it restarts a process
that dies and forwards SIGINT/SIGTERM.

Shared: admission (``--max-inflight``, ``--latency-budget-ms``) counts the requests in flight of
every process against one machine-wide bound (:mod:`cloud.load`: the parent creates the shared
slots before it starts the children, gives the ``i``-th process slot ``i`` and zeroes the slot
of a process that dies, so a crash frees what it held). Per process, not shared: Prometheus
metrics (a scrape of ``/metrics`` answers for the process that accepted the connection),
``--per-key-inflight``, ``--max-queue`` and admission's ``floor`` (each process may always fill
its own workers' batches).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

from protocol.signing import Root, load_root_unverified

from .config import CloudConfig
from .load import SharedLoad

log = logging.getLogger("cloud")
RESTART_DELAY_S = 1.0


def listen(host: str, port: int) -> socket.socket:
    """One listening socket that every server process accepts from (the kernel hands each
    connection to one of them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_process(
    config: CloudConfig, root: Root, sock: socket.socket | None, shared: SharedLoad | None = None, slot: int = 0
) -> None:
    """Run one server (the only one, or slot ``slot`` of ``--processes``) until SIGINT/SIGTERM."""
    import uvicorn

    from .api import create_app

    app = create_app(config, root, shared=shared, slot=slot)
    stopped: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # uvicorn shuts down gracefully on these, then re-raises them to the previous handler;
        # ours records it so a clean stop exits 0 instead of dying by the signal.
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    uv = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=config.access_log,
        log_level=config.log_level.lower(),
    )
    uvicorn.Server(uv).run(sockets=[sock] if sock is not None else None)
    log.info("stopped%s", f" by signal {stopped[-1]}" if stopped else "")


def _child(config: CloudConfig, sock: socket.socket, load_path: str, slot: int) -> None:
    """Entry point of a spawned server process: it configures its own logging and reads the
    trust root again (the parent already checked it; keys do not pickle). It leaves the
    terminal's process group so Ctrl-C reaches only the parent, which then stops each child with
    one SIGTERM (a second signal would make uvicorn drop in-flight requests)."""
    os.setpgrp()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    with open(config.root, "rb") as f:
        root = load_root_unverified(f.read())
    serve_process(config, root, sock, SharedLoad(Path(load_path), config.processes), slot)


def supervise(config: CloudConfig, sock: socket.socket) -> int:
    """Run ``config.processes`` server processes on one socket; restart one that dies; on
    SIGINT/SIGTERM stop them all gracefully. Each process loads the models itself (spawned, not
    forked: onnxruntime's threads do not survive a fork)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))

    shared = SharedLoad.create(config.processes)

    def start(slot: int) -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(
            target=_child, args=(config, sock, str(shared.path), slot), name=f"edgefleet-cloud-server-{slot}"
        )
        proc.start()
        return proc

    procs = [start(i) for i in range(config.processes)]
    while not stopping:
        time.sleep(0.2)
        for i, proc in enumerate(procs):
            if not stopping and not proc.is_alive():
                shared.reset(i)  # what it held in flight died with it
                log.error(
                    "server process %s exited with %s; starting another in %.0f s",
                    proc.pid,
                    proc.exitcode,
                    RESTART_DELAY_S,
                )
                time.sleep(RESTART_DELAY_S)
                procs[i] = start(i)
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    sock.close()
    shared.remove()
    log.info("stopped by signal %d", stopping[-1])
    return 0
