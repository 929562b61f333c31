"""Stage 8: self-test vectors (``selftest.json``, format in docs/protocol.md).

A few inputs with the raw outputs the served artifact gives here, so an agent can prove an
install works before switching to it. Cases are the first validation sample of each class
(in class order) up to ``cases``, so they cover different outputs; inputs and outputs are the
raw tensors (int8/uint8 for a quantized model), nested as their shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .inference import TfliteRunner

SCHEMA = 1
DEFAULT_TOLERANCE = 2
DEFAULT_MAX_LATENCY_MS = 1000


def pick(y: np.ndarray | None, n_samples: int, cases: int) -> list[int]:
    if y is None:
        return list(range(min(cases, n_samples)))
    chosen: list[int] = []
    for c in sorted(set(int(v) for v in y)):
        chosen.append(int(np.flatnonzero(y == c)[0]))
        if len(chosen) == cases:
            break
    for i in range(n_samples):  # fewer classes than cases: fill in order
        if len(chosen) == cases:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def build(
    runner: TfliteRunner,
    artifact: str,
    x: np.ndarray,
    y: np.ndarray | None,
    cases: int = 5,
    tolerance: int = DEFAULT_TOLERANCE,
    max_latency_ms: int = DEFAULT_MAX_LATENCY_MS,
) -> dict[str, Any]:
    out = []
    for i in pick(y, len(x), cases):
        raw = runner.input.quantize(x[i : i + 1]).reshape(runner.input.shape)
        expected = runner.run_raw(raw)
        out.append({"input": raw.tolist(), "expected": expected.tolist()})
    return {
        "schema": SCHEMA,
        "artifact": artifact,
        "tolerance": tolerance,
        "max_latency_ms": max_latency_ms,
        "cases": out,
    }


def check(runner: TfliteRunner, doc: dict[str, Any]) -> list[str]:
    """Re-run every case; return one problem line per case out of tolerance (empty = pass)."""
    problems = []
    for n, case in enumerate(doc["cases"]):
        got = runner.run_raw(np.array(case["input"], dtype=runner.input.dtype)).astype(np.int64)
        want = np.array(case["expected"], dtype=np.int64)
        diff = int(np.abs(got - want).max())
        if diff > int(doc["tolerance"]):
            problems.append(f"case {n}: max difference {diff} > tolerance {doc['tolerance']}")
    return problems
