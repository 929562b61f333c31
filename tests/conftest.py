"""Fixtures shared by every test package.

* ``trust``: a fresh trust root (3 root keys, threshold 2) and an online targets key.
* ``digits_bundle``: a real compiler build of the digits CNN (TensorFlow conversion), cached under
  ``~/.cache/edgefleet/bundles`` until a file the build read changes (``tests/bundle_cache.py``),
  so the suite pays for TensorFlow once.
* ``coral_models``: the real Coral test models and images in ``../shared/models/coral``.
* ``inat_bundle``: Coral's iNat bird classifier imported with no data, cached like the digits
  build: its ONNX twin is withheld (parity measured on synthetic inputs).
* ``mosquitto``: a private Mosquitto broker on a free loopback port, stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.launcher import free_port, wait_port
from protocol.bundle import MANIFEST_FILE, pack_archive
from protocol.signing import Envelope, Root, SigningKey, load_root_unverified, root_document, seal
from tests.bundle_cache import CACHE, cached_bundle

__all__ = ["CACHE", "REPO", "cached_bundle"]  # the builds' cache, for the helpers that import it from here

REPO = Path(__file__).resolve().parent.parent


def _find_coral() -> Path | None:
    env = os.environ.get("EDGEFLEET_CORAL_MODELS")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "models" / "coral", REPO.parent.parent / "shared" / "models" / "coral"]
    for c in candidates:
        if (c / "mobilenet_v2_1.0_224_quant.tflite").exists():
            return c
    return None


@contextmanager
def serving_process(
    argv: list[str], port: int, log: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[str]:
    """Run ``argv`` (a server listening on 127.0.0.1:``port``) from the repo with its output in
    ``log``; yield its base URL once the port answers; terminate it afterwards. One way for
    every test that starts a hub, a cloud or a broker as a process."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True)
class Trust:
    root_keys: tuple[SigningKey, ...]
    targets_key: SigningKey
    root: Root
    root_bytes: bytes

    def sign_dir(
        self, bundle_dir: Path, keys: list[SigningKey] | None = None
    ) -> tuple[Envelope, dict[str, bytes], bytes]:
        """Sign a compiler output directory; return (envelope, artifacts, archive bytes)."""
        env = Envelope.parse((bundle_dir / MANIFEST_FILE).read_bytes())
        env = Envelope(env.payload_type, env.payload, ())
        for k in keys if keys is not None else [self.targets_key]:
            env = env.add_signature(k)
        arts = {p.name: p.read_bytes() for p in bundle_dir.iterdir() if p.name != MANIFEST_FILE}
        return env, arts, pack_archive(env, arts)


@pytest.fixture(scope="session")
def trust() -> Trust:
    rks = tuple(SigningKey.generate() for _ in range(3))
    tk = SigningKey.generate()
    raw = seal("root", root_document(1, int(time.time()) + 365 * 86400, rks, 2, [tk]), rks[:2]).to_bytes()
    return Trust(rks, tk, load_root_unverified(raw), raw)


@pytest.fixture(scope="session")
def coral_models() -> Path:
    path = _find_coral()
    if path is None:
        pytest.skip("Coral test models not found (set EDGEFLEET_CORAL_MODELS to ../shared/models/coral)")
    return path


@pytest.fixture(scope="session")
def digits_bundle() -> Path:
    """A real digits build (unsigned bundle directory). Cached across runs (tests/bundle_cache.py)."""
    return cached_bundle("digits", ["digits"])


@pytest.fixture(scope="session")
def inat_bundle(coral_models: Path) -> Path:
    """``mobilenet_v2_1.0_224_inat_bird_quant`` imported with no validation or calibration data
    (unsigned bundle directory): its twin's parity is measured on synthetic inputs and it is
    withheld (tests/compiler/test_twin.py has the figures). Cached across runs (tests/bundle_cache.py)."""
    return cached_bundle(
        "inat",
        [
            "import",
            str(coral_models / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"),
            "--labels",
            str(coral_models / "inat_bird_labels.txt"),
        ],
    )


@dataclass
class Broker:
    port: int
    proc: subprocess.Popen[bytes]
    conf: Path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(10)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)


def start_mosquitto(directory: Path, extra_conf: str = "", port: int | None = None) -> Broker:
    """A broker on a free loopback port. Given ``port``, ``extra_conf`` brings the listener
    (e.g. the hub's generated edgefleet.conf through include_dir)."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto binary not on PATH")
    listener = "" if port is not None else f"listener {free_port()} 127.0.0.1\nallow_anonymous true\n"
    port = port if port is not None else int(listener.split()[1])
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"{listener}persistence true\npersistence_location {directory}/\nautosave_interval 1\n" + extra_conf
    )
    broker = Broker(port, None, conf)  # type: ignore[arg-type]
    broker.start()
    return broker


@pytest.fixture
def mosquitto(tmp_path: Path):
    broker = start_mosquitto(tmp_path / "broker")
    yield broker
    broker.stop()
