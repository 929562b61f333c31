"""ONNX in (what ``torch.onnx.export`` writes): read it, carry its preprocessing, convert it.

Why onnx2tf: docs/adr/0012-pytorch-onnx-import.md (measured against litert-torch and
ai-edge-quantizer). The route is ONNX -> onnx2tf -> SavedModel (NHWC) -> the Keras path's float
and full-int8 TFLite; the **original ONNX is the bundle's twin** (the cloud serves the model the
user trained), verified against the float TFLite like every twin (:mod:`compiler.parity`).

Layout. onnx2tf rewrites a rank-4 input from NCHW (PyTorch's) to NHWC (the Edge TPU's and the
agent's); every other rank is kept. :func:`tflite_input_shape` predicts it and the pipeline
checks the converted model against the prediction (never a silently transposed input).
Validation/calibration ``x`` given as float tensors may be in either layout: :func:`to_tflite_layout`
moves NCHW samples to NHWC; the ONNX twin is fed NCHW again (:class:`compiler.inference.OnnxRunner`).

Preprocessing. A device and the cloud both compute ``pixel * scale + offset`` on RGB pixels
(protocol/features.py), one scale and offset for all channels. A PyTorch model trained on
``Normalize(mean, std)`` with one value per channel, or on BGR, cannot be described by that, so
:func:`fold_preprocess` prepends one 1x1 ``Conv`` (``edgefleet_preprocess``) to the graph that
takes ``pixel / 255`` in RGB order and gives what the model was trained on; the bundle's
preprocess is then ``scale 1/255, offset 0``. A uniform mean/std in RGB order needs no change to
the graph: it becomes the scale and offset (:func:`plan_preprocess`), and the twin is the
user's file byte for byte.

The parent side (everything but :func:`to_savedmodel`) needs only the ``onnx`` package.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput

FOLD_NODE = "edgefleet_preprocess"
FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64"}  # onnx.TensorProto enum values


@dataclass(frozen=True)
class OnnxSource:
    """One ONNX model as the compiler takes it: one float input with a static sample shape and
    one output."""

    data: bytes
    input_name: str
    input_shape: tuple[int | None, ...]  # batch may be None (dynamic)
    output_name: str
    ops: tuple[str, ...]  # sorted op types of the graph
    opset: int

    @property
    def layout(self) -> str:
        """``nchw`` for a rank-4 input (onnx2tf moves it to NHWC), else ``as_is``."""
        return "nchw" if len(self.input_shape) == 4 else "as_is"

    def image_spec(self) -> tuple[tuple[int, int], int] | None:
        """((H, W), C) of a rank-4 NCHW image input with 1 or 3 channels, else None."""
        if self.layout != "nchw":
            return None
        _, c, h, w = self.input_shape
        if c not in (1, 3) or h is None or w is None:
            return None
        return (int(h), int(w)), int(c)


def read_file(path: Path) -> OnnxSource:
    """An ``.onnx`` file with its weights: ``torch.onnx.export`` (dynamo) writes them beside it as
    ``NAME.onnx.data``; they are loaded and embedded so the twin is one self-contained file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as exc:
        raise BadInput(
            path, f"its external weights are missing ({exc.filename or exc}); keep NAME.onnx.data beside it"
        ) from None
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise BadInput(path, f"not an ONNX model ({type(exc).__name__}: {str(exc)[:160]})") from None
    return read(model.SerializeToString(), path)


def read(data: bytes, what: object) -> OnnxSource:
    """Parse and check an ONNX file; :class:`BadInput` names what the compiler cannot take."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise BadInput(what, f"not an ONNX model ({type(exc).__name__}: {str(exc)[:160]})") from None
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise BadInput(
            what,
            f"has {len(inputs)} inputs and {len(g.output)} outputs; build takes a model with one input and one output",
        )
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    if elem not in FLOAT_TYPES:
        raise BadInput(what, f"input {inp.name!r} has ONNX element type {elem}; build takes a float input")
    dims: list[int | None] = []
    for i, d in enumerate(inp.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(None)  # a dynamic batch: converted with batch 1, the twin keeps it
        else:
            raise BadInput(
                what,
                f"input {inp.name!r} dimension {i} is dynamic ({d.dim_param or '?'}); fixed input shapes are required "
                "(export with a fixed-size sample and no dynamic_axes other than the batch)",
            )
    if len(dims) < 2:
        raise BadInput(what, f"input {inp.name!r} has shape {dims}; expected (batch, ...)")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    ops = tuple(sorted({n.op_type for n in g.node}))
    return OnnxSource(data, inp.name, tuple(dims), g.output[0].name, ops, int(opset))


def tflite_input_shape(src: OnnxSource) -> tuple[int, ...]:
    """The converted model's input shape (batch 1) as onnx2tf makes it."""
    shape = (1,) + tuple(int(d) for d in src.input_shape[1:] if d is not None)
    if src.layout == "nchw":
        n, c, h, w = shape
        return (n, h, w, c)
    return shape


def to_tflite_layout(x: np.ndarray, src: OnnxSource, what: object) -> np.ndarray:
    """Float samples in the ONNX input's layout (or already NHWC) -> the TFLite input's layout."""
    want = tflite_input_shape(src)[1:]
    onnx_sample = tuple(int(d) for d in src.input_shape[1:] if d is not None)
    if tuple(x.shape[1:]) == want:
        return x
    if src.layout == "nchw" and tuple(x.shape[1:]) == onnx_sample:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    raise BadInput(
        what,
        f"samples have shape {list(x.shape[1:])}; the ONNX input {src.input_name!r} takes {list(onnx_sample)}"
        + (f" (or {list(want)} as NHWC)" if src.layout == "nchw" else ""),
    )


@dataclass(frozen=True)
class PreprocessPlan:
    """How the device's ``pixel * scale + offset`` on RGB reaches what the model was trained on."""

    scale: float
    offset: float
    fold: dict[str, Any] | None  # {"mean": [..], "std": [..], "channel_order": "rgb"|"bgr"} or None

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset, "folded_into_graph": self.fold}


def plan_preprocess(
    mean: Sequence[float] | None, std: Sequence[float] | None, channel_order: str, channels: int
) -> PreprocessPlan | None:
    """Pure: the preprocess for ``Normalize(mean, std)`` on ``pixel / 255`` in ``channel_order``.

    None when nothing was asked (the caller's --scale/--offset stand). One value of mean/std
    applies to every channel; a uniform mean/std in RGB order is a scale and offset; per-channel
    values or BGR are folded into the graph (:func:`fold_preprocess`)."""
    if mean is None and std is None and channel_order == "rgb":
        return None
    if channel_order not in ("rgb", "bgr"):
        raise BadInput("--channel-order", f"must be rgb or bgr, got {channel_order!r}")
    if channel_order == "bgr" and channels != 3:
        raise BadInput("--channel-order", f"bgr needs a 3-channel input, the model has {channels}")
    m = _per_channel("--mean", mean, 0.0, channels)
    s = _per_channel("--std", std, 1.0, channels)
    if any(v <= 0 or not math.isfinite(v) for v in s):
        raise BadInput("--std", f"every value must be a finite number > 0, got {list(s)}")
    if len(set(m)) == 1 and len(set(s)) == 1 and channel_order == "rgb":
        return PreprocessPlan(1.0 / (255.0 * s[0]), -m[0] / s[0], None)
    return PreprocessPlan(1.0 / 255.0, 0.0, {"mean": list(m), "std": list(s), "channel_order": channel_order})


def _per_channel(flag: str, values: Sequence[float] | None, default: float, channels: int) -> tuple[float, ...]:
    if values is None:
        return (default,) * channels
    vals = tuple(float(v) for v in values)
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise BadInput(flag, f"give 1 or {channels} values (one per channel), got {len(vals)}: {list(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise BadInput(flag, f"values must be finite numbers, got {list(vals)}")
    return vals


def fold_preprocess(src: OnnxSource, fold: dict[str, Any]) -> OnnxSource:
    """The same model with one 1x1 Conv in front: ``pixel/255`` in RGB -> ``(v - mean) / std``
    in the model's channel order. Weights of the user's graph are untouched."""
    import onnx
    from onnx import helper, numpy_helper

    if src.layout != "nchw":
        raise BadInput(
            "--mean/--std",
            f"per-channel normalization and bgr are folded into NCHW image inputs only; input {src.input_name!r} "
            f"has shape {list(src.input_shape)}",
        )
    c = int(src.input_shape[1] or 0)
    mean = np.asarray(fold["mean"], np.float32)
    std = np.asarray(fold["std"], np.float32)
    perm = [2, 1, 0] if fold["channel_order"] == "bgr" else list(range(c))
    w = np.zeros((c, c, 1, 1), np.float32)
    for out_ch, in_ch in enumerate(perm):  # model channel out_ch is RGB channel in_ch
        w[out_ch, in_ch, 0, 0] = 1.0 / std[out_ch]
    b = (-mean / std).astype(np.float32)
    model = onnx.load_from_string(src.data)
    g = model.graph
    inner = src.input_name + "__normalized"
    for node in g.node:
        node.input[:] = [inner if n == src.input_name else n for n in node.input]
    g.initializer.extend([numpy_helper.from_array(w, FOLD_NODE + "_w"), numpy_helper.from_array(b, FOLD_NODE + "_b")])
    conv = helper.make_node("Conv", [src.input_name, FOLD_NODE + "_w", FOLD_NODE + "_b"], [inner], name=FOLD_NODE)
    g.node.insert(0, conv)
    onnx.checker.check_model(model)
    return read(model.SerializeToString(), src.input_name)


def nchw_front(src: OnnxSource) -> OnnxSource:
    """An NHWC graph (tf2onnx of a float .tflite) with an NCHW input and one Transpose in front:
    onnx2tf takes every rank-4 input as NCHW, and so the converted model keeps its NHWC input
    (the two transposes cancel)."""
    import onnx
    from onnx import helper

    n, h, w, c = src.input_shape
    model = onnx.load_from_string(src.data)
    g = model.graph
    inner = src.input_name + "__nhwc"
    for node in g.node:
        node.input[:] = [inner if x == src.input_name else x for x in node.input]
    inp = next(i for i in g.input if i.name == src.input_name)
    dims = inp.type.tensor_type.shape.dim
    for d, v in zip(dims, (n, c, h, w), strict=True):
        if v is not None:
            d.dim_value = v
    g.node.insert(0, helper.make_node("Transpose", [src.input_name], [inner], perm=[0, 2, 3, 1], name="edgefleet_nhwc"))
    onnx.checker.check_model(model)
    return read(model.SerializeToString(), src.input_name)


# Ops int8 TFLite has no kernel for, as ONNX writes them, and what to do instead. The converter
# would fail on them after minutes of onnx2tf with a page of TensorFlow's text (exit 5).
INT8_UNSUPPORTED = {
    "Erf": "exact GELU (torch nn.GELU() / F.gelu) or erf; use the tanh approximation, "
    "nn.GELU(approximate='tanh'), which int8 TFLite runs",
}


def int8_blockers(ops: Sequence[str]) -> list[str]:
    """Pure: one line per op of ``ops`` that int8 TFLite cannot run, naming what to do."""
    return [f"op {op} ({INT8_UNSUPPORTED[op]})" for op in ops if op in INT8_UNSUPPORTED]


def explicit_maxpool_pads(data: bytes) -> tuple[bytes, list[str]]:
    """The same ONNX with every padded ``MaxPool`` split into ``Pad`` + unpadded ``MaxPool``;
    returns the model and the rewritten node names.

    Why: onnx2tf pads a MaxPool with float32's lowest value (-3.4e38). Full-int8 PTQ gives that
    constant and the tensor it pads one scale, ~1e36: every activation of the layer becomes the
    zero point (a dead model), and in ResNet-18 the next ops' requantization multipliers overflow,
    so LiteRT refuses to prepare it (docs/adr/0012). Both pads below are exact for max pooling:
    zeros when the input cannot be negative (Relu, Clip with min >= 0: a TFLite PAD, which the
    Edge TPU maps), else ``edge`` (each padded cell repeats the nearest real one, which every
    window reaching the pad also covers since pad < kernel). Nodes with ceil_mode, dilations,
    auto_pad or an indices output are left as they are."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(data)
    g = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def non_negative(name: str) -> bool:
        p = producer.get(name)
        if p is None:
            return False
        if p.op_type == "Relu":
            return True
        if p.op_type == "Clip":
            lo = [a.f for a in p.attribute if a.name == "min"]
            if len(p.input) > 1 and p.input[1]:
                lo = [float(inits[p.input[1]])] if p.input[1] in inits else []
            return bool(lo) and lo[0] >= 0
        return False

    nodes: list[Any] = []
    done: list[str] = []
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        pads = [int(v) for v in attrs.get("pads", [])]
        plain = (
            n.op_type == "MaxPool"
            and any(pads)
            and len(n.output) == 1
            and not attrs.get("ceil_mode", 0)
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and all(int(d) == 1 for d in attrs.get("dilations", [1]))
        )
        if not plain:
            nodes.append(n)
            continue
        k = len(pads) // 2
        full = [0, 0, *pads[:k], 0, 0, *pads[k:]]
        mode = "constant" if non_negative(n.input[0]) else "edge"
        padded = f"{n.output[0]}__edgefleet_padded"
        name = n.name or n.output[0]
        if opset >= 11:
            g.initializer.append(numpy_helper.from_array(np.asarray(full, np.int64), padded + "_pads"))
            pad = helper.make_node("Pad", [n.input[0], padded + "_pads"], [padded], mode=mode, name=name + "_pad")
        else:
            pad = helper.make_node("Pad", [n.input[0]], [padded], mode=mode, pads=full, name=name + "_pad")
        del n.attribute[:]
        n.attribute.extend(helper.make_attribute(a, v) for a, v in attrs.items() if a != "pads")
        n.input[0] = padded
        nodes += [pad, n]
        done.append(f"{name} ({mode})")
    if not done:
        return data, []
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString(), done


# ----------------------------------------------------------------------------- child side


class ConversionRefused(Exception):
    """onnx2tf could not convert the model; the message names the op or error it reported."""


def to_savedmodel(onnx_path: Path, out_dir: Path, samples: np.ndarray) -> Path:
    """ONNX -> SavedModel (NHWC, batch 1) with onnx2tf. Runs only in the conversion child.

    ``samples``: calibration inputs in the TFLite (NHWC) layout. onnx2tf checks its conversion
    of a 3-channel image model on sample images it downloads; it is given these instead (the
    user's own data, and no network)."""
    import io

    import onnx2tf
    import onnx2tf.onnx2tf as o2t_main

    data, _ = explicit_maxpool_pads(onnx_path.read_bytes())
    onnx_path = out_dir.parent / "onnx2tf_input.onnx"
    onnx_path.write_bytes(data)
    own = np.ascontiguousarray(samples[:20], dtype=np.float32)
    o2t_main.download_test_image_data = lambda: own

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), _stop_after_savedmodel():
            onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(out_dir),
                batch_size=1,
                not_use_onnxsim=True,
                non_verbose=True,
                copy_onnx_input_output_names_to_tflite=True,
            )
    except _SavedModelWritten:
        pass
    except SystemExit:  # onnx2tf reports an unconvertible op and exits
        raise ConversionRefused(f"onnx2tf cannot convert it: {_last_error(buf.getvalue())}") from None
    except Exception as exc:
        raise ConversionRefused(
            f"onnx2tf cannot convert it: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from None
    if not (out_dir / "saved_model.pb").exists():
        raise ConversionRefused(f"onnx2tf wrote no SavedModel: {_last_error(buf.getvalue())}")
    return out_dir


class _SavedModelWritten(BaseException):
    """Raised where onnx2tf starts its own TFLite conversions (float32, then float16), after the
    SavedModel is written: we make ours from the SavedModel, and theirs took as long again
    (ResNet-18). A BaseException, so onnx2tf's ``except Exception`` fallbacks let it through."""


@contextlib.contextmanager
def _stop_after_savedmodel() -> Iterator[None]:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter
    saved = conv.__dict__["from_keras_model"], conv.__dict__["from_concrete_functions"]

    def stop(*_args: object, **_kw: object) -> None:
        raise _SavedModelWritten()

    conv.from_keras_model = stop
    conv.from_concrete_functions = stop
    try:
        yield
    finally:
        conv.from_keras_model, conv.from_concrete_functions = saved


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    picked = (errs or lines or ["(no output)"])[-2:]
    return " | ".join(picked)[-400:]
