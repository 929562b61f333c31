"""Fixtures for the cloud tests: real (tiny) ONNX models built with onnx.helper, signed bundle
archives made with the shared ``trust`` fixture, and a running app behind FastAPI's TestClient.

The tiny model is a real softmax classifier (Reshape -> MatMul -> Add -> Softmax) with known
weights, so tests can compute the exact expected answer with numpy.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cloud import config as cfg
from cloud.api import create_app
from protocol.bundle import Artifact, Manifest, pack_archive, sha256_hex
from protocol.signing import SigningKey, seal

with warnings.catch_warnings():
    # starlette warns at import that it prefers httpx2 over httpx; the client works the same
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Tiny:
    """A tiny classifier: ``softmax(x.reshape(n, -1) @ w + b)``."""

    onnx: bytes
    w: np.ndarray
    b: np.ndarray
    shape: tuple[Any, ...]

    def expected(self, x: np.ndarray) -> np.ndarray:
        z = x.reshape(x.shape[0], -1).astype(np.float64) @ self.w + self.b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def tiny_model(
    shape: tuple[Any, ...] = ("N", 8, 8, 1), classes: int = 10, seed: int = 0, dtype: int = TensorProto.FLOAT
) -> Tiny:
    rng = np.random.default_rng(seed)
    features = int(np.prod([d for d in shape[1:]]))
    w = (rng.standard_normal((features, classes)) * 0.05).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32) * 0.1
    nodes = []
    inp = "image"
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT))
        inp = "xf"
    nodes += [
        helper.make_node("Reshape", [inp, "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", dtype, list(shape))],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [shape[0], classes])],
        initializer=[
            numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return Tiny(model.SerializeToString(), w, b, shape)


IMAGE_8x8 = {"kind": "image", "height": 8, "width": 8, "channels": 1, "scale": 1 / 255.0, "offset": 0.0}


def make_archive(
    signer: SigningKey | None,
    name: str,
    version: str,
    onnx_bytes: bytes,
    preprocess: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    created: int | None = None,
    keys: list[SigningKey] | None = None,
    extra: dict[str, bytes] | None = None,
    model: dict[str, Any] | None = None,
) -> bytes:
    """A signed bundle archive with an ``onnx`` and a ``labels`` artifact (and ``extra``)."""
    labels = labels if labels is not None else [f"class{i}" for i in range(10)]
    files = {"model.onnx": ("onnx", onnx_bytes), "labels.txt": ("labels", ("\n".join(labels) + "\n").encode())}
    for fname, data in (extra or {}).items():
        files[fname] = ("report", data)
    arts = tuple(Artifact.of(n, role, data) for n, (role, data) in files.items())
    manifest = Manifest(
        name,
        version,
        created if created is not None else int(time.time()),
        arts,
        model={
            "task": "classification",
            "num_classes": len(labels),
            "preprocess": preprocess if preprocess is not None else IMAGE_8x8,
            "labels": "labels.txt",
            **(model or {}),
        },
    )
    signers = keys if keys is not None else ([signer] if signer is not None else [])
    env = seal("manifest", manifest.to_dict(), signers)
    return pack_archive(env, {n: data for n, (_, data) in files.items()})


def drop(folder: Path, archive: bytes) -> Path:
    """Write an archive into a bundle folder the way the hub does: ``<sha256>.efb``, atomically."""
    path = folder / f"{sha256_hex(archive)}.efb"
    tmp = folder / f".{path.name}.tmp"
    tmp.write_bytes(archive)
    tmp.rename(path)
    return path


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(w: int, h: int) -> bytes:
    """A PNG whose header declares ``w`` x ``h`` pixels (an image bomb when large)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# files a seeded mutation fuzzer found (zlib + base64): Pillow's DDS, SPIDER and TIFF decoders
# raised NotImplementedError, AttributeError and TypeError on them, which the API answered 500
DECODER_CRASHERS = {
    "dds-notimplementederror": (
        "eNrtzrEJACAMRNHrLM0IGcYNXMfCzRURG+3EwuKHPLgQAkkpe5EUTXJNVXflR26r52D7xdgEAAAAAADwUv3vpw4X3iQi"
    ),
    "spider-attributeerror": (
        "eNrty4EJwCAMBdEPDmZbHcU9mlEdpVYFgxOUcgdPjBjJoqRravV5FLT3/jndfK+ruWfL7UjbbhERfax6AAAAAACAf3sAKF2FLw=="
    ),
    "tiff-typeerror": (
        "eNrz9NRi4GBgYOBkYGBkYWAEshSAmBGJzcTIDGaDVDFD2SDMhsQWZGQF01VALIakVxzKZmBhYJCBqW9gAAN2fKABg4EM/"
        "kPpevZRMApGwZAEABaoITI="
    ),
}


def decoder_crasher(name: str) -> bytes:
    return zlib.decompress(base64.b64decode(DECODER_CRASHERS[name]))


@dataclass
class Setup:
    bundles: Path
    root: Path


@pytest.fixture
def setup(tmp_path: Path, trust: Any) -> Setup:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    root = tmp_path / "root.json"
    root.write_bytes(trust.root_bytes)
    return Setup(bundles, root)


def client_for(s: Setup, trust: Any, **options: Any) -> TestClient:
    options.setdefault("poll_s", 0)
    config = cfg.build(bundles=str(s.bundles), root=str(s.root), environ={}, **options)
    return TestClient(create_app(config, trust.root))


@pytest.fixture
def tiny() -> Tiny:
    return tiny_model()


@pytest.fixture
def served(setup: Setup, trust: Any, tiny: Tiny) -> Iterator[TestClient]:
    """The tiny 8x8 grayscale classifier, signed and served as ``tiny`` version 1."""
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    with client_for(setup, trust) as client:
        yield client


CONVERT_TFLITE = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tf2onnx
proto, _ = tf2onnx.convert.from_tflite(sys.argv[1], opset=17)
open(sys.argv[2] + ".tmp", "wb").write(proto.SerializeToString())
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""


@pytest.fixture(scope="session")
def coral_mobilenet_onnx(coral_models: Path) -> Path:
    """Coral's real quantized MobileNetV2 (uint8 in/out, static batch 1) as ONNX, via
    tf2onnx.from_tflite in a child process; cached under ~/.cache/edgefleet by the model, this
    script and the installed packages (tests/bundle_cache.py)."""
    import hashlib
    import subprocess
    import sys

    from tests.bundle_cache import CACHE, environment

    model = coral_models / "mobilenet_v2_1.0_224_quant.tflite"
    key = hashlib.sha256(model.read_bytes() + CONVERT_TFLITE.encode() + environment().encode()).hexdigest()[:16]
    out = CACHE / f"coral-mobilenet_v2_1.0_224_quant-{key}.onnx"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_suffix(f".{os.getpid()}.part")
        proc = subprocess.run(
            [sys.executable, "-c", CONVERT_TFLITE, str(model), str(part)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tf2onnx from_tflite failed:\n{proc.stderr[-3000:]}")
        part.rename(out)  # whole or not at all, even with another test process converting too
    return out


def service_of(client: TestClient) -> Any:
    """The app's :class:`cloud.service.Service` (typed loosely: TestClient.app is any ASGI app)."""
    return client.app.state.service  # type: ignore[attr-defined]


def portal_of(client: TestClient) -> Any:
    """The TestClient's event-loop portal (exists inside ``with client``)."""
    assert client.portal is not None, "use the client inside 'with'"
    return client.portal
