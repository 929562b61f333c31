"""Serving peers for ``python -m bench fallback``: BentoML, LitServe and Mosec, each serving the
same ONNX file with onnxruntime (same session options as ours) behind the same load generator.

Peers are not project dependencies. Each gets its own venv, built on demand by the bench
(``ensure``) under ``~/.cache/edgefleet/peers/<peer>-venv`` with pinned versions of the peer,
onnxruntime, numpy and Pillow (the versions this project's venv runs); none of them pulls torch
(LitServe 0.2.19's requirements are FastAPI, uvicorn and pyzmq; checked with ``pip install
--dry-run --report``). Tests only look for an existing venv (``installed_version``) and never
build one. Each peer's server is one small script in this folder, using its framework's
documented batching API; ``_common.py`` holds what they share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENVS = Path.home() / ".cache" / "edgefleet" / "peers"
# the versions this project's venv runs, so that peers and ours differ only in the server
RUNTIME = ("onnxruntime==1.32.0", "numpy==2.4.6", "pillow==13.0.0")


class PeerUnavailable(Exception):
    """A peer that cannot be installed or started here; the message says why."""


@dataclass(frozen=True)
class Peer:
    name: str
    package: str
    version: str
    extra: tuple[str, ...]  # further pinned requirements
    batching: str  # what its batching does and how it is set, for the results

    def venv(self, root: Path = VENVS) -> Path:
        return root / f"{self.name}-venv"

    def requirements(self) -> list[str]:
        return [f"{self.package}=={self.version}", *self.extra, *RUNTIME]

    def config(self, max_batch: int, workers: int) -> dict[str, Any]:
        return {
            "version": self.version,
            "script": f"bench/peers/{self.name}_server.py",
            "max_batch": max_batch,
            "workers": workers,
            "batching": self.batching,
            "session": "ORT_ENABLE_ALL, sequential, 1 intra-op + 1 inter-op thread, no spinning (as ours)",
            "preprocess": "Pillow decode, RGB, resize 224x224, /255, NCHW (as the seed)",
        }

    def command(self, port: int, root: Path = VENVS) -> list[str]:
        bin_ = self.venv(root) / "bin"
        if self.name == "bentoml":
            return [
                str(bin_ / "bentoml"),
                "serve",
                "bentoml_server:Classifier",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
        if self.name == "mosec":
            return [str(bin_ / "python"), "mosec_server.py", "--address", "127.0.0.1", "--port", str(port)]
        return [str(bin_ / "python"), f"{self.name}_server.py"]


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "bentoml",
            "bentoml",
            "1.4.40",
            (),
            "adaptive batching: @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=1000); "
            "workers=WORKERS processes, one dispatcher and model each",
        ),
        Peer(
            "litserve",
            "litserve",
            "0.2.19",
            ("python-multipart==0.0.34",),
            "LitAPI(max_batch_size=MAX_BATCH, batch_timeout=0.01) with batch()/unbatch(), fast_queue=True (ZeroMQ); "
            "workers_per_device=WORKERS inference processes, uvicorn API server in front",
        ),
        Peer(
            "mosec",
            "mosec",
            "0.9.8",
            (),
            "dynamic batching: a Decode stage (num=WORKERS) then Inference(num=WORKERS, max_batch_size=MAX_BATCH, "
            "max_wait_time=10 ms) behind Mosec's Rust ingress",
        ),
    )
}


def select(spec: str) -> list[Peer]:
    """``--peers none|all|bentoml,mosec,...`` as peers; an unknown name is refused naming it."""
    spec = spec.strip()
    if spec in ("", "none"):
        return []
    if spec == "all":
        return list(PEERS.values())
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"--peers: unknown peer(s) {', '.join(unknown)}; known: none, all, {', '.join(PEERS)}")
    return [PEERS[n] for n in names]


def installed_version(peer: Peer, root: Path = VENVS) -> str | None:
    """The peer's version in its venv, or None when there is no usable venv."""
    py = peer.venv(root) / "bin" / "python"
    if not py.exists():
        return None
    code = f"import importlib.metadata as m; import onnxruntime, PIL; print(m.version({peer.package!r}))"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
    return r.stdout.strip() if r.returncode == 0 else None


def ensure(peer: Peer, root: Path = VENVS) -> str:
    """The peer's venv with its pinned requirements, built when missing or at another version;
    its version. Raises PeerUnavailable naming the failed step."""
    have = installed_version(peer, root)
    if have == peer.version:
        return have
    venv = peer.venv(root)
    print(f"building {venv} ({' '.join(peer.requirements())})...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *peer.requirements()],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise PeerUnavailable(f"{peer.name}: {' '.join(cmd[:3])} failed (exit {r.returncode}): {' | '.join(tail)}")
    have = installed_version(peer, root)
    if have != peer.version:
        raise PeerUnavailable(f"{peer.name}: expected version {peer.version} in {venv}, found {have}")
    return have


def start(
    peer: Peer, model: Path, port: int, max_batch: int, workers: int, log: Path, root: Path = VENVS
) -> subprocess.Popen[bytes]:
    """The peer's server on 127.0.0.1:port in its own process group (frameworks fork workers)."""
    env = dict(
        os.environ,
        PEER_MODEL=str(model),
        PEER_PORT=str(port),
        PEER_MAX_BATCH=str(max_batch),
        PEER_WORKERS=str(workers),
        BENTOML_DO_NOT_TRACK="True",
    )
    env.pop("PYTHONPATH", None)
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            peer.command(port, root),
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the peer's process group, then SIGKILL to it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
