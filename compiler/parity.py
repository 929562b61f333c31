"""The ONNX twin's parity with the model the device runs, and the verdict that ships or
withholds it. Pure functions over arrays; running the two models is :mod:`compiler.tflite_onnx`
(imports) and :mod:`compiler.pipeline` (builds).

Rules:

* Parity is always measured before a twin goes into a bundle. Inputs, in order of preference:
  the user's validation data (``user``), the calibration images (``calibration``), else
  :data:`SYNTHETIC_SAMPLES` synthetic inputs (``synthetic``, seed :data:`SYNTHETIC_SEED`, so a
  rebuild measures the same inputs) drawn uniformly over the input's range: every value of an
  integer input's dtype (for a quantized image: every pixel value), pixels 0..255 through the
  preprocess for a float image input, [-1, 1] for any other float tensor.
* The reference is what the device runs on its CPU: the imported ``.tflite`` under LiteRT, or
  for a build the float TFLite (the twin is the same float graph).
* The metric follows the task of the model's signature (:mod:`protocol.signature`; with no
  task stated it is read from the output, :func:`choose_metric`):

  - ``classification``: top-1 agreement >= :data:`MIN_TOP1_AGREEMENT` and a largest score
    difference <= :data:`MAX_STEP_DIFF` quantization steps (quantized output) or
    :data:`FLOAT_TOLERANCE` (float output);
  - ``pixels`` (segmentation): the same class on >= :data:`MIN_PIXEL_AGREEMENT` of the pixels
    (a mask compared as is, logits by their per-pixel argmax);
  - ``keypoints``: the mean (y, x) distance between the twin's and the reference's keypoints,
    in image fractions, <= :data:`MAX_KEYPOINT_DISTANCE`;
  - ``cosine`` (embeddings, ``tensors`` and anything else): every sample's cosine similarity
    >= :data:`MIN_COSINE` and, for a quantized output, <= :data:`MAX_STEP_DIFF` steps.

  A detector's twin has several outputs and is withheld before parity (a twin must have one
  input and one output, :mod:`compiler.tflite_onnx`), so no detection metric is needed yet.
* Any figure past its limit: ``withheld``, the reason naming each failing figure and its limit.
  Otherwise ``verified``. A converter failure is ``withheld`` with the converter's one-line
  error; a twin nobody asked for (``--no-onnx``) or that cannot exist (an Edge-TPU-only import)
  is ``none`` (:func:`not_made`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.twin import Twin

from .inference import IoSpec

SYNTHETIC_SAMPLES = 32  # one disagreement in 32 already falls below 99 %: enough to catch a wrong twin
SYNTHETIC_SEED = 0

# The cloud answers in the device's place: more than 1 answer in 100 differing is another model.
MIN_TOP1_AGREEMENT = 0.99
# QDQ in onnxruntime and LiteRT's integer kernels round differently: faithful twins measured
# 0 steps (MobileNet v2, the embedding extractor) to 9 steps (MobileNet v1 0.25, 256 synthetic
# inputs); the inat bird twin 131-217, a different computation. 32 steps (1/8 of an 8-bit
# output's range) leaves 3x room for rounding.
MAX_STEP_DIFF = 32
# A float twin of a float graph (a build's twin of the Keras model) differs by float rounding only.
FLOAT_TOLERANCE = 1e-3
# Segmentation: the agreement we ask of top-1, per pixel (deeplab's twin: 99.45-99.95 % on the
# Coral images).
MIN_PIXEL_AGREEMENT = 0.99
# Keypoints in image fractions: 0.02 is ~4 pixels on MoveNet's 192x192 input; MoveNet's twin is
# 0.05-0.09 off on synthetic inputs and up to 0.30 (a different pose) on parrot.jpg.
MAX_KEYPOINT_DISTANCE = 0.02
# Direction of embedding / other outputs; faithful twins (the embedding extractor) measured 1.0.
MIN_COSINE = 0.99

METRICS = ("classification", "pixels", "keypoints", "cosine")


@dataclass(frozen=True)
class ParityInputs:
    kind: str  # user | calibration | synthetic
    raw: np.ndarray  # (N, ...) in the reference model's input dtype and sample shape


def choose_inputs(
    spec: IoSpec,
    preprocess: dict[str, Any],
    validation: np.ndarray | None,
    calibration: np.ndarray | None,
    n: int = SYNTHETIC_SAMPLES,
    seed: int = SYNTHETIC_SEED,
) -> ParityInputs:
    """The parity inputs as raw input tensors: the user's (float) validation inputs, else the
    calibration inputs, each quantized as the device would; else :func:`synthetic`."""
    for kind, x in (("user", validation), ("calibration", calibration)):
        if x is not None and len(x):
            return ParityInputs(kind, np.stack([spec.quantize(x[i]) for i in range(len(x))]))
    return ParityInputs("synthetic", synthetic(spec, preprocess, n, seed))


def synthetic(spec: IoSpec, preprocess: dict[str, Any], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n,) + tuple(spec.shape[1:])
    if np.issubdtype(spec.dtype, np.integer):
        info = np.iinfo(spec.dtype)
        return rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(spec.dtype)
    if preprocess.get("kind") == "image":
        pixels = rng.integers(0, 256, size=shape).astype(np.float32)
        return (pixels * float(preprocess["scale"]) + float(preprocess["offset"])).astype(spec.dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(spec.dtype)


def choose_metric(task: str | None, out: IoSpec) -> str:
    """The metric for a model's ``task`` (:data:`protocol.signature.TASKS`); with none stated:
    ``classification`` for a ``[1, K]`` score vector, ``pixels`` for an integer class map,
    ``cosine`` for anything else."""
    class_map = _class_ids(out)
    if task is None:
        if len(out.shape) == 2 and out.shape[1] > 1 and not class_map:
            return "classification"
        return "pixels" if class_map else "cosine"
    if task == "classification":
        return "classification"
    if task == "segmentation":
        return "pixels"
    if task == "keypoints" and out.shape[-1] == 3:
        return "keypoints"
    return "cosine"


class Comparison:
    """Reference and twin outputs, one sample at a time (raw tensors in the reference's output
    dtype); :meth:`figures` gives the measured values."""

    def __init__(self, out: IoSpec, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.out, self.metric = out, metric
        self.n = self.agree = self.equal = self.values = 0
        self.pixels_same = self.pixels = 0
        self.kp_sum = 0.0
        self.kp_n = 0
        self.kp_max = 0.0
        self.max_steps = 0
        self.max_abs = 0.0
        self.cos_min = 1.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        got = got.reshape(ref.shape)
        self.n += 1
        self.equal += int((got == ref).sum())
        self.values += ref.size
        if self.out.quantized:
            self.max_steps = max(self.max_steps, int(np.abs(got.astype(np.int64) - ref.astype(np.int64)).max()))
        rf = self.out.dequantize(ref).astype(np.float64)
        gf = self.out.dequantize(got.astype(ref.dtype)).astype(np.float64)
        self.max_abs = max(self.max_abs, float(np.abs(gf - rf).max()) if rf.size else 0.0)
        self.cos_min = min(self.cos_min, cosine(rf.reshape(-1), gf.reshape(-1)))
        if self.metric == "classification":
            r1, g1 = rf.reshape(-1), gf.reshape(-1)
            # the twin agrees when its top class is one of the reference's top-scoring classes
            # or the other way round: quantized scores tie often
            self.agree += int(r1[int(g1.argmax())] == r1.max() or g1[int(r1.argmax())] == g1.max())
        elif self.metric == "pixels":
            logits = len(ref.shape) == 4 and ref.shape[-1] > 1  # [1, H, W, C]; else a [1, H, W] mask
            same = (rf.argmax(axis=-1) == gf.argmax(axis=-1)) if logits else (ref == got)
            self.pixels_same += int(same.sum())
            self.pixels += same.size
        elif self.metric == "keypoints":
            d = np.linalg.norm(rf.reshape(-1, 3)[:, :2] - gf.reshape(-1, 3)[:, :2], axis=1)
            self.kp_sum += float(d.sum())
            self.kp_n += d.size
            self.kp_max = max(self.kp_max, float(d.max()) if d.size else 0.0)

    def figures(self) -> dict[str, float]:
        f: dict[str, float] = {"exact_fraction": round(self.equal / self.values, 6) if self.values else 0.0}
        if self.metric == "pixels":
            f["pixel_agreement"] = round(self.pixels_same / self.pixels, 6) if self.pixels else 0.0
            if _class_ids(self.out):
                return f  # differences and directions of class ids mean nothing
        f.update(max_abs_diff=round(self.max_abs, 6), cosine_min=round(self.cos_min, 6))
        if self.out.quantized:
            f["max_step_diff"] = self.max_steps
        if self.metric == "classification":
            f["top1_agreement"] = round(self.agree / self.n, 6) if self.n else 0.0
        if self.metric == "keypoints":
            f["keypoint_distance_mean"] = round(self.kp_sum / self.kp_n, 6) if self.kp_n else 0.0
            f["keypoint_distance_max"] = round(self.kp_max, 6)
        return f


def _class_ids(out: IoSpec) -> bool:
    """Integer values without quantization parameters: ids (an ArgMax), not scaled scores."""
    return bool(np.issubdtype(out.dtype, np.integer)) and not out.scale


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; two zero vectors are the same (1.0), one zero vector is not (0.0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    c = float(a @ b) / (na * nb)
    return min(1.0, max(-1.0, c)) if math.isfinite(c) else 0.0  # rounding can step past 1


def judge(
    figures: dict[str, float],
    metric: str,
    inputs: str,
    n: int,
    quantized: bool,
    float_tolerance: float = FLOAT_TOLERANCE,
) -> Twin:
    """The verdict on measured ``figures``: ``verified`` when every limit of ``metric`` holds,
    else ``withheld`` naming each figure past its limit."""
    checks: list[tuple[str, str, float, float, bool]] = []  # (figure, limit name, value, limit, ok)

    def at_least(fig: str, lim: str, limit: float) -> None:
        checks.append((fig, lim, figures[fig], limit, figures[fig] >= limit))

    def at_most(fig: str, lim: str, limit: float) -> None:
        checks.append((fig, lim, figures[fig], limit, figures[fig] <= limit))

    if metric == "classification":
        at_least("top1_agreement", "min_top1_agreement", MIN_TOP1_AGREEMENT)
        if quantized:
            at_most("max_step_diff", "max_step_diff", MAX_STEP_DIFF)
        else:
            at_most("max_abs_diff", "max_abs_diff", float_tolerance)
    elif metric == "pixels":
        at_least("pixel_agreement", "min_pixel_agreement", MIN_PIXEL_AGREEMENT)
    elif metric == "keypoints":
        at_most("keypoint_distance_mean", "max_keypoint_distance", MAX_KEYPOINT_DISTANCE)
    else:
        at_least("cosine_min", "min_cosine", MIN_COSINE)
        if quantized:
            at_most("max_step_diff", "max_step_diff", MAX_STEP_DIFF)
    where = f"on {n} {inputs} input" + ("" if n == 1 else "s")
    failed = [_say(c, False) for c in checks if not c[4]]
    limits = {lim: limit for _, lim, _, limit, _ in checks}
    if failed:
        return Twin("withheld", "; ".join(failed) + f" {where}", inputs, n, metric, figures, limits)
    return Twin("verified", ", ".join(_say(c, True) for c in checks) + f" {where}", inputs, n, metric, figures, limits)


_LABEL = {
    "top1_agreement": "top-1 agreement",
    "pixel_agreement": "pixels of the same class",
    "keypoint_distance_mean": "mean keypoint distance",
    "cosine_min": "lowest cosine similarity",
    "max_step_diff": "largest difference",
    "max_abs_diff": "largest difference",
}


def _say(check: tuple[str, str, float, float, bool], ok: bool) -> str:
    fig, lim, value, limit, _ = check
    op = (">=" if lim.startswith("min_") else "<=") if ok else ("<" if lim.startswith("min_") else ">")
    if fig in ("top1_agreement", "pixel_agreement"):
        return f"{_LABEL[fig]} {value:.2%} {op} {limit:.2%}"
    if fig == "max_step_diff":
        return f"{_LABEL[fig]} {int(value)} quantization steps {op} {int(limit)}"
    if fig == "cosine_min":
        return f"{_LABEL[fig]} {value:.4f} {op} {limit:.4f}"
    return f"{_LABEL[fig]} {value:.4g} {op} {limit:.4g}"


def not_made(reason: str) -> Twin:
    """No twin was attempted (``--no-onnx``) or none can exist (Edge-TPU-only import)."""
    return Twin("none", reason)


def conversion_failed(error: str) -> Twin:
    """The converter failed: withheld with its one-line error."""
    return Twin("withheld", error.strip().splitlines()[0] if error.strip() else "the converter failed")
