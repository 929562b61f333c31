"""Task detection and preprocessing at import and build: the model's signature
(:mod:`protocol.signature`) from its real inputs and outputs, the labels that go with it, and the
image preprocess that feeds it. Pure functions of the :class:`~compiler.graph.Graph` (the
flatbuffer LiteRT loads, so Edge-TPU-compiled files are read too); every refusal is one
:class:`BadInput` line saying why.

Rules, in order (``--task`` forces the task; its outputs must still fit it):

* **Inputs.** An input with an output of the same dtype and shape (not the image) is a recurrent
  ``state`` pair, e.g. an LSTM detector's ``init_lstm_c`` -> ``lstm_c``. The first
  ``[1, H, W, 1|3]`` uint8/int8/float input is the ``image`` (int8 only with quantization
  parameters); any other input is a ``tensor``. A model whose request needs more than one input
  is refused: the local API and the cloud feed one.
* **Outputs** (the state ones aside): a ``TFLite_Detection_PostProcess`` op, or four outputs
  shaped ``[1, N, 4]``, ``[1, N]``, ``[1, N]``, ``[1]`` -> ``detection`` (boxes, classes, scores,
  count). Otherwise one output: integer without quantization ``[1, H, W]`` (an ArgMax) ->
  ``segmentation`` (mask); ``[1, H, W, C]`` with H or W > 1 and C > 1 -> ``segmentation``
  (logits); ``[1, 1, K, 3]`` -> ``keypoints``; ``[1, ..., N]`` (ones between) with labels ->
  ``classification``, without -> ``embedding``. Anything else is refused: pass ``--task``
  (``tensors`` returns the outputs as they are).
* **Labels** are required for classification (one per score), optional elsewhere: a
  segmentation's name the mask values (as many as the classes), keypoints' name the K points,
  detection's are stored for later. An embedding takes none.
* **Stateful**: ``state`` inputs, or variable tensors (a fused LSTM keeps its state in them).
* **Preprocess** (``manifest.model.preprocess``, float = pixel * scale + offset, then the input's
  own quantization): a quantized image input defaults to the identity on pixels (``scale = s``,
  ``offset = -(zp - zp_pixel) * s``); a **uint8 input without quantization parameters takes raw
  pixels** (scale 1, offset 0: the model's own normalization is inside it, e.g. MoveNet); a float
  input defaults to 1/255 (an assumption: the file does not say; pass ``--scale/--offset``).
  ``--scale/--offset`` are honoured whenever they can apply and refused with the reason when
  they cannot (raw-pixel input, no image input, ``--offset`` without ``--scale``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from protocol.signature import TASKS, Quantization, Signature, TensorSpec

from .errors import BadInput
from .graph import Graph, TensorInfo

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
_DTYPES = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "FLOAT64": "float64",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "BOOL": "bool",
}
_INTEGER = ("uint8", "int8", "int16", "uint16", "int32", "uint32", "int64")


def dtype_name(t: TensorInfo) -> str:
    return _DTYPES.get(t.dtype, t.dtype.lower())


def _quantization(t: TensorInfo, what: object) -> Quantization | None:
    if not t.scale or all(s == 0 for s in t.scale):
        return None
    if len(t.scale) > 1:
        raise BadInput(
            what,
            f"{t.name!r} is quantized per channel ({len(t.scale)} scales); model inputs and outputs must be per tensor",
        )
    return Quantization(float(t.scale[0]), int(t.zero_point[0]) if t.zero_point else 0)


def _spec(t: TensorInfo, role: str, what: object) -> TensorSpec:
    return TensorSpec(t.name, dtype_name(t), tuple(t.shape), role, _quantization(t, what))


def _shape(t: TensorInfo) -> str:
    return f"{dtype_name(t)}{list(t.shape)}"


def _is_image(t: TensorInfo) -> bool:
    s = t.shape
    if len(s) != 4 or s[0] != 1 or s[3] not in (1, 3) or s[1] < 2 or s[2] < 2:
        return False
    dtype = dtype_name(t)
    return dtype in ("uint8", "float32") or (dtype == "int8" and bool(t.scale))


def _roles(g: Graph) -> tuple[list[str], list[str]]:
    """Input and output roles before the task: image / state / tensor, state / None."""
    ins = [g.tensor(i) for i in g.inputs]
    outs = [g.tensor(i) for i in g.outputs]
    in_roles = ["tensor"] * len(ins)
    out_roles: list[str] = ["tensor"] * len(outs)
    image = next((n for n, t in enumerate(ins) if _is_image(t)), None)
    if image is not None:
        in_roles[image] = "image"
    taken: set[int] = set()
    for n, t in enumerate(ins):
        if n == image:
            continue
        pair = next(
            (m for m, o in enumerate(outs) if m not in taken and o.shape == t.shape and o.dtype == t.dtype), None
        )
        if pair is not None:
            in_roles[n] = out_roles[pair] = "state"
            taken.add(pair)
    return in_roles, out_roles


def _detection_roles(g: Graph, answer: list[int]) -> dict[int, str] | None:
    """Output index -> boxes/classes/scores/count, when the answer outputs are a detector's: the
    four outputs of a ``TFLite_Detection_PostProcess`` op in its order, or four outputs shaped
    ``[1, N, 4]``, ``[1, N]``, ``[1, N]``, ``[1]`` (classes before scores, as the op writes them)."""
    if len(answer) != 4:
        return None
    post = next((op for op in g.ops if op.custom == POSTPROCESS_OP), None)
    if post is not None and len(post.outputs) == 4 and {g.outputs[m] for m in answer} == set(post.outputs):
        names = dict(zip(post.outputs, ("boxes", "classes", "scores", "count"), strict=True))
        return {m: names[g.outputs[m]] for m in answer}
    roles: dict[int, str] = {}
    pairs = []
    for m in answer:
        s = g.tensor(g.outputs[m]).shape
        if len(s) == 3 and s[0] == 1 and s[2] == 4:
            roles[m] = "boxes"
        elif s == (1,):
            roles[m] = "count"
        elif len(s) == 2 and s[0] == 1:
            pairs.append(m)
        else:
            return None
    if len(pairs) != 2 or sorted(roles.values()) != ["boxes", "count"]:
        return None
    roles[pairs[0]], roles[pairs[1]] = "classes", "scores"
    if len({g.tensor(g.outputs[m]).shape[1] for m in roles if roles[m] != "count"}) != 1:
        return None
    return roles


def with_shapes(g: Graph, shapes: Mapping[int, tuple[int, ...]]) -> Graph:
    """``g`` with the shapes LiteRT gives its tensors once allocated (tensor index -> shape): the
    file leaves some empty, e.g. a ``TFLite_Detection_PostProcess`` op's outputs."""
    tensors = list(g.tensors)
    for i, shape in shapes.items():
        tensors[i] = replace(tensors[i], shape=tuple(int(d) for d in shape))
    return replace(g, tensors=tuple(tensors))


def _single_role(t: TensorInfo, labels: bool) -> tuple[str, str] | None:
    """(task, role) of a model with one answer output, or None when it cannot be told."""
    s, dtype = t.shape, dtype_name(t)
    if len(s) < 2 or s[0] != 1:
        return None
    if len(s) == 3 and dtype in _INTEGER and not t.scale and (s[1] > 1 or s[2] > 1):
        return "segmentation", "mask"
    if len(s) == 4 and s[1] == 1 and s[2] > 1 and s[3] == 3:
        return "keypoints", "keypoints"
    if len(s) == 4 and (s[1] > 1 or s[2] > 1) and s[3] > 1:
        return "segmentation", "logits"
    if all(d == 1 for d in s[1:-1]):
        return ("classification", "scores") if labels else ("embedding", "embedding")
    return None


def read_signature(g: Graph, labels: tuple[str, ...], task: str | None = None, what: object = "model") -> Signature:
    """The model's signature; :class:`BadInput` naming why when the task cannot be told or
    ``task`` does not fit the model."""
    if task is not None and task not in TASKS:
        raise BadInput("--task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    ins = [g.tensor(i) for i in g.inputs]
    outs = [g.tensor(i) for i in g.outputs]
    in_roles, out_roles = _roles(g)
    request_input(g, what)
    answer = [m for m, r in enumerate(out_roles) if r != "state"]
    if not answer:
        raise BadInput(what, "has no outputs besides its recurrent state")
    detected = _detect(g, answer, bool(labels))
    if task is None:
        if detected is None:
            shown = ", ".join(f"{outs[m].name!r} {_shape(outs[m])}" for m in answer[:4])
            raise BadInput(
                what,
                f"cannot tell its task from {len(answer)} output{'s' if len(answer) > 1 else ''} ({shown})"
                + ("" if labels or len(answer) > 1 else " without labels")
                + "; pass --task ("
                + ", ".join(TASKS)
                + ")",
            )
        task, roles = detected
    elif task == "tensors":
        roles = {}
    elif detected is not None and detected[0] == task:
        roles = detected[1]
    else:
        forced = _detect(g, answer, task == "classification")
        if forced is None or forced[0] != task:
            shown = ", ".join(f"{_shape(outs[m])}" for m in answer[:4])
            raise BadInput("--task", f"{task} does not fit the model's outputs ({shown})")
        roles = forced[1]
    for m, role in roles.items():
        out_roles[m] = role
    stateful = "state" in in_roles or g.stateful
    return Signature(
        task,
        tuple(_spec(t, r, what) for t, r in zip(ins, in_roles, strict=True)),
        tuple(_spec(t, r, what) for t, r in zip(outs, out_roles, strict=True)),
        stateful,
    )


def request_input(g: Graph, what: object = "model") -> TensorSpec:
    """The one input a request fills (the others are recurrent state); :class:`BadInput` when
    the model needs more than one per request."""
    in_roles, _ = _roles(g)
    request = [(g.tensor(i), r) for i, r in zip(g.inputs, in_roles, strict=True) if r != "state"]
    if len(request) != 1:
        shown = ", ".join(f"{t.name!r} {_shape(t)}" for t, _ in request[:4])
        raise BadInput(what, f"needs {len(request)} inputs per request ({shown}); the agent and the cloud feed one")
    return _spec(request[0][0], request[0][1], what)


def _detect(g: Graph, answer: list[int], labels: bool) -> tuple[str, dict[int, str]] | None:
    det = _detection_roles(g, answer)
    if det is not None:
        return "detection", det
    if len(answer) != 1:
        return None
    one = _single_role(g.tensor(g.outputs[answer[0]]), labels)
    return None if one is None else (one[0], {answer[0]: one[1]})


def classes(sig: Signature, g: Graph) -> int | None:
    """How many classes the answer distinguishes (what labels must count), when the model says."""
    if sig.task == "classification":
        return sig.answer_outputs[0].size
    if sig.task == "segmentation":
        out = sig.answer_outputs[0]
        if out.role == "logits":
            return out.shape[-1]
        producer = next((op for op in g.ops if op.builtin == "ARG_MAX" and _named(g, op.outputs, out.name)), None)
        if producer is not None and producer.inputs:
            return g.tensor(producer.inputs[0]).shape[-1]
    if sig.task == "keypoints":
        return sig.answer_outputs[0].shape[2]
    return None


def _named(g: Graph, indices: tuple[int, ...], name: str) -> bool:
    return any(g.tensor(i).name == name for i in indices)


def check_labels(sig: Signature, g: Graph, labels: tuple[str, ...], what: object = "labels") -> None:
    """Labels must fit the task: one per class where the model says how many."""
    if sig.task == "classification" and not labels:
        raise BadInput(what, "a classifier needs --labels (one per class score)")
    if sig.task == "embedding" and labels:
        raise BadInput(what, "an embedding has no classes; import it without --labels")
    if not labels:
        return
    n = classes(sig, g)
    if n is not None and len(labels) != n:
        unit = {"classification": "outputs", "keypoints": "keypoints"}.get(sig.task, "classes")
        raise BadInput(what, f"{len(labels)} labels but the model has {n} {unit}")


def preprocess(t: TensorSpec, scale: float | None, offset: float | None) -> dict[str, Any]:
    """The manifest's preprocess for the request input ``t`` (:func:`request_input`), with
    ``--scale/--offset`` honoured or refused with the reason."""
    if offset is not None and scale is None:
        raise BadInput("--offset", "needs --scale too (float = pixel * scale + offset)")
    for flag, v in (("--scale", scale), ("--offset", offset)):
        if v is not None and not math.isfinite(v):
            raise BadInput(flag, f"must be a finite number, got {v}")
    if scale is not None and scale == 0:
        raise BadInput("--scale", "must not be 0 (every pixel would be the same input)")
    if t.role != "image":
        if scale is not None:
            raise BadInput(
                "--scale", f"applies to image inputs; model input {t.describe()} is a tensor (send it as it is)"
            )
        return {"kind": "tensor"}
    q = t.quantization
    if t.dtype == "uint8" and q is None:
        if scale is not None and (scale != 1.0 or (offset or 0.0) != 0.0):
            raise BadInput(
                "--scale",
                f"model input {t.describe()} is uint8 without quantization parameters: it takes raw pixels "
                "0-255 and normalizes them itself, so --scale/--offset cannot apply",
            )
        scale, offset = 1.0, 0.0
    elif scale is None:
        if q is not None:
            pixel_zp = 0 if t.dtype == "uint8" else -128
            scale, offset = q.scale, -(q.zero_point - pixel_zp) * q.scale
        else:
            scale, offset = 1.0 / 255.0, 0.0
    return {
        "kind": "image",
        "height": t.shape[1],
        "width": t.shape[2],
        "channels": t.shape[3],
        "scale": float(scale),
        "offset": float(offset or 0.0),
    }
