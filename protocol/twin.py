"""The ONNX twin's status, stated once by the compiler and read by the cloud and the hub.

The compiler writes :meth:`Twin.to_dict` into the signed manifest (``model.twin``) and the
report (``twin``); the cloud reads it to say why a bundle has nothing it can serve, the hub to
show it on the model page, ``edgefleet-compile inspect`` to print it. Schema::

    {"status": "withheld",
     "reason": "top-1 agreement 9.38% < 99.00% on 32 synthetic inputs",
     "inputs": "synthetic", "n": 32, "metric": "classification",
     "figures": {"top1_agreement": 0.09375, "max_step_diff": 211, "max_abs_diff": 0.82},
     "limits": {"min_top1_agreement": 0.99, "max_step_diff": 32}}

* ``status`` (required): ``verified`` (the bundle carries an ``onnx`` artifact whose parity with
  the model the device runs met every limit), ``withheld`` (a twin was attempted and kept out of
  the bundle: parity below a limit, or the converter failed) or ``none`` (no twin was attempted:
  ``--no-onnx``, or an Edge-TPU-only import with no CPU model to convert).
* ``reason`` (required): one line for people; for ``withheld`` the failing figure and its limit,
  or the converter's error.
* ``inputs``: where the parity inputs came from: ``user`` (validation data), ``calibration``
  (the calibration images) or ``synthetic`` (seeded inputs drawn over the input's range);
  ``n``: how many. Both absent when parity was not measured (``none``, converter failure).
* ``metric``: which comparison judged it (``classification``, ``pixels``, ``keypoints``,
  ``cosine``; :mod:`compiler.parity` has the rules);
  ``figures``: the measured values; ``limits``: the thresholds they were held to.
* Unknown keys are kept in ``extra`` and written back, so a newer compiler's fields survive.

A field of the wrong type or value raises :class:`BadPayload` naming the field and the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field as dc_field
from typing import Any

from .codec import extra_fields, field, nonneg_int
from .errors import BadPayload

WHAT = "twin status"
STATUSES = ("verified", "withheld", "none")
INPUTS = ("user", "calibration", "synthetic")
_KNOWN = {"status", "reason", "inputs", "n", "metric", "figures", "limits"}


@dataclass(frozen=True)
class Twin:
    status: str
    reason: str
    inputs: str | None = None
    n: int = 0
    metric: str | None = None
    figures: Mapping[str, float] = dc_field(default_factory=dict, hash=False)
    limits: Mapping[str, float] = dc_field(default_factory=dict, hash=False)
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    @property
    def shipped(self) -> bool:
        return self.status == "verified"

    def line(self) -> str:
        """``"withheld: top-1 agreement 9.38% < 99.00% on 32 synthetic inputs"``."""
        return f"{self.status}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.extra, "status": self.status, "reason": self.reason}
        if self.inputs is not None:
            out.update(inputs=self.inputs, n=self.n)
        if self.metric is not None:
            out["metric"] = self.metric
        if self.figures:
            out["figures"] = dict(self.figures)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out

    @classmethod
    def from_dict(cls, obj: Any) -> Twin:
        if not isinstance(obj, dict):
            raise BadPayload(WHAT, f"expected a JSON object, got {type(obj).__name__}")
        status = field(obj, "status", str, WHAT)
        if status not in STATUSES:
            raise BadPayload(WHAT, f"field 'status' must be one of {', '.join(STATUSES)}, got {status!r:.40}")
        inputs = field(obj, "inputs", str, WHAT, None, allow_none=True)
        if inputs is not None and inputs not in INPUTS:
            raise BadPayload(WHAT, f"field 'inputs' must be one of {', '.join(INPUTS)}, got {inputs!r:.40}")
        return cls(
            status=status,
            reason=field(obj, "reason", str, WHAT),
            inputs=inputs,
            n=nonneg_int(obj, "n", WHAT, 0),
            metric=field(obj, "metric", str, WHAT, None, allow_none=True),
            figures=_numbers(obj, "figures"),
            limits=_numbers(obj, "limits"),
            extra=extra_fields(obj, _KNOWN),
        )


def of_model(model: Mapping[str, Any]) -> Twin | None:
    """The twin status in a manifest's ``model`` section; ``None`` when a bundle made before
    the status existed has none. Raises :class:`BadPayload` when it is there but malformed."""
    obj = model.get("twin")
    return None if obj is None else Twin.from_dict(obj)


def _numbers(obj: dict[str, Any], key: str) -> dict[str, float]:
    d = field(obj, key, dict, WHAT, {})
    for name, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadPayload(WHAT, f"field '{key}.{name}' must be a finite number, got {v!r:.40}")
    return {str(k): v for k, v in d.items()}
