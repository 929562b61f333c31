"""Run a bundle's self-test vectors (``selftest.json``) on the backend that will serve it.

A case passes when every raw output value is within ``tolerance`` (quantized units) of
``expected``; the run passes when every case passes and the slowest case is under
``max_latency_ms``. A model that cannot load or whose invoke raises fails with the error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.errors import Reason

from .errors import ModelError
from .runtime import Backend


@dataclass(frozen=True)
class SelftestResult:
    ok: bool
    reason: Reason
    detail: str
    cases: int = 0
    max_diff: float = 0.0
    max_latency_ms: float = 0.0

    def metrics(self) -> dict[str, Any]:
        return {"cases": self.cases, "max_diff": self.max_diff, "max_latency_ms": round(self.max_latency_ms, 3)}


def smoke(backend: Backend, budget_ms: float) -> SelftestResult:
    """No reference outputs (e.g. an imported Edge-TPU-only model nobody could run at build
    time): the model must load, and one invoke on a mid-range input must give finite outputs
    within the latency budget. Weaker than vectors, and reported as such."""
    dtype = np.dtype(backend.input_dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = np.full(backend.input_shape, (int(info.min) + int(info.max)) // 2, dtype=dtype)
    else:
        x = np.zeros(backend.input_shape, dtype=dtype)
    t0 = time.perf_counter()
    try:
        got = backend.invoke_raw(x)
    except ModelError as exc:
        return SelftestResult(False, Reason.SELFTEST_FAILED, f"smoke test: {exc}")
    ms = (time.perf_counter() - t0) * 1000
    if got.size == 0 or not np.all(np.isfinite(got.astype(np.float64))):
        return SelftestResult(False, Reason.SELFTEST_FAILED, "smoke test: empty or non-finite output")
    if ms > budget_ms:
        return SelftestResult(
            False, Reason.SELFTEST_FAILED, f"smoke test took {ms:.1f} ms > max_latency_ms {budget_ms:g}", 1, 0.0, ms
        )
    return SelftestResult(True, Reason.OK, "smoke test only: no reference outputs in the bundle", 1, 0.0, ms)


def run(backend: Backend, doc: Any) -> SelftestResult:
    if isinstance(doc, dict) and doc.get("cases") == [] and doc.get("smoke") is True:
        return smoke(backend, float(doc.get("max_latency_ms", 1000)))
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list) or not doc["cases"]:
        return SelftestResult(
            False, Reason.SELFTEST_FAILED, "selftest.json has no cases (and does not ask for a smoke test)"
        )
    tol = float(doc.get("tolerance", 0))
    budget = float(doc.get("max_latency_ms", 1000))
    worst = 0.0
    slowest = 0.0
    dtype = np.dtype(backend.input_dtype)
    for n, case in enumerate(doc["cases"]):
        try:
            x = np.asarray(case["input"]).astype(dtype).reshape(backend.input_shape)
            want = np.asarray(case["expected"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            return SelftestResult(False, Reason.SELFTEST_FAILED, f"case {n}: unusable vector ({exc})", n)
        t0 = time.perf_counter()
        try:
            got = backend.invoke_raw(x)
        except ModelError as exc:
            return SelftestResult(False, Reason.SELFTEST_FAILED, f"case {n}: {exc}", n)
        ms = (time.perf_counter() - t0) * 1000
        slowest = max(slowest, ms)
        if got.size != want.size:
            return SelftestResult(
                False, Reason.SELFTEST_FAILED, f"case {n}: output has {got.size} values, expected {want.size}", n
            )
        diff = float(np.max(np.abs(got.astype(np.float64).reshape(-1) - want.reshape(-1)))) if got.size else 0.0
        worst = max(worst, diff)
        if diff > tol:
            return SelftestResult(
                False,
                Reason.SELFTEST_FAILED,
                f"case {n}: output differs by {diff:g} > tolerance {tol:g}",
                n,
                worst,
                slowest,
            )
    if slowest > budget:
        return SelftestResult(
            False,
            Reason.SELFTEST_FAILED,
            f"slowest case took {slowest:.1f} ms > max_latency_ms {budget:g}",
            len(doc["cases"]),
            worst,
            slowest,
        )
    return SelftestResult(True, Reason.OK, "all cases within tolerance", len(doc["cases"]), worst, slowest)
