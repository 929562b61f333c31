"""Build real bundle directories for agent tests from the Coral models (no compiler needed).

Self-test vectors are computed here by running the model with LiteRT on a real image, the way
the compiler does for its own builds; models that cannot run on a CPU get a placeholder vector
(their self-test must fail, which is the point of those tests).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from protocol.bundle import MANIFEST_FILE, Artifact, Manifest, Requirements
from protocol.signing import seal

MNV1 = "mobilenet_v1_0.25_128_quant.tflite"
MNV2 = "mobilenet_v2_1.0_224_quant.tflite"
MNV1_TPU = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
BROKEN = "model_invoking_error.tflite"


def _image_input(coral: Path, size: int) -> np.ndarray:
    img = Image.open(coral / "cat_720p.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).reshape(1, size, size, 3)


def selftest_doc(model_path: Path, coral: Path, size: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    x = _image_input(coral, size)
    try:
        it = Interpreter(model_path=str(model_path))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        out = it.get_tensor(it.get_output_details()[0]["index"]).tolist()
    except RuntimeError:
        out = [[0] * 1001]  # the model cannot run on a CPU: any expectation will do
    return {
        "schema": 1,
        "artifact": model_path.name,
        "tolerance": 2,
        "max_latency_ms": 5000,
        "cases": [{"input": x.tolist(), "expected": out}],
    }


def coral_bundle(
    out: Path,
    coral: Path,
    model: str = MNV1,
    *,
    name: str = "mnv1",
    version: str = "1",
    role: str = "tflite_int8",
    boards: tuple[str, ...] = (),
    edgetpu: str = "none",
    cpu_twin: str | None = None,
    truncate: str | None = None,
    preprocess_size: int | None = None,
    baseline: bool = True,
    extras: dict[str, tuple[str, bytes]] | None = None,
) -> Path:
    """Write an unsigned bundle directory; sign it with ``trust.sign_dir``.

    ``extras``: more artifacts, ``{name: (role, bytes)}`` (e.g. a float reference, an ONNX twin,
    a report: what a device view leaves out).

    ``baseline``: ship a small drift baseline (off where a test must see only latency gates).

    ``cpu_twin``: also ship this CPU model as ``tflite_int8`` (for Edge TPU bundles).
    ``truncate``: artifact name whose bytes are cut short *after* the manifest was written.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = cpu_twin or model  # a co-compiled name also names its partner's size
    size = 224 if "224" in src else 160 if "_160_" in src else 128
    art_name = "model_edgetpu.tflite" if role == "tflite_edgetpu" else "model_int8.tflite"
    shutil.copyfile(coral / model, out / art_name)
    files = {art_name: role}
    if cpu_twin:
        shutil.copyfile(coral / cpu_twin, out / "model_int8.tflite")
        files["model_int8.tflite"] = "tflite_int8"
    shutil.copyfile(coral / "imagenet_labels.txt", out / "labels.txt")
    files["labels.txt"] = "labels"
    test_model = out / ("model_int8.tflite" if "model_int8.tflite" in files else art_name)
    (out / "selftest.json").write_text(json.dumps(selftest_doc(test_model, coral, size)))
    files["selftest.json"] = "selftest"
    if baseline:
        (out / "baseline.json").write_text(
            json.dumps(
                {
                    "schema": 1,
                    "samples": 1,
                    "inputs": {"brightness": {"edges": [-0.5, 0.0, 0.5], "ref": [1, 1, 1, 1]}},
                    "outputs": {"top1_confidence": {"edges": [0.25, 0.5, 0.75], "ref": [1, 1, 1, 1]}},
                    "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 100},
                }
            )
        )
        files["baseline.json"] = "baseline"
    for n, (r, data) in (extras or {}).items():
        (out / n).write_bytes(data)
        files[n] = r
    arts = tuple(Artifact.of(n, r, (out / n).read_bytes()) for n, r in files.items())
    manifest = Manifest(
        name,
        version,
        int(time.time()),
        arts,
        Requirements(edgetpu, boards),
        model={
            "task": "classification",
            "num_classes": 1001,
            "labels": "labels.txt",
            "preprocess": {
                "kind": "image",
                "height": preprocess_size or size,
                "width": preprocess_size or size,
                "channels": 3,
                "scale": 1 / 128,
                "offset": -1.0,
            },
            "input": {"shape": [1, size, size, 3]},
        },
    )
    (out / MANIFEST_FILE).write_bytes(seal("manifest", manifest.to_dict(), []).to_bytes())
    if truncate:
        p = out / truncate
        p.write_bytes(p.read_bytes()[:-100])
    return out


DATA = Path(__file__).with_name("data")


def gather_bundle(out: Path, version: str = "2") -> Path:
    """A validly signed bundle whose model passes its (dark-image) self-test but fails at invoke
    on bright images: see ``data/make_gather_oob.py``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copyfile(DATA / "gather_oob.tflite", out / "model_float.tflite")
    (out / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))
    expected = [[1.0] + [0.0] * 9]
    (out / "selftest.json").write_text(
        json.dumps(
            {
                "schema": 1,
                "artifact": "model_float.tflite",
                "tolerance": 0,
                "max_latency_ms": 1000,
                "cases": [{"input": np.zeros((1, 8, 8, 1)).tolist(), "expected": expected}],
            }
        )
    )
    roles = {"model_float.tflite": "tflite_float", "labels.txt": "labels", "selftest.json": "selftest"}
    arts = tuple(Artifact.of(n, r, (out / n).read_bytes()) for n, r in roles.items())
    manifest = Manifest(
        "gather",
        version,
        int(time.time()),
        arts,
        Requirements(),
        model={
            "task": "classification",
            "num_classes": 10,
            "labels": "labels.txt",
            "preprocess": {"kind": "image", "height": 8, "width": 8, "channels": 1, "scale": 1 / 255, "offset": 0.0},
        },
    )
    (out / MANIFEST_FILE).write_bytes(seal("manifest", manifest.to_dict(), []).to_bytes())
    return out
