"""Run a bundle's self-test vectors (``selftest.json``) on the backend that will serve it.

A case passes when every output the vectors carry is within its tolerance
(``protocol.selftest``: quantized outputs in quantization steps, float outputs within 2 % of
their scale, class masks by >= 99 % agreement); the run passes when every case passes and the
slowest case is under ``max_latency_ms``. Vectors of schema 1 (older bundles) hold only the
first output, compared in raw units with ``tolerance``; the result says what was compared
(``compared``). A model that cannot load or whose invoke raises fails with the error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol import selftest as vectors
from protocol.errors import BadPayload, Reason

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
    compared: str = ""  # what the run compared (every output, or the first only: schema 1)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cases": self.cases,
            "max_diff": self.max_diff,
            "max_latency_ms": round(self.max_latency_ms, 3),
        }
        if self.compared:
            out["compared"] = self.compared
        return out


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
    return SelftestResult(
        True, Reason.OK, "smoke test only: no reference outputs in the bundle", 1, 0.0, ms, "smoke test only"
    )


def run(backend: Backend, doc: Any) -> SelftestResult:
    """``max_diff``: the largest difference of a ``steps`` output (schema 1: of the first
    output), in quantization steps; float and mask outputs are judged by their own rule
    (``compared`` names each output and its rule)."""
    try:
        st = vectors.parse(doc)
    except BadPayload as exc:
        return SelftestResult(False, Reason.SELFTEST_FAILED, f"selftest.json: {exc}")
    if not st.cases:
        if st.smoke:
            return smoke(backend, st.max_latency_ms)
        return SelftestResult(
            False, Reason.SELFTEST_FAILED, "selftest.json has no cases (and does not ask for a smoke test)"
        )
    worst = 0.0
    slowest = 0.0
    dtype = np.dtype(backend.input_dtype)
    compared = st.compared
    for n, case in enumerate(st.cases):
        try:
            x = np.asarray(case.input).astype(dtype).reshape(backend.input_shape)
        except (TypeError, ValueError) as exc:
            return SelftestResult(False, Reason.SELFTEST_FAILED, f"case {n}: unusable vector ({exc})", n)
        t0 = time.perf_counter()
        try:
            outs = backend.invoke_all(x) if st.outputs else [backend.invoke_raw(x)]
        except ModelError as exc:
            return SelftestResult(False, Reason.SELFTEST_FAILED, f"case {n}: {exc}", n)
        ms = (time.perf_counter() - t0) * 1000
        slowest = max(slowest, ms)
        if not st.outputs:
            problem, diff = _legacy(outs[0], st.legacy[n], st.tolerance)
            worst = max(worst, diff)
            if problem:
                return SelftestResult(
                    False, Reason.SELFTEST_FAILED, f"case {n}: {problem}", n, worst, slowest, compared
                )
            continue
        if len(outs) != len(st.outputs):
            return SelftestResult(
                False,
                Reason.SELFTEST_FAILED,
                f"case {n}: the model gives {len(outs)} outputs, the vectors expect {len(st.outputs)}",
                n,
                worst,
                slowest,
                compared,
            )
        for spec, want, got in zip(st.outputs, case.outputs, outs, strict=True):
            check = vectors.compare(spec, want, got.reshape(-1).tolist())
            if spec.compare == "steps" and np.isfinite(check.diff):
                worst = max(worst, check.diff)
            if not check.ok:
                return SelftestResult(
                    False, Reason.SELFTEST_FAILED, f"case {n}: {check.detail}", n, worst, slowest, compared
                )
    cases = len(st.cases)
    if slowest > st.max_latency_ms:
        return SelftestResult(
            False,
            Reason.SELFTEST_FAILED,
            f"slowest case took {slowest:.1f} ms > max_latency_ms {st.max_latency_ms:g}",
            cases,
            worst,
            slowest,
            compared,
        )
    return SelftestResult(
        True, Reason.OK, f"all cases within tolerance; compared {compared}", cases, worst, slowest, compared
    )


def _legacy(got: np.ndarray, want: tuple[float, ...], tol: float) -> tuple[str, float]:
    """Schema 1: the first output, every raw value within ``tol``."""
    if got.size != len(want):
        return f"output has {got.size} values, expected {len(want)}", 0.0
    if not got.size:
        return "", 0.0
    diff = float(np.max(np.abs(got.astype(np.float64).reshape(-1) - np.asarray(want, dtype=np.float64))))
    if diff > tol:
        return f"output differs by {diff:g} > tolerance {tol:g}", diff
    return "", diff
