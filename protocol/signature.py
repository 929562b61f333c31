"""A model's signature: what it is for (its task) and every input and output by name, as the
compiler read them from the model file. Written into the signed manifest (``model.signature``)
at import and build; read by the agent and the cloud to decide how to feed the model and what
an answer holds (:mod:`protocol.answers`). Schema::

    {"schema": 1, "task": "keypoints", "stateful": false,
     "inputs":  [{"name": "serving_default_input:0", "dtype": "uint8", "shape": [1, 192, 192, 3],
                  "quantization": null, "role": "image"}],
     "outputs": [{"name": "StatefulPartitionedCall:0", "dtype": "float32", "shape": [1, 1, 17, 3],
                  "quantization": null, "role": "keypoints"}]}

* ``task``: ``classification`` (one score per class, labels index them), ``detection`` (boxes,
  classes, scores, count), ``segmentation`` (a class per pixel, or per-pixel logits),
  ``keypoints`` (``[1, 1, K, 3]``: y, x, score), ``embedding`` (a feature vector, no labels),
  ``tensors`` (none of these: the outputs are returned as they are).
* ``inputs`` / ``outputs``: in the model's own order (LiteRT's ``get_input_details`` /
  ``get_output_details``). ``dtype`` is the numpy name (``uint8``, ``int8``, ``float32``,
  ``int64``...); ``shape`` the static shape; ``quantization`` ``{"scale": s, "zero_point": zp}``
  (``real = s * (q - zp)``) or ``null`` for a tensor the file gives no quantization: an integer
  input without it takes raw values (a uint8 image input without it is raw pixels 0-255).
* ``role``: inputs ``image`` (the request's image or tensor), ``state`` (a recurrent state the
  model reads), ``tensor`` (a non-image request input); outputs ``scores`` (class scores),
  ``boxes``, ``classes``, ``scores``, ``count`` (detection), ``mask`` (a class id per pixel),
  ``logits`` (per-pixel class logits), ``keypoints``, ``embedding``, ``state`` (the state the
  model writes back), ``tensor`` (anything else).
* ``stateful``: the model keeps state between invocations (``state`` inputs, or variable tensors
  such as a fused LSTM's). Agents answer every request from the initial (zero) state: state is
  reset per request, so an answer never depends on another request (docs/models.md).

An unknown ``task`` or ``role`` (a newer compiler's) is kept as it came: readers answer such a
model in the task-neutral ``tensors`` form, which is correct for any model. Unknown keys are kept
in ``extra`` at every level and written back. A manifest without ``model.signature`` (made before
it existed) means "classification, as before": :func:`task_of` says so.
A field of the wrong type or value raises :class:`BadPayload` naming the field and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field as dc_field
from typing import Any

from .codec import extra_fields, field, int_list
from .errors import BadPayload

WHAT = "model signature"
SCHEMA = 1
TASKS = ("classification", "detection", "segmentation", "keypoints", "embedding", "tensors")
INPUT_ROLES = ("image", "state", "tensor")
OUTPUT_ROLES = ("scores", "boxes", "classes", "count", "mask", "logits", "keypoints", "embedding", "state", "tensor")
LEGACY_TASK = "classification"
_WORD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_DTYPE = re.compile(r"^[a-z][a-z0-9]{1,15}$")
_TENSOR_KNOWN = {"name", "dtype", "shape", "quantization", "role"}
_KNOWN = {"schema", "task", "stateful", "inputs", "outputs"}


@dataclass(frozen=True)
class Quantization:
    """``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> Quantization | None:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise BadPayload(WHAT, f"field '{what}' must be an object or null, got {obj!r:.60}")
        scale = field(obj, "scale", float, f"{WHAT} {what}")
        if not math.isfinite(scale) or scale <= 0:
            raise BadPayload(WHAT, f"field '{what}.scale' must be a finite number > 0, got {scale!r}")
        return cls(float(scale), field(obj, "zero_point", int, f"{WHAT} {what}"))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str
    quantization: Quantization | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        """``uint8[1, 192, 192, 3] 'serving_default_input:0'``."""
        return f"{self.dtype}{list(self.shape)} {self.name!r}"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "quantization": None if self.quantization is None else self.quantization.to_dict(),
            "role": self.role,
        }

    @classmethod
    def from_dict(cls, obj: Any, what: str) -> TensorSpec:
        if not isinstance(obj, dict):
            raise BadPayload(WHAT, f"field '{what}' must be an object, got {obj!r:.60}")
        w = f"{WHAT} {what}"
        dtype = field(obj, "dtype", str, w)
        if not _DTYPE.match(dtype):
            raise BadPayload(WHAT, f"field '{what}.dtype' must be a numpy dtype name like 'uint8', got {dtype!r:.40}")
        role = field(obj, "role", str, w)
        if not _WORD.match(role):
            raise BadPayload(WHAT, f"field '{what}.role' must be a lower-case word, got {role!r:.40}")
        return cls(
            name=field(obj, "name", str, w),
            dtype=dtype,
            shape=tuple(int_list(obj, "shape", w)),
            role=role,
            quantization=Quantization.from_dict(obj.get("quantization"), f"{what}.quantization"),
            extra=extra_fields(obj, _TENSOR_KNOWN),
        )


@dataclass(frozen=True)
class Signature:
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    stateful: bool = False
    schema: int = SCHEMA
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    @property
    def classification(self) -> bool:
        """Answered with class scores (``predictions``/``top``); every other task is not."""
        return self.task == "classification"

    @property
    def request_inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs a request fills (every input but the ``state`` ones)."""
        return tuple(t for t in self.inputs if t.role != "state")

    @property
    def answer_outputs(self) -> tuple[TensorSpec, ...]:
        """The outputs an answer carries (every output but the ``state`` ones)."""
        return tuple(t for t in self.outputs if t.role != "state")

    def output(self, role: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "schema": self.schema,
            "task": self.task,
            "stateful": self.stateful,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, obj: Any) -> Signature:
        if not isinstance(obj, dict):
            raise BadPayload(WHAT, f"expected a JSON object, got {type(obj).__name__}")
        schema = field(obj, "schema", int, WHAT)
        if schema < 1:
            raise BadPayload(WHAT, f"field 'schema' must be >= 1, got {schema}")
        task = field(obj, "task", str, WHAT)
        if not _WORD.match(task):
            raise BadPayload(WHAT, f"field 'task' must be a lower-case word like 'detection', got {task!r:.40}")
        ins = field(obj, "inputs", list, WHAT)
        outs = field(obj, "outputs", list, WHAT)
        if not ins or not outs:
            raise BadPayload(WHAT, f"needs at least one input and one output, got {len(ins)} and {len(outs)}")
        return cls(
            task=task,
            inputs=tuple(TensorSpec.from_dict(t, f"inputs[{i}]") for i, t in enumerate(ins)),
            outputs=tuple(TensorSpec.from_dict(t, f"outputs[{i}]") for i, t in enumerate(outs)),
            stateful=field(obj, "stateful", bool, WHAT, False),
            schema=schema,
            extra=extra_fields(obj, _KNOWN),
        )


def of_model(model: Mapping[str, Any]) -> Signature | None:
    """The signature in a manifest's ``model`` section; ``None`` when a bundle made before it
    existed has none. Raises :class:`BadPayload` when it is there but malformed."""
    obj = model.get("signature")
    return None if obj is None else Signature.from_dict(obj)


def task_of(model: Mapping[str, Any]) -> str:
    """The task a bundle is answered as: its signature's, else ``classification`` (the only
    kind a bundle without a signature was ever served as)."""
    sig = of_model(model)
    return LEGACY_TASK if sig is None else sig.task
