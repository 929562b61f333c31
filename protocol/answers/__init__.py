"""What a prediction answers, decided and built in one place for the agent's local API and the
cloud fallback, so an app gets the same document from either (docs/models.md has the schema per
task with examples).

Functions here are duck-typed over numpy arrays (``.reshape``, ``.astype``, ``.argsort``,
``.dtype``, ``.shape``) but never import numpy, so :mod:`protocol` stays dependency-free; the
arrays stay arrays in the document (the servers write them with orjson's numpy support).

One form per task, chosen by :func:`form` from the bundle's signature (:mod:`protocol.signature`);
every form has ``task``:

* ``classification`` (a classifier, or a bundle without a signature: what every bundle was
  served as before signatures existed)::

      {"task": "classification", "predictions": [[scores]], "top": [{"index", "label", "score"} x top_k]}

  ``predictions`` are the dequantized class scores as the seed's ``/predict`` had them: ``[N, K]``,
  one row per input (one image per request, so one row), from the agent and the cloud alike;
  ``top`` ranks the first row.
* ``detection``: ``{"detections": [{"label", "class_id", "score", "box", "box_normalized"}],
  "image", "score_threshold", "max_detections"}`` (:func:`tasks.detection`);
* ``segmentation``: ``{"classes": [{"class_id", "label", "pixels", "fraction"}], "mask_size",
  "image"[, "mask"]}`` (:func:`tasks.segmentation`);
* ``keypoints``: ``{"keypoints": [{"name", "score", "x", "y", "x_normalized", "y_normalized"}],
  "score", "image"}`` (:func:`tasks.keypoints`);
* ``embedding``: ``{"embedding": [floats], "dimensions", "norm"}`` (:func:`tasks.embedding`);
* ``tensors`` (the ``tensors`` task, an unknown task, or a signature without the outputs its task
  needs; a correct answer, just not interpreted)::

      {"task": "tensors",
       "tensors": [{"name": "StatefulPartitionedCall:0", "role": "tensor",
                    "dtype": "float32", "shape": [1, 8], "values": [[...]]}]}

  every output but the recurrent ``state`` ones, in the model's order, by name and role,
  dequantized (``scale * (q - zero_point)``; an output without quantization, such as a
  segmentation's int64 ArgMax, keeps its values), with the shape of ``values``.

``raw=true`` adds ``"raw"``: every answer output as the model gave it (quantized), in the tensors
entries' form. A non-classifier's output is never put in ``predictions`` or ranked in ``top``:
its numbers are not class scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BadParameter
from ..labels import LabelMap
from ..signature import Signature, TensorSpec
from . import tasks
from .params import TOP_K, Params, parse_params

__all__ = ["BadParameter", "Params", "parse_params", "LabelMap", "build", "form", "TOP_K"]

CLASSIFICATION = "classification"
TENSORS = "tensors"
_NEEDS = {  # output roles a task's answer is built from (the first of each group that is there)
    "detection": (("boxes",), ("scores",)),
    "segmentation": (("mask", "logits"),),
    "keypoints": (("keypoints",),),
    "embedding": (("embedding",),),
}


def form(signature: Signature | None) -> str:
    """The answer form: ``classification`` for a classifier or a bundle without a signature;
    the task's own for detection, segmentation, keypoints and embedding when the signature has
    the outputs it needs; else ``tensors``."""
    if signature is None or signature.classification:
        return CLASSIFICATION
    needs = _NEEDS.get(signature.task)
    if needs is None:
        return TENSORS
    roles = {t.role for t in signature.answer_outputs}
    if signature.task == "keypoints":
        kp = signature.output("keypoints")
        if kp is None or len(kp.shape) < 2 or kp.shape[-1] != 3:
            return TENSORS
    return signature.task if all(roles.intersection(group) for group in needs) else TENSORS


def unsigned_problem(output_shapes: Sequence[Sequence[Any]]) -> str | None:
    """Why a bundle without a signature cannot be answered, or None. Such a bundle is answered as
    a classifier (all bundles were, before signatures), which is right only for a model with one
    output that is one vector of class scores (``[N]`` or ``[1, N]``; a dimension that is not a
    number is the batch). A segmenter's mask or a pose model's keypoints forced through an old
    import would otherwise be ranked as class scores."""
    if len(output_shapes) != 1:
        return (
            f"has {len(output_shapes)} outputs and its bundle no model signature, so it would be answered as a "
            "classifier; re-import it (edgefleet-compile import) to get a signature"
        )
    dims = [d for d in output_shapes[0] if isinstance(d, int) and d != 1]
    if len(dims) > 1:
        return (
            f"output {list(output_shapes[0])} is not one vector of class scores and its bundle has no model "
            "signature, so it would be answered as a classifier; re-import it (edgefleet-compile import) to get one"
        )
    return None


def top(scores: Any, labels: Sequence[str], k: int = TOP_K) -> list[dict[str, Any]]:
    """The ``k`` best classes of one row of scores, best first (ties: the lower index)."""
    row = scores.reshape(-1).astype("float64")  # uint8 scores must not wrap when negated
    idx = (-row).argsort(kind="stable")[:k]
    return [
        {"index": int(i), "label": labels[i] if i < len(labels) else str(int(i)), "score": float(row[i])} for i in idx
    ]


def classification(scores: Any, labels: Sequence[str], *, k: int = TOP_K, given: bool = False) -> dict[str, Any]:
    """``{"task", "predictions", "top"}`` with ``predictions`` always ``[N, K]``: ``scores`` are
    dequantized, one input's (flat, the agent's) or a batch's (the model's output, ``[N, ...]``,
    the cloud's), so either server answers the same shape; the first row is ranked. A ``k`` the
    request ``given`` over the class count is refused (:class:`BadParameter` ``top_k``); the
    default is cut to the classes."""
    rows = scores.reshape(1, -1) if len(scores.shape) < 2 else scores.reshape(scores.shape[0], -1)
    n = int(rows.shape[1])
    if given and k > n:
        raise BadParameter("top_k", k, f"must be in 1..{n} (the model has {n} classes)")
    return {"task": CLASSIFICATION, "predictions": rows, "top": top(rows[0], labels, k)}


def dequantize(spec: TensorSpec, value: Any) -> Any:
    """An output's real values: ``scale * (q - zero_point)`` for an integer array with
    quantization, the array itself otherwise (already real, or class ids)."""
    q = spec.quantization
    if q is None or value.dtype.kind not in "iu":
        return value
    return ((value.astype("float32") - q.zero_point) * q.scale).astype("float32")


def tensors(signature: Signature, outputs: Sequence[Any]) -> dict[str, Any]:
    """``{"task", "tensors"}`` from the model's raw outputs: all of them in the signature's order,
    or only the answer ones (an ONNX twin has no state outputs). Raises ``ValueError`` when the
    count fits neither (a bundle whose model does not match its signature)."""
    return {
        "task": signature.task,
        "tensors": [_entry(s, dequantize(s, v)) for s, v in answer_outputs(signature, outputs)],
    }


def _entry(spec: TensorSpec, value: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "role": spec.role,
        "dtype": str(value.dtype),
        "shape": list(value.shape),
        "values": value,
    }


def answer_outputs(signature: Signature, outputs: Sequence[Any]) -> list[tuple[TensorSpec, Any]]:
    """The answer outputs (all but ``state``) with their specs, from all of the model's outputs
    in the signature's order or only the answer ones (an ONNX twin has no state outputs). Raises
    ``ValueError`` when the count fits neither (a bundle whose model does not match its signature)."""
    specs = signature.outputs
    if len(outputs) != len(specs):
        specs = signature.answer_outputs
    if len(outputs) != len(specs):
        raise ValueError(
            f"the model gave {len(outputs)} outputs, its signature lists {len(signature.outputs)} "
            f"({len(signature.answer_outputs)} besides state)"
        )
    return [(spec, value) for spec, value in zip(specs, outputs, strict=True) if spec.role != "state"]


def raw(signature: Signature, outputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Every answer output as the model gave it (quantized), for ``raw=true``; one output given
    (a classifier's scores, all a server computes for it) is the first answer output."""
    if len(outputs) == 1 and signature.answer_outputs:
        return [_entry(signature.answer_outputs[0], outputs[0])]
    return [_entry(s, v) for s, v in answer_outputs(signature, outputs)]


def input_size(signature: Signature) -> tuple[int, int]:
    """(width, height) of the request input, ``[1, H, W, C]`` or ``[1, H, W]``: the "image" of a
    tensor request."""
    shape = signature.request_inputs[0].shape if signature.request_inputs else ()
    if len(shape) >= 3:
        return int(shape[2]), int(shape[1])
    return (int(shape[-1]) if shape else 1, 1)


def check_params(signature: Signature | None, params: Params) -> None:
    """What can be refused before the model runs: a parameter of another task, ``top_k`` over
    the classes, ``max_detections`` over the boxes (:class:`BadParameter`). A server calls this
    first, so a refused request never advances a session's state."""
    how = form(signature)
    params.check_task(how)
    if signature is None:
        return
    if how == CLASSIFICATION and "top_k" in params.given:
        scores = signature.output("scores") or signature.answer_outputs[0]
        if params.top_k > scores.size:
            raise BadParameter(
                "top_k", params.top_k, f"must be in 1..{scores.size} (the model has {scores.size} classes)"
            )
    boxes = signature.output("boxes")
    if how == "detection" and boxes is not None and params.max_detections is not None and len(boxes.shape) >= 2:
        n = boxes.size // 4
        if params.max_detections > n:
            raise BadParameter(
                "max_detections", params.max_detections, f"must be in 1..{n} (the model gives {n} boxes)"
            )


def build(
    signature: Signature, outputs: Sequence[Any], labels: LabelMap, params: Params, size: tuple[int, int] | None
) -> dict[str, Any]:
    """The answer of a model that is not a classifier, in its task's form (:func:`form`), from
    its outputs (all of them, or only the answer ones) and the original image's (width, height)
    (None for a tensor request: the request input's). Raises :class:`BadParameter` for a
    parameter of another task or out of the model's range, ``ValueError`` for outputs that do
    not fit the signature."""
    how = form(signature)
    params.check_task(how)
    size = size if size is not None else input_size(signature)
    named = answer_outputs(signature, outputs)
    real = {s.role: dequantize(s, v) for s, v in reversed(named)}  # the first output of a role wins
    if how == "detection":
        doc = tasks.detection(
            real["boxes"], real.get("classes"), real["scores"], real.get("count"), labels, params, size
        )
    elif how == "segmentation":
        doc = tasks.segmentation(real["mask"] if "mask" in real else real["logits"], labels, params, size)
    elif how == "keypoints":
        doc = tasks.keypoints(real["keypoints"], labels, size)
    elif how == "embedding":
        doc = tasks.embedding(real["embedding"])
    else:
        doc = {"task": signature.task, "tensors": [_entry(s, dequantize(s, v)) for s, v in named]}
    if params.raw:
        doc["raw"] = [_entry(s, v) for s, v in named]
    return doc
