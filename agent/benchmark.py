"""The benchmark stage on the device (issue 18 part 2): before the switch, prove a staged
candidate on this hardware. Self-test first (a candidate that fails it is not timed), then
``invokes`` timed invokes of the candidate and of the current model on the same inputs (the
candidate's self-test vectors), interleaved one by one so that whatever else loads the device
loads both alike. One untimed warm-up invoke each (first-invoke allocation is not the model's
steady latency). The answer is a :class:`protocol.benchmark.BenchmarkReport`; the hub gates on
its p95 ratio (``hub.stages``).

The current model is fed the same vectors when its input has the same number of elements (it
is reshaped to its own shape and cast to its dtype); otherwise it gets a mid-range constant
input of its own shape, and the report's ``inputs`` says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from protocol import selftest as vectors
from protocol.benchmark import KEY, BenchmarkReport, BenchmarkRequest, Timing, request_of
from protocol.errors import BadPayload, Reason

from . import selftest
from .errors import ModelError
from .runtime import Backend, Model

log = logging.getLogger(__name__)


class Timed(Protocol):
    """What a benchmark invokes: a backend, or a served model through its lock (:class:`Served`)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def input_dtype(self) -> Any: ...

    def invoke_raw(self, x: np.ndarray) -> np.ndarray: ...


class Served:
    """The model being served, invoked through :meth:`Model.invoke_raw` (its lock: requests keep
    being answered between the benchmark's invokes)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.input_shape: tuple[int, ...] = model.backend.input_shape
        self.input_dtype: Any = model.backend.input_dtype

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        return self.model.invoke_raw(x)


def _midrange(backend: Timed) -> np.ndarray:
    dtype = np.dtype(backend.input_dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.full(backend.input_shape, (int(info.min) + int(info.max)) // 2, dtype=dtype)
    return np.zeros(backend.input_shape, dtype=dtype)


def _inputs(candidate: Timed, current: Timed, doc: Any) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    try:
        cases = vectors.parse(doc).cases
    except BadPayload:
        cases = ()
    if not cases:  # a smoke-only bundle: no vectors to share
        return [_midrange(candidate)], [_midrange(current)], "mid-range constant inputs (no self-test vectors)"
    cand = [np.asarray(c.input).astype(np.dtype(candidate.input_dtype)).reshape(candidate.input_shape) for c in cases]
    size = int(np.prod(current.input_shape))
    if all(x.size == size for x in cand):
        cur = [x.astype(np.dtype(current.input_dtype)).reshape(current.input_shape) for x in cand]
        return cand, cur, f"selftest vectors ({len(cand)})"
    return (
        cand,
        [_midrange(current)],
        f"candidate: selftest vectors ({len(cand)}); current: mid-range constant input "
        f"(its input {list(current.input_shape)} differs from the candidate's {list(candidate.input_shape)})",
    )


def run(
    request: BenchmarkRequest,
    candidate: Backend,
    current: Timed | None,
    selftest_doc: Any,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchmarkReport:
    """Self-test ``candidate``, then time it beside ``current`` (None: the device serves
    nothing yet; the report says there is nothing to compare with)."""
    st = selftest.run(candidate, selftest_doc) if selftest_doc is not None else selftest.smoke(candidate, 1e9)
    if not st.ok:
        return BenchmarkReport(request.bundle, False, f"selftest failed: {st.detail}")
    if current is None:
        return BenchmarkReport(request.bundle, False, "no current model on the device to compare the candidate with")
    cand_in, cur_in, inputs = _inputs(candidate, current, selftest_doc)
    cand_ms: list[float] = []
    cur_ms: list[float] = []
    try:
        candidate.invoke_raw(cand_in[0])
        current.invoke_raw(cur_in[0])
        for i in range(request.invokes):
            pairs: tuple[tuple[Timed, list[np.ndarray], list[float]], ...] = (
                (candidate, cand_in, cand_ms),
                (current, cur_in, cur_ms),
            )
            for backend, xs, out in pairs:
                x = xs[i % len(xs)]
                t0 = clock()
                backend.invoke_raw(x)
                out.append((clock() - t0) * 1000.0)
    except ModelError as exc:
        which = "candidate" if len(cand_ms) == len(cur_ms) else "current model"
        return BenchmarkReport(
            request.bundle, False, f"{which} failed on invoke {len(cur_ms) + 1}: {exc}", inputs=inputs
        )
    cand, cur = Timing.of(cand_ms), Timing.of(cur_ms)
    return BenchmarkReport(
        request.bundle,
        True,
        f"selftest ok ({st.cases} cases); {request.invokes} invokes each: candidate p95 {cand.p95_ms:.2f} ms, "
        f"current p95 {cur.p95_ms:.2f} ms",
        cand,
        cur,
        inputs,
    )


class ReportFn(Protocol):
    def __call__(
        self,
        stage: str,
        status: str,
        reason: Reason = Reason.OK,
        detail: str = "",
        desired_seq: int | None = None,
        bundle: str | None = None,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None: ...


def requested(extra: dict[str, Any]) -> bool:
    """Does a desired document (its unknown fields) ask for a benchmark?"""
    return KEY in extra


def on_staged(
    extra: dict[str, Any], seq: int, digest: str, candidate: Model, current: Model | None, report: ReportFn
) -> None:
    """The updater's hook, called when a shadow candidate ``digest`` passed its self-test (or is
    already running): when the desired document ``seq`` asks for a benchmark of this candidate
    (``extra["benchmark"]``), run it and report it as a ``shadow`` report whose ``metrics``
    carry the :class:`BenchmarkReport` under ``"benchmark"`` (a hub older than stages reads an
    ordinary shadow report). A request naming another bundle, or a malformed one, is answered
    with a failed report naming what is wrong, never ignored."""
    if KEY not in extra:
        return
    try:
        req = request_of(extra)
    except BadPayload as exc:
        report("shadow", "failed", Reason.MALFORMED, str(exc), seq, digest)
        return
    assert req is not None
    if req.bundle != digest:
        bad = BenchmarkReport(
            req.bundle, False, f"benchmark asks for {req.bundle[:12]}, the staged candidate is {digest[:12]}"
        )
        report("shadow", "failed", Reason.MALFORMED, bad.detail, seq, digest, metrics={KEY: bad.to_dict()})
        return
    if current is not None:
        current.hold()
    try:
        result = run(req, candidate.backend, Served(current) if current else None, candidate.selftest)
    finally:
        if current is not None:
            current.release()
    log.info("benchmark of %s: %s", digest[:12], result.detail)
    status, reason = ("ok", Reason.OK) if result.ok else ("failed", Reason.SELFTEST_FAILED)
    report("shadow", status, reason, f"benchmark: {result.detail}", seq, digest, metrics={KEY: result.to_dict()})
