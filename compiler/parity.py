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
* The metric follows the task (:func:`choose_metric`; until the model states its task it is
  read from the output): ``classification`` (a score vector) needs top-1 agreement >=
  :data:`MIN_TOP1_AGREEMENT` and a largest score difference <= :data:`MAX_STEP_DIFF`
  quantization steps (quantized output) or :data:`FLOAT_TOLERANCE` (float output); ``exact``
  (integer class maps such as a segmentation's ArgMax: pixel agreement) needs
  :data:`MIN_EXACT_FRACTION` of the values equal; ``cosine`` (embeddings, keypoints, anything
  else) needs every sample's cosine similarity >= :data:`MIN_COSINE` and, for a quantized
  output, <= :data:`MAX_STEP_DIFF` steps.
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
# Class maps (a segmentation's ArgMax): the same pixel agreement we ask of top-1.
MIN_EXACT_FRACTION = 0.99
# Direction of embedding / keypoint / other outputs; faithful twins measured 1.0.
MIN_COSINE = 0.99

METRICS = ("classification", "exact", "cosine")


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
    """``classification`` for a classifier (or, with no task stated, a ``[1, K]`` score vector),
    ``exact`` for integer class maps, ``cosine`` for everything else."""
    class_map = np.issubdtype(out.dtype, np.integer) and not out.quantized
    if task == "classification" or (task is None and len(out.shape) == 2 and out.shape[1] > 1 and not class_map):
        return "classification"
    if class_map:
        return "exact"
    return "cosine"


class Comparison:
    """Reference and twin outputs, one sample at a time (raw tensors in the reference's output
    dtype); :meth:`figures` gives the measured values."""

    def __init__(self, out: IoSpec, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.out, self.metric = out, metric
        self.n = self.agree = self.equal = self.values = 0
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
        rf = self.out.dequantize(ref).reshape(-1).astype(np.float64)
        gf = self.out.dequantize(got.astype(ref.dtype)).reshape(-1).astype(np.float64)
        self.max_abs = max(self.max_abs, float(np.abs(gf - rf).max()) if rf.size else 0.0)
        self.cos_min = min(self.cos_min, cosine(rf, gf))
        if self.metric == "classification":
            # the twin agrees when its top class is one of the reference's top-scoring classes
            # or the other way round: quantized scores tie often
            self.agree += int(rf[int(gf.argmax())] == rf.max() or gf[int(rf.argmax())] == gf.max())

    def figures(self) -> dict[str, float]:
        f: dict[str, float] = {"exact_fraction": round(self.equal / self.values, 6) if self.values else 0.0}
        if self.metric == "exact":  # differences and directions of class ids mean nothing
            return f
        f.update(max_abs_diff=round(self.max_abs, 6), cosine_min=round(self.cos_min, 6))
        if self.out.quantized:
            f["max_step_diff"] = self.max_steps
        if self.metric == "classification":
            f["top1_agreement"] = round(self.agree / self.n, 6) if self.n else 0.0
        return f


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
    elif metric == "exact":
        at_least("exact_fraction", "min_exact_fraction", MIN_EXACT_FRACTION)
    else:
        at_least("cosine_min", "min_cosine", MIN_COSINE)
    if metric != "exact":
        if quantized:
            at_most("max_step_diff", "max_step_diff", MAX_STEP_DIFF)
        elif metric == "classification":
            at_most("max_abs_diff", "max_abs_diff", float_tolerance)
    where = f"on {n} {inputs} input" + ("" if n == 1 else "s")
    failed = [_say(c, False) for c in checks if not c[4]]
    limits = {lim: limit for _, lim, _, limit, _ in checks}
    if failed:
        return Twin("withheld", "; ".join(failed) + f" {where}", inputs, n, metric, figures, limits)
    return Twin("verified", ", ".join(_say(c, True) for c in checks) + f" {where}", inputs, n, metric, figures, limits)


_LABEL = {
    "top1_agreement": "top-1 agreement",
    "exact_fraction": "values equal",
    "cosine_min": "lowest cosine similarity",
    "max_step_diff": "largest difference",
    "max_abs_diff": "largest difference",
}


def _say(check: tuple[str, str, float, float, bool], ok: bool) -> str:
    fig, lim, value, limit, _ = check
    op = (">=" if lim.startswith("min_") else "<=") if ok else ("<" if lim.startswith("min_") else ">")
    if fig in ("top1_agreement", "exact_fraction"):
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
