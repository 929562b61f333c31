"""Drift features and the model I/O spec, shared by the compiler (baseline) and the agent
(telemetry) so both compute exactly the same numbers.

Functions here are duck-typed over numpy arrays (``.reshape``, ``.mean``, ``.std``, ``.max``,
``.argmax``) but never import numpy, so :mod:`protocol` stays dependency-free.

**Preprocess spec** (``manifest.model["preprocess"]``)::

    {"kind": "image", "height": H, "width": W, "channels": 1|3,
     "scale": s, "offset": o,            # float input = pixel(0..255) * s + o
     "resize": "bicubic"|"bilinear"|"nearest",   # optional; default "bicubic" (Pillow's
                                                 # default, what the seed's /predict does)
     "input_quantization": {"scale": qs, "zero_point": zp}}   # optional, see below
    {"kind": "tensor"}                    # callers send the float tensor themselves

Images are converted to grayscale (1 channel) or RGB (3) and resized to W x H. The tensor layout
(NHWC or NCHW) is not part of the spec: each runtime reads it from the model's input shape.

The float tensor then goes to the model: a float model takes it as is; an int8/uint8 model's
input is quantized with the input tensor's own (scale, zero_point): ``q = round(f / scale) + zp``.
Where the model file does not carry its input quantization (an ONNX graph with a uint8 input,
e.g. a converted Coral model), ``input_quantization`` supplies it. Likewise an integer ONNX
output is dequantized with ``manifest.model["onnx"]["output_quantization"]``
(``{"scale", "zero_point"}``: ``score = scale * (q - zero_point)``) so every path answers scores.

**Input features** (``input_features``), on the float input tensor of one sample:

* image: ``mean_c{i}`` and ``std_c{i}`` per channel, ``brightness`` (mean over all pixels);
* tensor: ``f{i}`` for each of the first 32 flattened values.

**Output features** (``output_features``), on the dequantized score vector of one sample:
``top1_confidence`` (max score) and ``top1_class`` (argmax, as a float so it bins like any
other feature; baseline edges for it are ``0.5, 1.5, ...``).
"""

from __future__ import annotations

from typing import Any

MAX_TENSOR_FEATURES = 32


def input_features(x: Any, preprocess: dict[str, Any]) -> dict[str, float]:
    if preprocess.get("kind") == "image":
        channels = int(preprocess.get("channels", x.shape[-1]))
        flat = x.reshape(-1, channels)
        means = flat.mean(axis=0)
        stds = flat.std(axis=0)
        out = {f"mean_c{i}": float(means[i]) for i in range(channels)}
        out.update({f"std_c{i}": float(stds[i]) for i in range(channels)})
        out["brightness"] = float(flat.mean())
        return out
    flat = x.reshape(-1)
    return {f"f{i}": float(flat[i]) for i in range(min(MAX_TENSOR_FEATURES, flat.shape[0]))}


def output_features(scores: Any) -> dict[str, float]:
    flat = scores.reshape(-1)
    return {"top1_confidence": float(flat.max()), "top1_class": float(flat.argmax())}


RESIZE_FILTERS = ("bicubic", "bilinear", "nearest")


def resize_filter(preprocess: dict[str, Any]) -> str:
    """The resize filter a preprocess spec asks for (default bicubic), validated."""
    name = preprocess.get("resize", "bicubic")
    if name not in RESIZE_FILTERS:
        raise ValueError(f"preprocess.resize must be one of {RESIZE_FILTERS}, got {name!r}")
    return str(name)


def class_edges(num_classes: int) -> list[float]:
    return [i + 0.5 for i in range(num_classes - 1)]
