"""Every CPU model in ``../shared/models/coral`` imported with ``edgefleet-compile import`` (ONNX
twin included), and the LiteRT reference the agent's and the cloud's answers are held to.

Bundles are cached like the digits build (``tests.bundle_cache.cached_bundle``: kept until a
file the import read changes). The reference runs the ``.tflite`` directly with
LiteRT on the same raw input, from a fresh interpreter in its initial state (recurrent state
inputs set to zero: left as allocated they held whatever an earlier interpreter in the process
left there, which changed the traffic detector's boxes), and dequantizes each output with its
own quantization.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from protocol.bundle import MANIFEST_FILE, Manifest, parse_manifest
from protocol.signing import Envelope
from tests.bundle_cache import put
from tests.conftest import CACHE, cached_bundle


@dataclass(frozen=True)
class Case:
    key: str
    model: str  # file in the Coral folder
    image: str  # test image (a BMP: decoded the same way by Pillow everywhere)
    task: str
    labels: str | None = None  # file in the Coral folder, or "digits" / "voc21" (written here)
    calibration: bool = False  # import with the image as calibration data (parity on a real input)
    tensor: bool = False  # the model takes a tensor, not an image: send the pixels as its raw input


CASES = {
    c.key: c
    for c in (
        Case(
            "mnv1_025",
            "mobilenet_v1_0.25_128_quant.tflite",
            "grace_hopper.bmp",
            "classification",
            "imagenet_labels.txt",
        ),
        Case(
            "mnv1_05", "mobilenet_v1_0.5_160_quant.tflite", "grace_hopper.bmp", "classification", "imagenet_labels.txt"
        ),
        Case("mnv2", "mobilenet_v2_1.0_224_quant.tflite", "grace_hopper.bmp", "classification", "imagenet_labels.txt"),
        Case(
            "inat", "mobilenet_v2_1.0_224_inat_bird_quant.tflite", "bird.bmp", "classification", "inat_bird_labels.txt"
        ),
        Case("embedding", "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", "grace_hopper.bmp", "embedding"),
        Case("deeplab", "deeplabv3_mnv2_dm05_pascal_quant.tflite", "bird_segmentation.bmp", "segmentation", "voc21"),
        Case("movenet", "movenet_single_pose_lightning_ptq.tflite", "squat.bmp", "keypoints", calibration=True),
        Case("traffic", "traffic_model.tflite", "traffic_0001.bmp", "detection", "traffic_label_map.pbtxt"),
        Case("lstm", "keras_lstm_mnist_ptq.tflite", "mnist_nine.bmp", "classification", "digits", tensor=True),
    )
}
NON_CLASSIFIERS = tuple(k for k, c in CASES.items() if c.task != "classification")
BROKEN = "model_invoking_error.tflite"
# the two classifiers co-compiled to share one Edge TPU's parameter cache: Edge TPU only (no CPU
# model inside, so no ONNX twin either)
COCOMPILED = {
    "cocompiled_025": "mobilenet_v1_0.25_128_quant_cocompiled_with_mobilenet_v1_0.5_160_quant_edgetpu.tflite",
    "cocompiled_05": "mobilenet_v1_0.5_160_quant_cocompiled_with_mobilenet_v1_0.25_128_quant_edgetpu.tflite",
}


def _labels(coral: Path, name: str) -> Path:
    if name == "digits":
        path = CACHE / "labels" / "digits.txt"
        text = "".join(f"{i}\n" for i in range(10))
    elif name == "voc21":  # the file's 21 classes; its last lines are a note on label 255
        path = CACHE / "labels" / "voc21.txt"
        text = "\n".join((coral / "pascal_voc_segmentation_labels.txt").read_text().splitlines()[:21]) + "\n"
    else:
        return coral / name
    return put(path, text.encode())


def imported(key: str, coral: Path) -> Path:
    """The unsigned bundle directory of ``CASES[key]`` (imported once, cached)."""
    c = CASES[key]
    argv = ["import", str(coral / c.model), "--name", key]
    if c.labels:
        argv += ["--labels", str(_labels(coral, c.labels))]
    if c.calibration:
        cal = put(CACHE / "calibration" / key / c.image, (coral / c.image).read_bytes()).parent
        argv += ["--calibration", str(cal)]
    return cached_bundle(f"coral-{key}", argv)


def imported_edgetpu(key: str, coral: Path) -> Path:
    """The unsigned bundle of ``COCOMPILED[key]`` (an Edge-TPU-only bundle: nothing to convert)."""
    argv = ["import", str(coral / COCOMPILED[key]), "--name", key, "--labels", str(coral / "imagenet_labels.txt")]
    return cached_bundle(f"coral-{key}", argv)


def manifest(bundle: Path) -> Manifest:
    return parse_manifest(Envelope.parse((bundle / MANIFEST_FILE).read_bytes()).payload)


def pixels(coral: Path, c: Case, height: int, width: int, channels: int) -> np.ndarray:
    """The image as both servers decode a BMP: Pillow, L or RGB, bicubic resize (the default)."""
    img = Image.open(coral / c.image).convert("L" if channels == 1 else "RGB")
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).reshape(1, height, width, channels)


def image_bytes(coral: Path, c: Case) -> bytes:
    return (coral / c.image).read_bytes()


def png(px: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px.reshape(px.shape[1], px.shape[2], -1).squeeze()).save(buf, format="PNG")
    return buf.getvalue()


def litert(model: Path, raw: np.ndarray, dequantize: bool = True) -> list[np.ndarray]:
    """Every output of ``model`` on ``raw`` (its request input), dequantized (unless not
    ``dequantize``), from a fresh interpreter: the reference."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    first, *state = it.get_input_details()
    it.set_tensor(first["index"], raw.reshape(first["shape"]))
    for d in state:  # set, not left as allocated: a fresh arena may hold an earlier model's bytes
        it.set_tensor(d["index"], np.full(d["shape"], d["quantization"][1], d["dtype"]))
    it.invoke()
    out = []
    for d in it.get_output_details():
        v = np.array(it.get_tensor(d["index"]))
        scale, zp = d["quantization"]
        real = dequantize and scale and v.dtype.kind in "iu"
        out.append((v.astype(np.float32) - zp) * np.float32(scale) if real else v)
    return out


def step(model: Path, index: int = 0) -> float:
    """One quantization step of output ``index`` (0 for a float output)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    return float(it.get_output_details()[index]["quantization"][0])
