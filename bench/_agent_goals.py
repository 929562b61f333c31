"""The issue-20 part-3 goal check of ``python -m bench agent``, from the paired rounds' figures.

Both goals compare the agent with ``bench/floor_server.py`` (read the request, invoke, fixed
answer) in the same rounds, so what is left is the agent's own work:

* **JPEG-224** (MobileNetV2-224, the upload already 224x224): per round, agent round trip -
  (floor round trip + a JPEG decode of the same bytes at libjpeg-turbo speed, timed in the same
  round in the bench process); the median over rounds, with a 95 % bootstrap interval, is at
  most :data:`JPEG_EXCESS_MS`. The decode reference is the faster (by median) of the libjpeg-
  turbo bindings measured (simplejpeg, Pillow).
* **tensor** (``application/octet-stream`` + ``X-Tensor-Shape``): agent / floor - 1 per round,
  median and interval at most :data:`TENSOR_OVER_FLOOR_PCT`.

A goal is met when its whole interval is at or under the limit, not met when the whole interval
is above it, undecided when it straddles it, and "not measured" (never met) when its rounds or
its decode reference are missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

JPEG_EXCESS_MS = 0.3
TENSOR_OVER_FLOOR_PCT = 5.0
RESAMPLES = 1000

Interval = tuple[float, float, float]  # estimate, low, high


def bootstrap_median(values: Sequence[float], seed: int = 0) -> Interval:
    """The median of ``values`` with a 95 % bootstrap interval (:data:`RESAMPLES` resamples)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_median: no values")
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, v.size, size=(RESAMPLES, v.size))], axis=1)
    return float(np.median(v)), float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def excess_ms(agent: Sequence[float], floor: Sequence[float], decode: Sequence[float]) -> Interval:
    """Per round, agent - floor - decode (ms): its median and 95 % interval."""
    if not len(agent) == len(floor) == len(decode):
        raise ValueError(f"rounds differ: agent {len(agent)}, floor {len(floor)}, decode {len(decode)}")
    return bootstrap_median(list(np.subtract(np.subtract(agent, floor), decode)))


def over_pct(agent: Sequence[float], floor: Sequence[float]) -> Interval:
    """Per round, agent / floor - 1 in %: its median and 95 % interval."""
    if len(agent) != len(floor):
        raise ValueError(f"rounds differ: agent {len(agent)}, floor {len(floor)}")
    est, lo, hi = bootstrap_median(list(np.asarray(agent, np.float64) / np.asarray(floor, np.float64) - 1))
    return 100 * est, 100 * lo, 100 * hi


def fastest(decoders: Mapping[str, Sequence[float]]) -> str | None:
    """The decoder with the lowest median time, None when none was measured."""
    timed = {k: float(np.median(v)) for k, v in decoders.items() if len(v)}
    return min(timed, key=lambda k: timed[k]) if timed else None


def verdict(interval: Interval | None, limit: float) -> str:
    if interval is None:
        return "not measured"
    _, lo, hi = interval
    if hi <= limit:
        return "met"
    if lo > limit:
        return "not met"
    return "not decided (the interval straddles the limit)"


@dataclass(frozen=True)
class Goal:
    name: str
    limit: float
    unit: str  # "ms" or "%"
    interval: Interval | None  # None: not measured
    detail: str = ""  # what the figure is made of, or why it was not measured

    @property
    def verdict(self) -> str:
        return verdict(self.interval, self.limit)

    def line(self) -> str:
        if self.interval is None:
            figure = "-"
        else:
            est, lo, hi = self.interval
            digits = 3 if self.unit == "ms" else 1
            figure = f"{est:+.{digits}f} {self.unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
        return f"  {self.name:<46} {figure:<28} -> {self.verdict}" + (f"  ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict[str, object]:
        est, lo, hi = self.interval if self.interval is not None else (None, None, None)
        return {
            "goal": self.limit,
            "unit": self.unit,
            "estimate": est,
            "ci95": [lo, hi],
            "verdict": self.verdict,
            "detail": self.detail,
        }


def check(
    jpeg: Mapping[str, Sequence[float]] | None,
    decoders: Mapping[str, Sequence[float]],
    tensor: Mapping[str, Sequence[float]] | None,
) -> list[Goal]:
    """``jpeg`` / ``tensor``: the MobileNetV2-224 case's paired rounds (``agent``, ``floor``, in
    ms; None when the case did not run); ``decoders``: the per-round decode times of the JPEG
    case's bytes by each libjpeg-turbo binding that was available."""
    goals = []
    ref = fastest(decoders)
    name = f"JPEG-224: agent - (floor + decode) <= {JPEG_EXCESS_MS} ms"
    if jpeg is None or not jpeg.get("agent"):
        goals.append(Goal(name, JPEG_EXCESS_MS, "ms", None, "no JPEG-224 rounds"))
    elif ref is None:
        goals.append(Goal(name, JPEG_EXCESS_MS, "ms", None, "no libjpeg-turbo binding to time the decode with"))
    else:
        medians = ", ".join(f"{k} {np.median(v):.3f} ms" for k, v in decoders.items() if len(v))
        goals.append(
            Goal(
                name,
                JPEG_EXCESS_MS,
                "ms",
                excess_ms(jpeg["agent"], jpeg["floor"], decoders[ref]),
                f"p50 agent {np.median(jpeg['agent']):.3f} ms, floor {np.median(jpeg['floor']):.3f} ms; "
                f"decode p50 {medians}; reference {ref}",
            )
        )
    name = f"tensor: agent / floor - 1 <= {TENSOR_OVER_FLOOR_PCT:g} %"
    if tensor is None or not tensor.get("agent"):
        goals.append(Goal(name, TENSOR_OVER_FLOOR_PCT, "%", None, "no tensor rounds"))
    else:
        goals.append(
            Goal(
                name,
                TENSOR_OVER_FLOOR_PCT,
                "%",
                over_pct(tensor["agent"], tensor["floor"]),
                f"p50 agent {np.median(tensor['agent']):.3f} ms, floor {np.median(tensor['floor']):.3f} ms",
            )
        )
    return goals
