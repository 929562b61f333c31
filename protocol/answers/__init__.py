"""What a prediction answers, decided and built in one place for the agent's local API and the
cloud fallback, so an app gets the same document from either (docs/models.md).

Functions here are duck-typed over numpy arrays (``.reshape``, ``.astype``, ``.argsort``,
``.dtype``, ``.shape``) but never import numpy, so :mod:`protocol` stays dependency-free; the
arrays stay arrays in the document (the servers write them with orjson's numpy support).

Two forms, chosen by :func:`form` from the bundle's signature (:mod:`protocol.signature`):

* ``classification`` (a classifier, or a bundle without a signature: what every bundle was
  served as before signatures existed)::

      {"predictions": [scores], "top": [{"index", "label", "score"} x 5]}

  ``predictions`` are the dequantized class scores: flat on the agent (one image per request),
  ``[N, K]`` on the cloud (the seed's ``/predict`` answered ``logits.tolist()`` of a batch).
* ``tensors`` (every other task, until per-task answers exist; a correct answer, just not
  interpreted)::

      {"task": "keypoints",
       "tensors": [{"name": "StatefulPartitionedCall:0", "role": "keypoints",
                    "dtype": "float32", "shape": [1, 1, 17, 3], "values": [[[[y, x, score], ...]]]}]}

  every output but the recurrent ``state`` ones, in the model's order, by name and role,
  dequantized (``scale * (q - zero_point)``; an output without quantization, such as a
  segmentation's int64 ArgMax, keeps its values), with the shape of ``values``. A non-classifier's
  output is never put in ``predictions`` or ranked in ``top``: its numbers are not class scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .signature import Signature, TensorSpec

CLASSIFICATION = "classification"
TENSORS = "tensors"
TOP_K = 5


def form(signature: Signature | None) -> str:
    """``classification`` for a classifier or a bundle without a signature, else ``tensors``."""
    return CLASSIFICATION if signature is None or signature.classification else TENSORS


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


def classification(scores: Any, labels: Sequence[str], *, batch: bool = False, k: int = TOP_K) -> dict[str, Any]:
    """``{"predictions", "top"}``; ``scores`` are dequantized, one row (flat) or, with ``batch``,
    ``[N, K]`` whose first row is ranked."""
    return {"predictions": scores, "top": top(scores[0] if batch else scores, labels, k)}


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
    specs = signature.outputs
    if len(outputs) != len(specs):
        specs = signature.answer_outputs
    if len(outputs) != len(specs):
        raise ValueError(
            f"the model gave {len(outputs)} outputs, its signature lists {len(signature.outputs)} "
            f"({len(signature.answer_outputs)} besides state)"
        )
    out = []
    for spec, value in zip(specs, outputs, strict=True):
        if spec.role == "state":
            continue
        real = dequantize(spec, value)
        out.append(
            {"name": spec.name, "role": spec.role, "dtype": str(real.dtype), "shape": list(real.shape), "values": real}
        )
    return {"task": signature.task, "tensors": out}
