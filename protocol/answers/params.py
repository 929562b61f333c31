"""The request parameters that shape an answer, parsed once at the edge (query string) and
checked against the task (docs/models.md):

==================  =====================  =========================================================
parameter           tasks                  value
==================  =====================  =========================================================
``top_k``           classification         integer 1..classes, default 5
``score_threshold`` detection              number in [0, 1], default 0.5: detections below it are
                                           left out
``max_detections``  detection              integer 1..the model's boxes, default all of them
``mask``            segmentation           ``png``: the class-id mask as a base64 PNG
``raw``             every task             ``true``/``false``: add every answer output as the
                                           model gave it (quantized)
==================  =====================  =========================================================

A parameter another task uses, an unknown parameter or a value out of range is refused with
:class:`BadParameter` naming it and the value (the servers answer 4xx): an answer is never built
from a parameter that was silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import BadParameter

TOP_K = 5
SCORE_THRESHOLD = 0.5
TASK_PARAMS = {
    "top_k": ("classification",),
    "score_threshold": ("detection",),
    "max_detections": ("detection",),
    "mask": ("segmentation",),
}
ALL_TASKS = ("raw",)
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class Params:
    top_k: int = TOP_K
    score_threshold: float = SCORE_THRESHOLD
    max_detections: int | None = None  # None: every box the model gives above the threshold
    mask: str | None = None  # "png"
    raw: bool = False
    given: frozenset[str] = frozenset()  # the names the request set (checked against the task)

    def check_task(self, task: str) -> None:
        """Refuse a parameter the ``task`` does not use (e.g. ``score_threshold`` on a classifier)."""
        for name in sorted(self.given):
            tasks = TASK_PARAMS.get(name)
            if tasks is not None and task not in tasks:
                raise BadParameter(name, _value(self, name), f"applies to {' and '.join(tasks)}, this model is {task}")


def _value(p: Params, name: str) -> object:
    return getattr(p, name)


def parse_params(query: Mapping[str, str], ignore: Iterable[str] = ()) -> Params:
    """``Params`` from a request's query parameters (first value of each); names in ``ignore``
    belong to the server (the cloud's ``model``). Raises :class:`BadParameter`."""
    skip = set(ignore)
    kw: dict[str, object] = {}
    for name, text in query.items():
        if name in skip:
            continue
        if name == "top_k":
            kw[name] = _int(name, text, 1, None)
        elif name == "score_threshold":
            kw[name] = _unit(name, text)
        elif name == "max_detections":
            kw[name] = _int(name, text, 1, None)
        elif name == "mask":
            if text.lower() != "png":
                raise BadParameter(name, text, "the one mask format is 'png'")
            kw[name] = "png"
        elif name == "raw":
            kw[name] = _bool(name, text)
        else:
            known = sorted([*TASK_PARAMS, *ALL_TASKS, *skip])
            raise BadParameter(name, text, f"is not a parameter of predict (known: {', '.join(known)})")
    given = frozenset(k for k in kw if not (k == "raw" and kw[k] is False))
    return Params(**kw, given=given)  # type: ignore[arg-type]


def _int(name: str, text: str, low: int, high: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(name, text, "must be an integer") from None
    if value < low or (high is not None and value > high):
        raise BadParameter(name, text, f"must be in {low}..{high if high is not None else ''}")
    return value


def _unit(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadParameter(name, text, "must be a number in [0, 1]") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadParameter(name, text, "must be a number in [0, 1]")
    return value


def _bool(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise BadParameter(name, text, "must be true or false")
