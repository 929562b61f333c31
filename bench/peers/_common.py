"""What every peer server shares, so that they differ only in their framework: the onnxruntime
session (the same options as ``cloud.models.session_options`` with ``cloud.config.SessionTuning``'s
defaults), the seed's preprocessing (Pillow: RGB, 224x224, /255, NCHW) and the answer's form.

Runs inside a peer's own venv (numpy, Pillow, onnxruntime only): it must not import the project.
Configuration comes from the environment because BentoML imports the service module itself.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

MODEL = os.environ.get("PEER_MODEL", "")
MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "4"))
WORKERS = int(os.environ.get("PEER_WORKERS", str(os.cpu_count() or 1)))
PORT = int(os.environ.get("PEER_PORT", "8000"))


def session() -> ort.InferenceSession:
    """cloud.models.session_options(SessionTuning()): all graph optimisations, sequential, one
    intra-op and one inter-op thread per run, no spinning (parallelism from several workers)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    if not MODEL:
        raise SystemExit("PEER_MODEL is not set: the path of the ONNX file to serve")
    return ort.InferenceSession(MODEL, sess_options=so, providers=["CPUExecutionProvider"])


def pixels(image: Image.Image) -> np.ndarray:
    """The seed's preprocessing: RGB, resized to 224x224, scaled to 0..1, CHW float32."""
    arr = np.asarray(image.convert("RGB").resize((224, 224)), dtype=np.float32)
    return arr.transpose(2, 0, 1) / np.float32(255.0)


def decode(data: bytes) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(data)))


def multipart_file(body: bytes) -> bytes:
    """The first part's content of a multipart/form-data body, found by the boundary its first
    line carries (for a server that hands the handler the raw body and no headers)."""
    first = body.index(b"\r\n")
    boundary = body[:first]
    if not boundary.startswith(b"--"):
        raise ValueError(f"not a multipart body: it starts with {body[:40]!r}")
    start = body.index(b"\r\n\r\n", first) + 4
    return body[start : body.index(b"\r\n" + boundary, start)]


def answer(row: np.ndarray) -> dict[str, Any]:
    """The seed's answer: {"predictions": [[...logits]]}."""
    return {"predictions": [row.tolist()]}
