"""What a served model expects and answers, derived (purely) from its manifest and ONNX graph.

``manifest.model.preprocess`` (docs/protocol.md) says how an image becomes the float tensor;
the ONNX input says the layout, dtype and which dimensions are fixed. The layout is inferred:
an image spec ``H x W x C`` fits an input ``[N, H, W, C]`` (NHWC, what Keras/tf2onnx emit) or
``[N, C, H, W]`` (NCHW, what PyTorch exports and the seed assumes). A spec that fits neither is
refused when the bundle loads, not when a request arrives.

The answer follows the bundle's signature (``manifest.model.signature``, :mod:`protocol.signature`):
a classifier's (or a bundle without one) is class scores; any other task's is its outputs by
name (:mod:`protocol.answers`). A twin whose outputs do not match the signature is refused.

The batch dimension: symbolic (``"unk__6"``, ``"N"``, ``None``) means any number of rows and the
model can be micro-batched; a fixed ``1`` means one row per ``session.run`` (rows are run one at a
time); another fixed ``B`` means requests must carry exactly ``B`` rows and are never merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from protocol import answers
from protocol.errors import BadPayload, Reason
from protocol.features import resize_filter
from protocol.labels import LabelMap, parse_labels
from protocol.signature import LEGACY_TASK, Signature, of_model

from .errors import BundleRefused

ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}
FLOAT_DTYPES = ("float32", "float16", "float64")

Dim = int | None  # None: dynamic


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int
    channels: int
    scale: float
    offset: float
    layout: str  # "nhwc" | "nchw"
    quant: tuple[float, int] | None = None  # integer inputs: q = round(f / scale) + zero_point
    resize: str = "bicubic"  # protocol.features.resize_filter

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        if self.layout == "nchw":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str
    batch: Dim  # None: dynamic
    sample: tuple[Dim, ...]  # dims after the batch dim

    @property
    def batchable(self) -> bool:
        return self.batch is None

    def describe(self) -> str:
        dims = ["N" if self.batch is None else str(self.batch)]
        dims += ["?" if d is None else str(d) for d in self.sample]
        return f"{self.dtype}[{', '.join(dims)}]"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    digest: str
    created: int
    task: str
    input: InputSpec
    outputs: tuple[str, ...]
    image: ImageSpec | None
    labels: tuple[str, ...]
    output_quant: tuple[float, int] | None = None  # integer first output: score = s * (q - zp)
    signature: Signature | None = None  # None: a bundle made before signatures (a classifier)
    label_map: LabelMap = field(default_factory=LabelMap)  # class id -> name, as the agent reads it

    @property
    def form(self) -> str:
        """The answer's form: ``classification`` (predictions/top), a task's own, or ``tensors``
        (:func:`protocol.answers.form`)."""
        return answers.form(self.signature)

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """Names indexed by output class (:meth:`LabelMap.as_list`), built once per model: a
        classifier's top-k ranks against them on every request, and building 1,000 names each
        time took 0.2-0.7 ms of a worker's GIL-holding time per request (docs/cloud.md)."""
        return tuple(self.label_map.as_list())

    @property
    def ref(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "digest": self.digest}


def _dim(value: Any) -> Dim:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def input_spec(name: str, ort_type: str, shape: Sequence[Any], source: str) -> InputSpec:
    dtype = ORT_DTYPES.get(ort_type)
    if dtype is None:
        raise BundleRefused(
            source,
            Reason.UNSUPPORTED_RUNTIME.value,
            f"ONNX input {name!r} has type {ort_type}; supported: {sorted(ORT_DTYPES)}",
        )
    if not shape:
        raise BundleRefused(
            source, Reason.UNSUPPORTED_RUNTIME.value, f"ONNX input {name!r} is a scalar; need a batch dimension"
        )
    return InputSpec(name, dtype, _dim(shape[0]), tuple(_dim(d) for d in shape[1:]))


def _fits(dims: tuple[Dim, ...], want: tuple[int, ...]) -> bool:
    return len(dims) == len(want) and all(d is None or d == w for d, w in zip(dims, want, strict=True))


def image_spec(preprocess: dict[str, Any], inp: InputSpec, source: str) -> ImageSpec | None:
    """The image spec of a bundle, or None for ``{"kind": "tensor"}`` (tensor API only)."""
    kind = preprocess.get("kind", "tensor")
    if kind == "tensor":
        return None
    if kind != "image":
        raise BundleRefused(source, Reason.MALFORMED.value, f"preprocess kind {kind!r} is not 'image' or 'tensor'")
    try:
        h, w, c = (int(preprocess[k]) for k in ("height", "width", "channels"))
        scale = float(preprocess.get("scale", 1.0))
        offset = float(preprocess.get("offset", 0.0))
        resize = resize_filter(preprocess)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleRefused(
            source,
            Reason.MALFORMED.value,
            f"preprocess {preprocess!r:.120} needs integer height/width/channels ({exc})",
        ) from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise BundleRefused(
            source, Reason.MALFORMED.value, f"preprocess {h}x{w}x{c}: channels must be 1 or 3, sizes >= 1"
        )
    quant = _quantization(preprocess, inp, source)
    if _fits(inp.sample, (h, w, c)):
        layout = "nhwc"
    elif _fits(inp.sample, (c, h, w)):
        layout = "nchw"
    else:
        raise BundleRefused(
            source,
            Reason.MALFORMED.value,
            f"preprocess {h}x{w}x{c} fits neither NHWC nor NCHW of ONNX input {inp.name!r} {inp.describe()}",
        )
    return ImageSpec(h, w, c, scale, offset, layout, quant, resize)


def _quantization(preprocess: dict[str, Any], inp: InputSpec, source: str) -> tuple[float, int] | None:
    """Float inputs: none. Integer inputs (TFLite-derived ONNX, e.g. Coral's models): the
    optional ``preprocess.input_quantization`` ``{"scale", "zero_point"}``; without it a uint8
    input takes the raw 0..255 pixels (what Coral's image classifiers expect)."""
    if inp.dtype in FLOAT_DTYPES:
        return None
    q = preprocess.get("input_quantization")
    if q is None:
        if inp.dtype == "uint8":
            return None
        raise BundleRefused(
            source,
            Reason.UNSUPPORTED_RUNTIME.value,
            f"ONNX input {inp.name!r} is {inp.dtype}: images need a float or uint8 input, "
            "or preprocess.input_quantization {scale, zero_point}",
        )
    try:
        qs, zp = float(q["scale"]), int(q["zero_point"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleRefused(
            source,
            Reason.MALFORMED.value,
            f"preprocess.input_quantization {q!r:.80} needs scale and zero_point ({exc})",
        ) from None
    if qs <= 0 or inp.dtype not in ("uint8", "int8"):
        raise BundleRefused(
            source,
            Reason.UNSUPPORTED_RUNTIME.value,
            f"input_quantization scale {qs} on a {inp.dtype} input is not supported",
        )
    return (qs, zp)


def model_spec(
    manifest_name: str,
    version: str,
    digest: str,
    created: int,
    model: dict[str, Any],
    inputs: Sequence[tuple[str, str, Sequence[Any]]],
    outputs: Sequence[str],
    labels: tuple[str, ...],
    source: str,
    output_shapes: Sequence[Sequence[Any]] | None = None,
) -> ModelSpec:
    """Everything the service needs to know about one bundle's ONNX twin, or BundleRefused.
    ``output_shapes`` (one per output) lets a bundle without a signature be checked to be a
    classifier, the only thing it can be answered as."""
    if len(inputs) != 1:
        raise BundleRefused(
            source,
            Reason.UNSUPPORTED_RUNTIME.value,
            f"ONNX model has {len(inputs)} inputs; the cloud serves single-input models",
        )
    inp = input_spec(*inputs[0], source=source)
    pre = model.get("preprocess", {"kind": "tensor"})
    if not isinstance(pre, dict):
        raise BundleRefused(source, Reason.MALFORMED.value, f"model.preprocess {pre!r:.80} is not an object")
    try:
        signature = of_model(model)
    except BadPayload as exc:
        raise BundleRefused(source, Reason.MALFORMED.value, str(exc)) from None
    if signature is not None and len(outputs) not in (len(signature.outputs), len(signature.answer_outputs)):
        raise BundleRefused(
            source,
            Reason.MALFORMED.value,
            f"ONNX model has {len(outputs)} outputs, the signature lists {len(signature.answer_outputs)} "
            f"({', '.join(t.name for t in signature.answer_outputs[:4])})",
        )
    if signature is None:
        problem = answers.unsigned_problem(output_shapes if output_shapes is not None else [[None]] * len(outputs))
        if problem is not None:
            raise BundleRefused(source, Reason.MALFORMED.value, f"ONNX model {problem}")
    task = signature.task if signature is not None else model.get("task", LEGACY_TASK)
    try:
        label_map = parse_labels("\n".join(labels))
    except BadPayload as exc:
        raise BundleRefused(source, Reason.MALFORMED.value, str(exc)) from None
    return ModelSpec(
        manifest_name,
        version,
        digest,
        created,
        str(task),
        inp,
        tuple(outputs),
        image_spec(pre, inp, source),
        labels,
        _output_quantization(model, source),
        signature,
        label_map,
    )


def _output_quantization(model: dict[str, Any], source: str) -> tuple[float, int] | None:
    """``model.onnx.output_quantization`` of an integer ONNX twin (protocol/features.py)."""
    onnx = model.get("onnx")
    q = onnx.get("output_quantization") if isinstance(onnx, dict) else None
    if q is None:
        return None
    try:
        qs, zp = float(q["scale"]), int(q["zero_point"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleRefused(
            source,
            Reason.MALFORMED.value,
            f"model.onnx.output_quantization {q!r:.80} needs scale and zero_point ({exc})",
        ) from None
    if qs <= 0:
        raise BundleRefused(source, Reason.MALFORMED.value, f"output_quantization scale must be > 0, got {qs}")
    return (qs, zp)
